"""Strategy: quote headers of many languages ("On … wrote:", Outlook's "From: … Sent: …"
block), found with mail-parser-reply's patterns, run only on the lines their probes pick."""

from __future__ import annotations

import re
from collections.abc import Iterator

from bridge.email.parse.reply.mail_parser_reply_patterns import get_patterns
from bridge.email.parse.reply.scan import LineScan

FROM_KEY = re.compile(
    r"^(?:>\s?)*[*\s]*(?:from|von|de|da|fra|från|van|od|от|發件人|发件人|보낸\s?사람|sender|"
    r"absender)[*\s]*[:\uff1a]", re.IGNORECASE)
_KEY_LINE = re.compile(r"^(?:>\s?)*[*\s]*[^\W\d_][\w .'-]{0,25}[*\s]*[:\uff1a]", re.IGNORECASE)


def probe_lines(norm: str, probed: list[int] | None = None) -> list[int]:
    """Starts of the lines of `norm` where some quote-header pattern's probe matches.
    (`probed`: the starts of the lines to look at instead of all, in order, among them every
    line where a probe matches: `scan.LineScan.starts`.)"""
    return sorted(set().union(*probe_lines_by_kind(norm, probed).values()))


def probe_lines_by_kind(norm: str, probed: list[int] | None = None) -> dict[str | None,
                                                                             list[int]]:
    """`probe_lines` by the kind of probe that picked them: None for the probes tried on
    every line, a character for those tried only on the lines that hold it. A pattern's
    probe matches only on lines of its own kind (`header_probe_chars`), so each pattern
    need be tried only on those."""
    patterns = get_patterns()
    if probed is None:
        starts = {match.start() + 1 for match in patterns.header_lines.finditer(norm)}
        if patterns.header_first_line.match(norm):
            starts.add(0)
    else:
        starts = {start for start in probed if patterns.header_first_line.match(norm, start)}
    by_kind: dict[str | None, list[int]] = {None: sorted(starts)}
    for char, probe in patterns.header_char_probes:
        with_char = set()
        at = norm.find(char)
        while at >= 0:
            start = norm.rfind("\n", 0, at) + 1
            if probe.match(norm, start):
                with_char.add(start)
            end = norm.find("\n", at)
            at = norm.find(char, end) if end >= 0 else -1
        by_kind[char] = sorted(with_char)
    return by_kind


def header_matches(index: int, norm: str, lines: list[int]) -> Iterator[re.Match[str]]:
    """The matches that ``headers[index].finditer(norm)`` yields, found by trying the pattern
    only at the line starts in `lines` (and the line breaks just before them) that its
    probe accepts."""
    patterns = get_patterns()
    pattern = patterns.headers[index]
    probe = patterns.header_probes[index]
    guard = patterns.header_guards[index]
    if probe is None or (guard is not None and guard.search(norm)):
        yield from pattern.finditer(norm)
        return
    positions: set[int] = set()
    for start in lines:
        if probe.match(norm, start):
            positions.update((start - 1, start) if start else (start,))
    pos = 0  # where finditer would search on from
    for candidate in sorted(positions):
        if candidate < pos:
            continue
        match = pattern.match(norm, candidate)
        if match is None:
            continue
        if match.end() == candidate:
            # An empty match (none of the library's patterns has one): finditer's rules for
            # what may follow it are its own, so let it go on from here.
            yield from pattern.finditer(norm, pos)
            return
        yield match
        pos = match.end()


def header_candidate(work: list[str], norm: str, scan: LineScan) -> int | None:
    """First line where mail-parser-reply's quote-header patterns match, after our checks.
    (`scan`: `scan_lines(norm)`.)"""
    best: int | None = None
    patterns = get_patterns()
    by_kind = probe_lines_by_kind(norm, scan.starts if scan.probed else None)
    for index in range(len(patterns.headers)):
        lines = by_kind[patterns.header_probe_chars[index]]
        if not lines and patterns.header_probes[index] is not None \
                and patterns.header_guards[index] is None:
            continue  # (no line of its probe's kind: header_matches would find nothing)
        for count, match in enumerate(header_matches(index, norm, lines)):
            if count >= 20:
                break
            start = match.start()
            while start < match.end() and norm[start] in "\n \t":
                start += 1
            line = scan.line_at(norm, start)
            if best is not None and line >= best:
                break
            block = [ln for ln in match.group(0).split("\n") if ln.strip()]
            key_lines = [ln for ln in block if _KEY_LINE.match(ln)]
            if len(key_lines) >= 2:
                # An Outlook-style header block: it must name a sender, or "Datum:/Betreff:"
                # lines of a form letter would count as a quote. The sender may stand just
                # above the part the pattern matched ("From:" / "Reply-To:" / "Date:" …).
                if not any(FROM_KEY.match(ln) for ln in key_lines):
                    above = next((j for j in range(line - 1, max(line - 4, -1), -1)
                                  if FROM_KEY.match(work[j])), None)
                    if above is None:
                        continue
                    line = above
                    if best is not None and line >= best:
                        break
            elif not re.search(r"\d|@", match.group(0)):
                # A one-line "On … wrote:" without date or address is ordinary prose.
                continue
            best = line
            break
    return best
