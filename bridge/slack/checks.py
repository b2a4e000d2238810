"""Slack's `bridge check` items."""

from __future__ import annotations

import aiohttp

from bridge.checks import CheckResult
from bridge.config import Config
from bridge.core.errors import PermanentError, TemporaryError
from bridge.slack.config import SlackConfig
from bridge.slack.person_code import PERSON_CODE_SCOPES
from bridge.slack.workspace import Workspace


async def check_workspaces(session: aiohttp.ClientSession, config: Config) -> list[CheckResult]:
    """Each workspace's tokens, as Slack sees them: what `bridge run` would meet."""
    slack = config.section(SlackConfig)
    results = []
    for settings in slack.workspaces:
        name = f"slack workspace {settings.name}"
        ws = Workspace(settings, slack.api_url, session)
        try:
            await ws.identify()
            detail = f"team {ws.team_id} ({ws.team_name}), app user {ws.bot_user_id}"
            if ws.socket_mode:
                # An app token that opens a Socket Mode connection is a working one.
                await ws.call("apps.connections.open", app_token=settings.app_token)
                detail += "; Socket Mode app token accepted"
            else:
                detail += (f"; Events API: Slack must reach {slack.events_api.path} "
                           f"on port {slack.events_api.port} through your proxy")
            results.append(CheckResult(name, True, detail))
            missing = [s for s in PERSON_CODE_SCOPES if ws.scopes is not None
                       and s not in ws.scopes]
            if missing:
                results.append(CheckResult(
                    f"{name} scopes", True,
                    "the app lacks " + ", ".join(missing) + ": `me slack` cannot send people "
                    "their one-time codes; add the scopes from slack-app-manifest.yaml and "
                    "reinstall the app", warning=True))
        except PermanentError as exc:
            results.append(CheckResult(name, False, f"{exc} {exc.hint or ''}".strip()))
        except TemporaryError as exc:
            results.append(CheckResult(name, False, f"{exc} (check slack.api_url and the "
                                                    "network path to Slack)"))
    return results
