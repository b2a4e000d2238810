"""Small steps most end-to-end tests take: open a room with the bot, run a command."""

from __future__ import annotations

from typing import Any

from testkit.matrix_client import MatrixTestClient

# Seconds to wait for the bot. Normally it answers within a second; with the whole suite on
# two cores, Synapse's back-off towards an appservice that a previous test just stopped can
# hold a transaction for several seconds, which is not what these steps test.
SLOW_STEP = 40


def is_notice_from(bot: str, contains: str = "") -> Any:
    def predicate(event: dict[str, Any]) -> bool:
        return (event["type"] == "m.room.message" and event["sender"] == bot
                and event["content"].get("msgtype") == "m.notice"
                and contains in event["content"].get("body", ""))
    return predicate


async def open_room(bot: str, user: MatrixTestClient, *, direct: bool = False,
                    bot_power: int | None = None, **kwargs: Any) -> str:
    """A room with the bot in it, after its greeting arrived."""
    if bot_power is not None:
        kwargs["power_level_content_override"] = {"users": {bot: bot_power}}
    room_id = await user.create_room(invite=[bot], is_direct=direct, **kwargs)
    await user.wait_for_event(room_id, is_notice_from(bot, "Hello"), timeout=SLOW_STEP)
    return room_id


async def command(bot: str, user: MatrixTestClient, room_id: str, text: str,
                  expect: str = "") -> dict[str, Any]:
    """Send a command and return the bot's reply to it."""
    event_id = await user.send_text(room_id, text)

    def reply(event: dict[str, Any]) -> bool:
        relates = event["content"].get("m.relates_to", {}).get("m.in_reply_to", {})
        return (is_notice_from(bot, expect)(event)
                and relates.get("event_id") == event_id)

    return await user.wait_for_event(room_id, reply, timeout=SLOW_STEP)

