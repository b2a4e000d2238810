"""One pass over the text for every reply strategy: the lines worth a closer look.

Each strategy recognises its lines by how they start or end (lines of `norm` are stripped):
a quote-header or sign-off probe matches at the start (`quote_headers`, `signatures`); the
line starts with ``>``, a ruler character or blank space (`separators`, and the long ruler
of a signature); or it ends with a colon or two dashes ("On … wrote:", "---- On … wrote
----": `attributions`, `separators`). In prose few lines do. One regex finds the line breaks
next to all of them at once, and the line numbers are counted once, from one break to the
next; each strategy then tries its own exact checks on those lines only. The scan may pick
more lines than a strategy needs (those of the others): the checks sort them out, so what
is found is what a pass of each strategy's own would find.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from bridge.email.parse.reply.mail_parser_reply_patterns import QUOTE_PREFIX, get_patterns

# A line break after a line that ends like an attribution or separator (with a colon, ASCII
# or fullwidth, or "--", "==", "-=", "=-"), or before one that starts like a quote, a ruler
# or with blank space. (The line's last character is looked at once first: most lines of
# prose end otherwise, and one look back is cheaper than two.)
_ENDS_LIKE_ATTRIBUTION = r"(?<=[:\uff1a\-=]\n)(?:(?<=[:\uff1a]\n)|(?<=[-=][-=]\n))"
_STARTS_LIKE_QUOTE_OR_RULER = r"[>\-=_*]|[^\S\n]"


@dataclass
class LineScan:
    """The lines next to the line breaks the scan found, and the first line (which has no
    break before it), in order: `starts[k]` is where line `numbers[k]` starts in `norm`."""

    starts: list[int]
    numbers: list[int]
    # Whether `starts` holds every line where a quote-header or sign-off probe matches;
    # if not, `quote_headers` and `signatures` look for those lines themselves.
    probed: bool
    _by_start: dict[int, int] | None = field(default=None, repr=False)

    def line_at(self, norm: str, pos: int) -> int:
        """The number of the line of `norm` that holds `pos`: counted from the nearest line of
        the scan above it, not from the start of the text."""
        k = bisect.bisect_right(self.starts, pos) - 1
        return self.numbers[k] + norm.count("\n", self.starts[k], pos)

    def number_of(self, start: int) -> int:
        """The line number of a line start among `starts`."""
        if self._by_start is None:
            self._by_start = dict(zip(self.starts, self.numbers, strict=True))
        return self._by_start[start]


_scanner: tuple[re.Pattern[str], bool] | None = None


def _get_scanner() -> tuple[re.Pattern[str], bool]:
    global _scanner
    if _scanner is None:
        patterns = get_patterns()
        probes = patterns.any_probes
        if probes is not None and probes.startswith(QUOTE_PREFIX):
            # A probe that matches after quote marks matches on a line that starts with
            # ">", which the scan takes anyway: trying the marks at every line costs a
            # tenth of the scan.
            probes = probes.removeprefix(QUOTE_PREFIX)
        after = _STARTS_LIKE_QUOTE_OR_RULER + (f"|(?:{probes})" if probes is not None else "")
        # (The flags that the probes are written for; they leave the rest alone.)
        _scanner = (re.compile(rf"\n(?:{_ENDS_LIKE_ATTRIBUTION}|(?={after}))",
                               re.MULTILINE | re.IGNORECASE), probes is not None)
    return _scanner


def scan_lines(norm: str) -> LineScan:
    """The lines of `norm` (stripped lines joined with "\\n") that some strategy may want."""
    scanner, probed = _get_scanner()
    starts = [0]
    numbers = [0]
    number = last = 0
    for match in scanner.finditer(norm):
        at = match.start()
        number += norm.count("\n", last, at) + 1
        last = at + 1
        starts.append(last)
        numbers.append(number)
    return LineScan(starts, numbers, probed)
