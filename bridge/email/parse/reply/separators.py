"""Strategy: separator lines ("-----Original Message-----", "Begin forwarded message:",
and Outlook's underscore ruler right above a "From:" line)."""

from __future__ import annotations

import re

from bridge.email.parse.reply.quote_headers import FROM_KEY
from bridge.email.parse.reply.scan import LineScan

_SEPARATOR = re.compile(
    r"^(?:>\s?)*[-=_*\s]{2,}\s*(?:original message|ursprüngliche nachricht|originalnachricht|"
    r"original-nachricht|forwarded message|weitergeleitete nachricht|message d'origine|"
    r"message transféré|messaggio originale|messaggio inoltrato|mensaje original|"
    r"mensaje reenviado|oorspronkelijk bericht|doorgestuurd bericht|oprindelig meddelelse|"
    r"ursprungligt meddelande|alkuperäinen viesti|wiadomość oryginalna|původní zpráva|"
    r"исходное сообщение|пересылаемое сообщение)\s*[-=_*\s]{2,}$"
    r"|^(?:>\s?)*(?:begin forwarded message|anfang der weitergeleiteten nachricht|"
    r"début du message réexpédié|inizio messaggio inoltrato)\s*:$",
    re.IGNORECASE,
)
_UNDERSCORE_LINE = re.compile(r"^_{20,}$")


def separator_candidate(work: list[str], scan: LineScan) -> int | None:
    # Both separator patterns need a line that starts with ">", a ruler character or a space,
    # or one that ends with ":": the scan found the line breaks next to each of them.
    hinted = {0, len(work) - 1}  # the first and last line have a break on one side only
    for number in scan.numbers:
        hinted.update((number - 1, number))
    for i in sorted(hinted):
        line = work[i] if 0 <= i < len(work) else ""
        if not line or not (line[0] in ">-=_*" or line[0].isspace() or line[-1] == ":"):
            continue
        if _SEPARATOR.match(line):
            return i
        if _UNDERSCORE_LINE.match(line):
            # Outlook's line above "From: …"; alone it is just a ruler.
            following = [ln for ln in work[i + 1:i + 4] if ln]
            if following and FROM_KEY.match(following[0]):
                return i
    return None
