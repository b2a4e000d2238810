"""Strategy: the sender's signature ("-- ", a sign-off such as "Mit freundlichen Grüßen",
"Sent from my iPhone"), per mail-parser-reply's signature regex, searched fast."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator

from bridge.email.parse.reply.mail_parser_reply_patterns import (
    RULER_LINE,
    RULER_START,
    get_patterns,
)
from bridge.email.parse.reply.scan import LineScan

MAX_SIGNATURE_LINES = 20  # an administration's signature block with address and disclaimer


def signature_start(work: list[str], end: int, norm: str | None = None,
                    scan: LineScan | None = None) -> int | None:
    """Line where the sender's signature begins in work[:end] (`norm`: those lines joined,
    if at hand, and `scan`: its `scan_lines`), per mail-parser-reply."""
    patterns = get_patterns()
    first_text = next((i for i, line in enumerate(work) if line), len(work))
    if norm is None:
        norm = "\n".join(work[:end])
        scan = None
    anchors = _signoff_anchors(norm, scan)
    lines_from = max(1, first_text + 1)  # a "Sent from" line needs text above it
    candidates: Iterable[int] = range(lines_from, end)
    if anchors is not None and patterns.sent_from_probed:
        if scan is not None and scan.probed:
            # (The anchors are lines of the scan then, whose numbers it has counted.)
            candidates = map(scan.number_of, anchors)
        else:
            candidates = _line_numbers(norm, anchors)
    sent_from = next((i for i in candidates if lines_from <= i < end
                      and patterns.sent_from.match(work[i])), None)
    if sent_from is not None:
        norm = "\n".join(work[:sent_from])
        anchors = _signoff_anchors(norm)
    found = _signoff_start(work, sent_from if sent_from is not None else end, first_text, norm,
                           anchors)
    return found if found is not None else sent_from


def _line_numbers(norm: str, positions: list[int]) -> Iterator[int]:
    """The line numbers of ascending positions in `norm`."""
    line = last = 0
    for pos in positions:
        line += norm.count("\n", last, pos)
        last = pos
        yield line


def _signoff_start(work: list[str], end: int, first_text: int, norm: str,
                   anchors: list[int] | None) -> int | None:
    """First sign-off line in work[:end] (`norm`: those lines joined, `anchors`: their
    `_signoff_anchors`) that counts as the start of a signature. Only the first 20 places
    where the signature regex matches are looked at; `first_text` is the index of the first
    non-empty line."""
    patterns = get_patterns()
    pos = 0
    # The line number of each place found, counted on from the last one (the places come
    # in order): counting the line breaks from the start for each costs a pass over the
    # text up to it every time.
    counted_to = line_no = 0
    for _ in range(20):
        if anchors is None:
            match = patterns.signature.search(norm, pos)
            found = match.start() if match else None
        else:
            found = _signoff_search(norm, pos, anchors)
        if found is None:
            return None
        start = found
        while start < len(norm) and norm[start] in "\n \t":
            start += 1
        line_no += norm.count("\n", counted_to, start)
        counted_to = start
        line = work[line_no] if line_no < len(work) else ""
        line_end = norm.find("\n", start)
        pos = len(norm) if line_end < 0 else line_end + 1
        if line_no <= first_text:
            continue  # nothing above it: this is the message, not its signature
        bare = line.lstrip("> ")
        if bare in ("--", "__") or re.fullmatch(r"[-_]{20,}", bare):
            return line_no
        # A sign-off ("Mit freundlichen Grüßen", "Thanks,") is only a signature when it
        # stands as a short line of its own ("Thanks, that works. Next step: …" is content)
        # and only a signature block follows, not half the message.
        if (len(bare) <= 48 and len(bare.split()) <= 7 and not bare.endswith("?")
                and _few_lines(work, line_no + 1, end, MAX_SIGNATURE_LINES)):
            return line_no
    return None


def _few_lines(work: list[str], start: int, end: int, most: int) -> bool:
    """Whether work[start:end] has at most `most` non-empty lines."""
    count = 0
    for i in range(start, end):
        if work[i]:
            count += 1
            if count > most:
                return False
    return True


def _signoff_anchors(norm: str, scan: LineScan | None = None) -> list[int] | None:
    """Starts of the lines where a match of the signature regex can end its leading blank
    space, in order (None: the regex is not of the shape `_signature_head` knows). Every
    line that `sent_from` matches is among them too, when `sent_from_probed`.

    A match begins on such a line or in the blank space right before it: the regex's
    alternatives start with ``\\s*^`` or ``^`` (then the regex matches at the line start
    too) or are the long ruler after an empty line. The probes may pick more lines than
    that; `_signoff_search` tries the regex itself. (`scan`: `scan_lines(norm)`, whose
    lines are looked at instead of all; they take in every ruler line and, when
    `scan.probed`, every line where a probe matches.)
    """
    patterns = get_patterns()
    first, lines = patterns.signature_first_line, patterns.signature_lines
    if first is None or lines is None:
        return None
    if scan is None or not scan.probed:
        anchors = {match.start() + 1 for match in lines.finditer(norm)}
        if first.match(norm):
            anchors.add(0)
    else:
        anchors = {start for start in scan.starts if first.match(norm, start)}
    if scan is None:
        anchors.update(match.end() for match in RULER_LINE.finditer(norm))
    else:
        # Where RULER_LINE ends: a line after an empty one (a line start of the scan is
        # after a "\n") that starts with a ruler (the scan takes in every line that does).
        anchors.update(start for start in scan.starts if start >= 2 and norm[start - 2] == "\n"
                       and RULER_START.match(norm, start))
    return sorted(anchors)


def _signoff_search(norm: str, pos: int, anchors: list[int]) -> int | None:
    """Where ``signature.search(norm, pos)`` would match, trying only the blank space before
    each anchor line and its start."""
    head = get_patterns().signature_head
    assert head is not None
    tried = pos  # positions below this one are known not to match
    for anchor in anchors[bisect.bisect_left(anchors, pos):]:
        first = anchor
        while first > tried and norm[first - 1].isspace():
            first -= 1
        for candidate in range(first, anchor + 1):
            if head.match(norm, candidate):
                return candidate
        tried = anchor + 1
    return None
