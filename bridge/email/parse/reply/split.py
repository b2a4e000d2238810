"""The entry point: `split_reply` runs the strategies and takes the earliest quote start."""

from __future__ import annotations

import re

from bridge.email.parse.reply.attributions import attribution_candidate
from bridge.email.parse.reply.lines import MAX_LINE
from bridge.email.parse.reply.quote_blocks import split_bottom_posted, trailing_quote_candidate
from bridge.email.parse.reply.quote_headers import header_candidate
from bridge.email.parse.reply.result import ReplySplit
from bridge.email.parse.reply.scan import scan_lines
from bridge.email.parse.reply.separators import separator_candidate
from bridge.email.parse.reply.signatures import signature_start

_MAX_SPLIT_CHARS = 200_000


def split_reply(text: str) -> ReplySplit:
    """Split a plain-text body into the new part, the signature and the quoted history.

    When in doubt the text is kept: if stripping would leave nothing, nothing is stripped.
    """
    if "\r" in text:  # (a search for one character is fast, one for "\r\n" is not)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    head, tail = text, ""
    if len(text) > _MAX_SPLIT_CHARS:
        cut = text.rfind("\n", 0, _MAX_SPLIT_CHARS)
        cut = cut if cut > 0 else _MAX_SPLIT_CHARS
        head, tail = text[:cut], text[cut:]
    lines = head.split("\n")
    # A stripped, length-capped copy, one entry per line, so that matches map back to lines.
    if "\ufeff" in head or "\u200b" in head:
        work = [line.strip().lstrip("\ufeff\u200b")[:MAX_LINE] for line in lines]
    else:
        # (Stripped at C speed, then capped where a line is longer: rare.)
        work = list(map(str.strip, lines))
        if max(map(len, work), default=0) > MAX_LINE:
            work = [line[:MAX_LINE] for line in work]
    # Without a ">" there are no quoted lines: no bottom-posted quote, no trailing quote.
    quoted = ">" in head

    bottom = split_bottom_posted(lines, work) if not tail and quoted else None
    if bottom is not None:
        lines = bottom.text.split("\n")
        work = [line.strip()[:MAX_LINE] for line in lines]
        sig = signature_start(work, len(work))
        if sig is not None and any(work[:sig]):
            return ReplySplit("\n".join(lines[:sig]).strip("\n"),
                              "\n".join(lines[sig:]).strip("\n") or None, bottom.quote,
                              bottom_posted=True)
        return bottom

    norm = "\n".join(work)
    scan = scan_lines(norm)  # the lines each strategy below looks at, in one pass
    candidates = [c for c in (header_candidate(work, norm, scan),
                              separator_candidate(work, scan),
                              attribution_candidate(work, scan),
                              trailing_quote_candidate(work) if quoted else None)
                  if c is not None]
    quote_start = min(candidates) if candidates else None
    if quote_start is not None:
        # A ruler line right above the quote header ("-----…", "_____…") belongs to it.
        above = quote_start - 1
        while above >= 0 and (not work[above] or re.fullmatch(r"[-_=*]{5,}", work[above])):
            above -= 1
        if above + 1 < quote_start and any(re.fullmatch(r"[-_=*]{5,}", w)
                                           for w in work[above + 1:quote_start]):
            quote_start = next(j for j in range(above + 1, quote_start)
                               if re.fullmatch(r"[-_=*]{5,}", work[j]))
    if quote_start is not None and not any(work[:quote_start]):
        quote_start = None  # the quote is all there is (a forward, or a misdetection)
    end = quote_start if quote_start is not None else len(lines)
    whole = end == len(work)
    sig_start = signature_start(work, end, norm if whole else None, scan if whole else None)

    new_end = sig_start if sig_start is not None else end
    # (All the lines are the text they were split from: no need to join them again.)
    new_text = (head if new_end == len(lines) else "\n".join(lines[:new_end])).strip("\n")
    if not new_text.strip():
        return ReplySplit(text.strip("\n"), None, None)
    signature = "\n".join(lines[new_end:end]).strip("\n") or None
    quote = None
    if quote_start is not None:
        quote = ("\n".join(lines[quote_start:]) + tail).strip("\n") or None
    elif tail:
        new_text = (new_text + tail).strip("\n") if signature is None else new_text
        if signature is not None:
            signature = (signature + tail).strip("\n")
    return ReplySplit(new_text, signature, quote)
