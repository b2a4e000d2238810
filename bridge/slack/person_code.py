"""The Slack direct message with a one-time code that proves a Slack user is someone
(``me slack <workspace> <user id or address>``).

The app opens its direct message with the person (``conversations.open``, scope
``im:write``) and posts there (``chat.postMessage``): who asked, what the code is for, what to
do, and what to do if it was not them.
"""

from __future__ import annotations

from bridge.core.errors import CommandError, PermanentError, TemporaryError, UnavailableError
from bridge.slack.workspace import Workspace

#: What sending a code needs besides chat:write: opening the DM, finding a user by address.
PERSON_CODE_SCOPES = ("im:write", "users:read.email")


def _escaped(text: str) -> str:
    """Text as Slack's mrkdwn shows it literally."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code_message(*, code: str, label: str, matrix_user_id: str, homeserver: str,
                 bot_mxid: str, minutes: int) -> str:
    return "\n".join([
        f"Hello! The Matrix user *{_escaped(matrix_user_id)}* ({_escaped(homeserver)}) has "
        f"asked to link your Slack account ({_escaped(label)}) to their Matrix account, so "
        "that your Slack messages appear in Matrix under that account.",
        "",
        "*If that was you*, send this to the bridge bot "
        f"({_escaped(bot_mxid)}) in your direct chat with it in Matrix:",
        f"`me confirm {code}`",
        f"The code is valid for {minutes} minutes.",
        "",
        "*If it was not you*, do not pass the code on to anyone and just ignore this "
        "message: nothing is linked without the code. You may want to tell your "
        "administrator.",
    ])


# Slack's answers to conversations.open / chat.postMessage, as the person is told them.
_REFUSALS = {
    "user_not_found": "Slack knows no such user in workspace `{ws}`",
    "user_disabled": "that Slack account is deactivated",
    "cannot_dm_bot": "that Slack user is a bot; only people can be linked",
    "missing_scope": "the bridge's Slack app may not send direct messages (it lacks the "
                     "scope `im:write`; your administrator adds it from the app manifest and "
                     "reinstalls the app)",
    "not_allowed_token_type": "the bridge's Slack token may not send direct messages",
}


async def send_code(ws: Workspace, user_id: str, text: str) -> str:
    """Open the app's direct message with ``user_id`` and post ``text`` there; where it went,
    for the bot's answer."""
    try:
        opened = await ws.read("conversations.open", users=user_id)
        channel = str((opened.get("channel") or {}).get("id") or "")
        if not channel:
            raise CommandError("Slack did not open a direct message; no code was sent.")
        # One attempt: a post that timed out may have arrived, and the person can ask again.
        await ws.call("chat.postMessage", channel_key=channel, channel=channel, text=text,
                      unfurl_links=False, unfurl_media=False)
    except PermanentError as exc:
        code = str(exc).rsplit(": ", 1)[-1]
        reason = _REFUSALS.get(code, f"Slack answered `{code}`").format(ws=ws.name)
        raise CommandError(f"No code was sent: {reason}.") from None
    except TemporaryError as exc:
        raise UnavailableError(f"Slack is not reachable right now ({exc}); no code was sent. "
                               "Please try again later.") from None
    return f"a direct message from the Slack app in workspace `{ws.name}`"
