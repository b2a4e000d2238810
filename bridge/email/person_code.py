"""The mail with a one-time code that proves an address is someone's (``me email <address>``).

A plain text mail from the bridge's own no-reply address, in words a colleague who reads it
in Outlook understands: who asked, what the code is for, what to do, and what to do if it
was not them. Sent through the connector's relay like every other mail, but at once: the
person waits for it in the chat with the bot.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from bridge.core.errors import CommandError, PermanentError, TemporaryError, UnavailableError
from bridge.email.outbound import RelayOutage, RelayPool

#: The localpart the bridge's own mails come from; replies are not read.
NO_REPLY = "noreply"


def code_mail(*, domain: str, address: str, code: str, matrix_user_id: str, bot_mxid: str,
              minutes: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = Address(display_name="Matrix bridge", username=NO_REPLY, domain=domain)
    message["To"] = address
    message["Subject"] = f"Your code to link {address} to Matrix"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(idstring="person-code", domain=domain)
    # An automatic message (RFC 3834): no out-of-office answers to it.
    message["Auto-Submitted"] = "auto-generated"
    paragraphs = [
        "Hello,",
        f"the Matrix user {matrix_user_id} has asked to link this e-mail address "
        f"({address}) to their Matrix account, so that mail from this address appears in "
        "Matrix under that account.",
        "If that was you, send this message to the bridge bot "
        f"({bot_mxid}) in your direct chat with it in Matrix:",
        f"    me confirm {code}",
        f"The code is valid for {minutes} minutes.",
        "If it was not you, do not pass the code on to anyone and simply delete this mail: "
        "nothing is linked without the code. You may want to tell your IT department.",
        "This message was sent automatically; replies to it are not read.",
    ]
    lines: list[str] = []
    for paragraph in paragraphs:
        if paragraph.startswith("    "):
            lines.append(paragraph)
        else:
            lines += textwrap.wrap(paragraph, width=72, break_long_words=False,
                                   break_on_hyphens=False)
        lines.append("")
    message.set_content("\n".join(lines), charset="utf-8")
    return message


async def send_code_mail(relay: RelayPool, message: EmailMessage, *, domain: str,
                         address: str) -> str:
    """Hand the mail to the relay; where it went, for the bot's answer. Failures are
    refusals the person can act on (nothing is queued: the code is asked for again)."""
    try:
        await relay.send(message, sender=f"{NO_REPLY}@{domain}", recipient=address)
    except RelayOutage as exc:
        raise UnavailableError(f"The bridge's mail server does not take mail right now "
                               f"({exc}); no code was sent. Please try again later.") from None
    except TemporaryError as exc:
        raise UnavailableError(f"The mail server could not take the code for {address} just "
                               f"now ({exc}); no code was sent. Please try again later.") \
            from None
    except PermanentError as exc:
        raise CommandError(f"The mail server refused to send the code to {address}: {exc}") \
            from None
    return "a mail to that address"
