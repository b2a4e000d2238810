"""A stateful Slack simulator that speaks Slack's protocols (Web API, Socket Mode, Events API),
for the bridge's tests and `make demo`.

From another script (it runs in the caller's asyncio loop; nothing else to start):

    import asyncio

    from testkit.slack_sim import SlackSimulator

    async def main() -> None:
        async with SlackSimulator(host="127.0.0.1", port=8790) as sim:   # port=0: any free port
            team = sim.add_team(team_id="T0RATHAUS", name="rathaus", bot_token="xoxb-demo",
                                app_token="xapp-demo")      # or events_url=... for HTTP events
            sim.add_user(team, "U0ANNA", name="anna", real_name="Anna Schmidt")
            sim.add_channel(team, "C0BAUAMT", name="bauamt", members=["U0ANNA"])
            # the app: AsyncWebClient(token="xoxb-demo", base_url=sim.api_url), SocketModeClient
            await asyncio.Event().wait()

A person can then write into a channel with one line (ids or names both work):

    curl 'http://127.0.0.1:8790/_sim/post?team=rathaus&channel=bauamt&user=anna&text=Hallo'

GET /_sim/state lists teams, users and channels, and what was said in a channel (the app's
posts included, under the name they were posted with) is one more line:

    curl 'http://127.0.0.1:8790/_sim/messages?team=rathaus&channel=bauamt'

See simulator.py for the whole API.
"""

from testkit.slack_sim.events import sign
from testkit.slack_sim.simulator import HttpResult, SlackSimulator, UrlVerification
from testkit.slack_sim.state import Bot, Channel, SimulatorError, StoredFile, Team, User

__all__ = ["Bot", "Channel", "HttpResult", "SimulatorError", "SlackSimulator", "StoredFile",
           "Team", "UrlVerification", "User", "sign"]
