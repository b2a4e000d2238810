"""Strategy: ``>`` quote blocks, at the end of the mail (top-posted reply) or at its top
with the answer below (bottom-posted reply)."""

from __future__ import annotations

from bridge.email.parse.reply.attributions import attribution_start
from bridge.email.parse.reply.lines import is_quoted
from bridge.email.parse.reply.result import ReplySplit


def trailing_quote_candidate(work: list[str]) -> int | None:
    """Start of a ``>`` block that runs to the end (a trailing ``-- `` signature allowed)."""
    last_quoted = None
    for i in range(len(work) - 1, -1, -1):
        if ">" in work[i] and is_quoted(work[i]):
            last_quoted = i
            break
    if last_quoted is None:
        return None
    after = [ln for ln in work[last_quoted + 1:] if ln]
    if after and after[0] not in ("--", "-- ", "__"):
        return None  # text follows the quote: inline or bottom-posted reply
    first = last_quoted
    while first > 0 and (is_quoted(work[first - 1]) or not work[first - 1]):
        first -= 1
    while first < last_quoted and not work[first]:
        first += 1
    return attribution_start(work, first)


def split_bottom_posted(lines: list[str], work: list[str]) -> ReplySplit | None:
    """Quote first, answer below: "Le … a écrit :" / "> …" / "my answer"."""
    first = next((i for i, ln in enumerate(work) if ln), None)
    if first is None:
        return None
    quoted_at = _next_quoted(work, first)
    if quoted_at >= len(work):
        return None
    if quoted_at != first and attribution_start(work, quoted_at) != first:
        return None  # text above the quote: a normal top-posted reply
    end = quoted_at
    while end < len(work) and (not work[end] or is_quoted(work[end])):
        end += 1
    rest = [j for j in range(end, len(work)) if work[j]]
    if not rest or any(is_quoted(work[j]) for j in rest):
        return None  # nothing after the quote, or interleaved answers: keep everything
    quote = "\n".join(lines[:end]).strip("\n")
    return ReplySplit(text="\n".join(lines[end:]).strip("\n"), signature=None, quote=quote,
                      bottom_posted=True)


def _next_quoted(work: list[str], start: int) -> int:
    for j in range(start, len(work)):
        if ">" in work[j] and is_quoted(work[j]):
            return j
    return len(work)
