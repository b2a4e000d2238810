"""How many words a bot command takes, read from the usage line it declares.

Every command is declared once with its usage (``email subscribe <address> [name...]``);
`help` shows that line, and the bot checks a command's words against it before the handler
runs, so a wrong call is answered with the declared usage whatever the command. The notation:

- ``<address>`` or ``workspace``: one word that must be given;
- ``[name]``: one word that may be given; ``[name...]`` or ``<text>...``: any number of words
  (the rest of the line), which only the last argument may take;
- ``a|b <c>|d``: alternatives (``subscribers``, ``domain <domain>`` or ``open``), one of
  which must be given.

The handler still checks what the words mean (an address, a known network).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# "|" outside of <> and [] separates alternatives.
_ALTERNATIVES = re.compile(r"\|(?![^<\[]*[>\]])")


@dataclass(frozen=True, slots=True)
class WordCount:
    minimum: int
    #: None: no upper bound (the last argument takes the rest of the line).
    maximum: int | None

    def allows(self, words: int) -> bool:
        return words >= self.minimum and (self.maximum is None or words <= self.maximum)


def word_count(arguments: str) -> WordCount:
    """The words ``arguments`` (the usage line after the command's name) allows."""
    counts = [_count(alternative.split()) for alternative in _ALTERNATIVES.split(arguments)
              if alternative.strip()] or [WordCount(0, 0)]
    maxima = [c.maximum for c in counts]
    return WordCount(minimum=min(c.minimum for c in counts),
                     maximum=None if None in maxima else max(m for m in maxima if m is not None))


def _count(tokens: list[str]) -> WordCount:
    minimum, maximum = 0, 0
    unbounded = False
    for token in tokens:
        optional = token.startswith("[")
        if token.rstrip("]").endswith("..."):
            unbounded = True
        if not optional:
            minimum += 1
        maximum += 1
    return WordCount(minimum, None if unbounded else maximum)
