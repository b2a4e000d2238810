"""Strategy: attribution lines ("Le … a écrit :", Gmail's "…, John <john@example.org>:")
that open the quoted history even without a ``>`` quote below them."""

from __future__ import annotations

import re

from bridge.email.parse.reply.lines import MAX_LINE, is_quoted
from bridge.email.parse.reply.scan import LineScan

_WROTE_WORD = re.compile(
    r"wrote|schrieb|a écrit|ha scritto|escribió|escreveu|schreef|skrev|napisał|написал|"
    r"пише|kirjoitti|napsal|geschreven|写道|寫道|작성", re.IGNORECASE)


def looks_like_attribution(text: str) -> bool:
    text = text.strip()
    return (text.endswith((":", "\uff1a")) and len(text) <= 2 * MAX_LINE
            and bool(re.search(r"\d|@", text) or _WROTE_WORD.search(text)))


def attribution_start(work: list[str], first_quoted: int) -> int:
    """Start of the attribution line(s) ("On … wrote:") right above a quote block."""
    k = first_quoted - 1
    while k >= 0 and not work[k]:
        k -= 1
    if (k >= 0 and first_quoted < len(work) and re.fullmatch(r">\s*[:\uff1a]", work[first_quoted])
            and "@" in work[k]):
        return k  # "... <someone@example.org" / ">:": the address wrapped before its colon
    if k < 0 or not work[k].endswith((":", "\uff1a")):
        return first_quoted
    # The attribution may be wrapped: "… <someone@example.org>" / "wrote:".
    if k >= 1 and work[k - 1] and not is_quoted(work[k - 1]) and (
            len(work[k]) < 40 or work[k - 1].endswith("<")):
        joined = work[k - 1] + " " + work[k]
        if looks_like_attribution(joined) and len(work[k - 1]) < 300:
            return k - 1
    return k if looks_like_attribution(work[k]) else first_quoted


_ADDRESS_END = re.compile(r"<[^<>\s@]+@[^<>\s]+>\s*[:\uff1a]$")
_TIME = re.compile(r"\d{1,2}[:.]\d{2}")
_DASHED_ATTRIBUTION = re.compile(r"^[-=]{2,}.*[-=]{2,}$")


def _is_strong_attribution(text: str) -> bool:
    """An attribution line that needs no ``>`` quote below it to be believed.

    Either a "wrote" word of some language with an address and a number ("Le 15 nov. 2021
    à 19:42, John <john@example.org> a écrit :"), or Gmail's wordless form ending in
    "<address>:" with a time (Russian Gmail: "<weekday>, 30 <month> 2025 <year> <at> 15:19,
    John <john@example.com>:").
    """
    if len(text) > 2 * MAX_LINE:
        return False
    if _DASHED_ATTRIBUTION.match(text):  # Zoho: "---- On … wrote ----"
        return bool(_WROTE_WORD.search(text) and re.search(r"\d", text))
    if not text.endswith((":", "\uff1a")):
        return False
    if _WROTE_WORD.search(text) and "@" in text and re.search(r"\d", text):
        return True
    return bool(_ADDRESS_END.search(text) and _TIME.search(text))


# How a strong attribution ends (with a colon, or dashed): lines that end otherwise, and
# whose next line does too, cannot be one (nor start one that is wrapped).
_ATTRIBUTION_ENDS = (":", "\uff1a", "--", "-=", "=-", "==")


def attribution_candidate(work: list[str], scan: LineScan) -> int | None:
    # The scan found the line break after each line that ends like an attribution (but the
    # last line), among others: those lines and the ones above them are what is tried.
    ends: set[int] = set()
    for number in scan.numbers:
        ends.update((number - 2, number - 1))
    if work and work[-1].endswith(_ATTRIBUTION_ENDS):
        ends.update((len(work) - 2, len(work) - 1))
    for i in sorted(ends):
        line = work[i] if 0 <= i < len(work) else ""
        if not line or not (line.endswith(_ATTRIBUTION_ENDS) or (
                i + 1 < len(work) and work[i + 1].endswith(_ATTRIBUTION_ENDS))):
            continue  # a line of the scan for another strategy
        if is_quoted(line):
            continue
        if _is_strong_attribution(line):
            return i
        if (i + 1 < len(work) and work[i + 1] and not line.endswith((".", "!", "?"))
                and not _is_strong_attribution(work[i + 1])
                and _is_strong_attribution(line + " " + work[i + 1])):
            return i
    return None
