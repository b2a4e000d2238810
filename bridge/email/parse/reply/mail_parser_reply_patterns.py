"""Workaround fence: mail-parser-reply's regexes, compiled once and made fast to search.

The library offers its patterns (``mailparser_reply.constants.MAIL_LANGUAGES`` and
``EmailMessage.SIGNATURE_REGEX``) but searching them as they are costs about 1 ms per kB of
mail per pattern. So this module reads their *source text* (with `regex_source`) and takes a
cheap probe from each, which the reply strategies run first. That reaches into the shape of
the library's regexes, which is no API: it was written for mail-parser-reply 1.36 (the
version pyproject.toml pins), and tests/email/test_mail_parser_reply_patterns.py fails,
saying what changed, when a new version breaks a shape relied on here. A pattern of a shape
this does not understand is still searched the slow way, so a change costs speed, not results.
"""

from __future__ import annotations

import re

from mailparser_reply.constants import MAIL_LANGUAGES

from bridge.email.parse.reply.regex_source import (
    first_letter_chars,
    group_end,
    min_repeat,
    regex_alternatives,
    regex_atoms,
    spread_alternatives,
    stays_on_line,
    unroll_first_atom,
)

# Languages whose quote headers we look for (mail-parser-reply's patterns). Polish is left out
# on purpose: its header pattern accepts a single "Do: …" line, and "Do:" is the German
# abbreviation for Thursday in every second appointment list.
_HEADER_LANGUAGES = ("de", "en", "fr", "it", "es", "nl", "da", "sv", "cs", "ja", "ko", "zh")
# Sign-off words only for languages whose lists cannot hit ordinary German or English lines
# (the Danish list contains "Tak", which starts "Take …").
_SIGNATURE_LANGUAGES = ("de", "en", "fr", "it", "es", "nl")


class _Patterns:
    """mail-parser-reply's regexes, compiled once and per language (so one language's loose
    pattern cannot hide another's match at the same position).

    Searching them as they are is slow: every quote-header pattern starts with an optional
    group, so the regex engine tries each of them at every position of the text (about 1 ms
    per kB for all of them), and the signature regex ends in ``(.|\\s)*``, which walks the
    rest of the text a character at a time. So next to each pattern this keeps a *probe*: a
    cheap regex that must match at the start of the line where a match of the pattern can
    start. One pass over the line starts finds the lines any probe accepts, and the patterns
    themselves only run there. The probes are taken from the library's own pattern text
    (`_header_probe`, `_signature_head`); a pattern of a shape they do not understand is
    searched the slow way, so the result is the same either way.
    """

    def __init__(self) -> None:
        from mailparser_reply import EmailMessage as ReplyMessage

        flags = re.MULTILINE | re.IGNORECASE
        self.headers: list[re.Pattern[str]] = []
        # Per header pattern: a probe for the line a match starts on (None: search the whole
        # text), and a guard, a regex that finds every text where the probe is not enough.
        self.header_probes: list[re.Pattern[str] | None] = []
        self.header_guards: list[re.Pattern[str] | None] = []
        # Per header pattern: the character every line its probe matches on holds (see
        # `header_char_probes`), or None: its probe is among those tried on every line.
        self.header_probe_chars: list[str | None] = []
        line_probes: list[str] = []  # tried on every line
        char_probes: dict[str, list[str]] = {}  # tried on the lines that hold the character
        for lang in _HEADER_LANGUAGES:
            spec = MAIL_LANGUAGES.get(lang, {})
            for key in ("wrote_header", "from_header"):
                pattern = spec.get(key)
                if isinstance(pattern, str) and pattern:
                    self.headers.append(re.compile(pattern, flags))
                    probe = _header_probe(pattern)
                    self.header_probes.append(re.compile(probe[0], flags) if probe else None)
                    self.header_guards.append(
                        re.compile(probe[1], flags) if probe and probe[1] else None)
                    char = _probe_char(probe[0]) if probe else None
                    self.header_probe_chars.append(char)
                    if probe:
                        if char:
                            char_probes.setdefault(char, []).append(probe[0])
                        else:
                            line_probes.append(probe[0])
        alternatives = _any_of(line_probes)
        # A line start where some probe matches: the first line, and each line after a "\n".
        self.header_first_line = re.compile(alternatives, flags)
        self.header_lines = re.compile(rf"\n(?=(?:{alternatives}))", flags)
        # Probes that match only on a line with a certain character ("From:" needs a ":"):
        # lines without one (most lines of prose) need not be tried.
        self.header_char_probes = [
            (char, re.compile(_any_of(probes), flags))
            for char, probes in char_probes.items()]

        # keep_hyphen_lists: a "- item" list is content, not the "-Name" signature style.
        self.signature = ReplyMessage(text="", languages=list(_SIGNATURE_LANGUAGES),
                                      keep_hyphen_lists=True).SIGNATURE_REGEX
        # "Sent from my iPhone" lines of every language, in the library's own form.
        sent_from = "|".join(
            str(MAIL_LANGUAGES[lang]["sent_from"]) for lang in _HEADER_LANGUAGES
            if MAIL_LANGUAGES.get(lang, {}).get("sent_from"))
        self.sent_from = re.compile(
            rf"^(?:> ?)*(?:{sent_from}) ?(?:(?:[\w.<>:// ]+)|(?:\w+ ){{1,3}})$", flags)
        # The signature regex without its tail (a match starts where the whole one does),
        # and probes for the lines where it can match; None: search with the whole regex.
        # When nothing in them can match a line break, "Sent from" lines are probed for in
        # the same pass (`sent_from_probed`).
        self.signature_head: re.Pattern[str] | None = None
        self.signature_first_line: re.Pattern[str] | None = None
        self.signature_lines: re.Pattern[str] | None = None
        self.sent_from_probed = False
        # A regex (source) that matches at a line start where a quote-header or a signature
        # probe does; None: each looked for alone.
        self.any_probes: str | None = None
        found = _signature_head(self.signature.pattern)
        if found:
            head, signature_probes = found
            if stays_on_line(sent_from):
                signature_probes.append(rf"(?:> ?)*(?:{sent_from})")
                self.sent_from_probed = True
            self.signature_head = re.compile(head, self.signature.flags)
            alternatives = _any_of(signature_probes)
            self.signature_first_line = re.compile(alternatives, self.signature.flags)
            self.signature_lines = re.compile(rf"\n(?=(?:{alternatives}))",
                                              self.signature.flags)
            if self.signature.flags == re.compile("", flags).flags:
                # Both kinds of probe in the one pass over the lines (`scan.scan_lines`,
                # compiled with these flags): one regex of both is a third faster than two,
                # as alternatives with the same first letter are tried together.
                self.any_probes = _any_of(line_probes + signature_probes)


QUOTE_PREFIX = r"(?:> ?)*"  # the quote marks the probes allow in front
_BLOCK_LINE_START = r"(?:^|\n|\n(?:> ?)*)"


def _any_of(regexes: list[str]) -> str:
    """One regex (for re.IGNORECASE) that matches where any of these does, built so that the
    regex engine tries it fast at each line start: the quote marks they all start with are
    taken out in front, alternatives inside them are spread out into one list, and grouped
    by their first letters (`_by_first_letters`)."""
    if not regexes:
        return "(?!)"
    prefix = QUOTE_PREFIX if all(r.startswith(QUOTE_PREFIX) for r in regexes) else ""
    alternatives = [alternative for regex in regexes
                    for alternative in spread_alternatives(regex.removeprefix(prefix))]
    return prefix + "(?:" + _by_first_letters(alternatives, _LETTER_LEVELS) + ")"


# How many leading letters `_any_of` groups the alternatives by: at a line start that
# matches none of them (most lines), the engine then looks at a handful of alternatives
# for the first letter and a handful for the second, instead of all that share the first.
_LETTER_LEVELS = 2
# Above this many first letters, they are split in two halves, each behind a lookahead for
# its letters: most lines are then turned away by two checks and half the letters.
_LETTERS_IN_ONE = 8


def _by_first_letters(alternatives: list[str], levels: int) -> str:
    """The alternatives joined with "|", those that start with a letter grouped under a
    case-sensitive class of it (the engine skips an alternative by its first character only
    when that is a plain literal or class, not a letter under re.IGNORECASE), and within
    each group the same again for the next letter, `levels` deep. An alternative that starts
    with a quantified character is unrolled so that it starts with the character alone.
    Where a match exists stays the same."""
    by_letter: dict[str, list[str]] = {}  # the rests of the alternatives by the characters
    others: list[str] = []                # their first letter matches
    spread_out = (spread for alternative in dict.fromkeys(alternatives)
                  for unrolled in unroll_first_atom(alternative)
                  for spread in spread_alternatives(unrolled))
    for alternative in dict.fromkeys(spread_out):
        chars, rest = first_letter_chars(alternative) if levels else (None, alternative)
        if chars:
            by_letter.setdefault(chars, []).append(rest)
        else:
            others.append(f"(?:{alternative})")
    branches = {chars: f"(?-i:[{chars}])(?:{_by_first_letters(rests, levels - 1)})"
                for chars, rests in by_letter.items()}
    if levels == _LETTER_LEVELS:
        # The others (digits, "* ", Korean, "-_" …) behind one lookahead for their first
        # characters: a line of prose is turned away by one check instead of one per
        # alternative (a tenth of the time of the line probes).
        firsts = _first_characters([alternative[3:-1] for alternative in others])
        if firsts is not None and len(others) > 1:
            others = [f"(?=[{firsts}])(?:{'|'.join(others)})"]
    if levels == _LETTER_LEVELS and len(branches) > _LETTERS_IN_ONE:
        letters = list(branches)
        halves = [f"(?=(?-i:[{''.join(half)}]))(?:{'|'.join(branches[c] for c in half)})"
                  for half in (letters[::2], letters[1::2])]
        return "|".join(halves + others)
    return "|".join([*branches.values(), *others])


# One character without a quantifier, which can stand in a character class: a non-negated
# class, a class escape, an escaped punctuation character, a plain character.
_CLASS_MEMBER = re.compile(r"\[[^\^\]](?:\\.|[^\]\\])*\]|\\[dsw]|\\[^\w\s]|[^\\.^$|()\[\]{}*+?]",
                           re.DOTALL)


def _first_characters(alternatives: list[str]) -> str | None:
    """The inside of a character class that holds every character these regexes can start
    with, or None where one of them does not start with a single character."""
    members = []
    for alternative in alternatives:
        atoms = regex_atoms(alternative)
        if not atoms or atoms[0][1] or not _CLASS_MEMBER.fullmatch(atoms[0][0]):
            return None
        atom = atoms[0][0]
        if atom.startswith("["):
            # Kept apart from its neighbours: a "-" at either end, or a "^" at the start,
            # would mean something else next to them.
            inner = atom[1:-1]
            if inner.startswith(("-", "^")):
                inner = "\\" + inner
            trailing_backslashes = len(inner[:-1]) - len(inner[:-1].rstrip("\\"))
            if inner.endswith("-") and trailing_backslashes % 2 == 0:
                inner = inner[:-1] + "\\-"
            members.append(inner)
        else:
            members.append(atom if atom.startswith("\\") else re.escape(atom))
    return "".join(members)


def _header_probe(src: str) -> tuple[str, str | None] | None:
    """(probe, guard) for a quote-header pattern of mail-parser-reply, or None.

    The probe matches at the start of the line where a match of the pattern begins (the
    pattern may begin at that line's start or at the line break just before it): it is the
    pattern's first few elements, and a regex that matches implies that every prefix of it
    matches. The guard, if any, finds texts where a match may begin elsewhere.
    """
    if src.startswith("^(?!"):
        # "On … wrote:" lines: ^(?!…)((?:> ?)*On\s…)$ — a line that starts with the keyword.
        lookahead_end = group_end(src, 1)
        if lookahead_end < 0 or not src.startswith("(", lookahead_end) \
                or src.startswith("(?", lookahead_end):
            return None
        body_end = group_end(src, lookahead_end)
        atoms = regex_atoms(src[lookahead_end + 1:body_end - 1]) if body_end > 0 else None
        if not atoms or len(atoms) < 2 or atoms[0] != (QUOTE_PREFIX[:-1], "*"):
            return None
        return "".join(a + q for a, q in atoms[:4]), None
    if not src.startswith("(") or src.startswith("(?") or group_end(src, 0) != len(src):
        return None
    # "From: … / Sent: …" blocks: ((?:(?:^|\n|\n(?:> ?)*)[* ]*(?:From|Sent|…):…){2,}…)
    atoms = regex_atoms(src[1:-1])
    if not atoms:
        return None
    guard = None
    if min_repeat(atoms[0][1]) == 0:
        # An optional lead-in (Danish: "-----Oprindelig meddelelse-----"). Where it is
        # missing from the text, the match starts with the block; elsewhere search it all.
        head, quantifier = atoms.pop(0)
        inner = regex_atoms(head[3:-1]) if head.startswith("(?:") and quantifier == "?" \
            else None
        while inner and min_repeat(inner[0][1]) == 0:
            inner.pop(0)
        if not inner or not atoms:
            return None
        guard = "".join(a + q for a, q in inner)
    block, quantifier = atoms[0]
    if not block.startswith("(?:") or min_repeat(quantifier) < 1:
        return None
    line = regex_atoms(block[3:-1])
    if not line or len(line) < 2 or line[0] != (_BLOCK_LINE_START, ""):
        return None
    return QUOTE_PREFIX + "".join(a + q for a, q in line[1:4]), guard


def _probe_char(probe: str) -> str | None:
    """A character that every line where `probe` matches (at its start) contains: a
    punctuation character the probe must match before anything that could cross a line
    break."""
    for atom, quantifier in regex_atoms(probe) or []:
        if len(atom) == 1 and not quantifier and not atom.isalnum() and not atom.isspace() \
                and atom not in ".^$":
            return atom
        if not stays_on_line(atom):
            return None
    return None


# The signature regex's alternatives each start at a line start, after blank space before
# one, or (the long ruler) on the line breaks before it.
_SIGNATURE_RULER = r"(\n{2,} ?[_-]{32,})"
RULER_LINE = re.compile(r"\n\n(?= ?[_-]{32})")
RULER_START = re.compile(r" ?[_-]{32}")  # a line where RULER_LINE ends, after an empty one


def _signature_head(src: str) -> tuple[str, list[str]] | None:
    """mail-parser-reply's signature regex without the ``(.|\\s)*`` tail that takes in the
    rest of the text (it matches anything, so a match starts where the head's does), and
    probes: what its alternatives other than the long ruler must match at a line start."""
    if not src.startswith("(") or group_end(src, 0) != len(src):
        return None
    atoms = regex_atoms(src[1:-1])
    if not atoms or len(atoms) != 2 or atoms[1] != ("(.|\\s)", "*") or atoms[0][1] \
            or not atoms[0][0].startswith("("):
        return None
    head = atoms[0][0]
    probes = []
    for alternative in regex_alternatives(head[1:-1]) or []:
        if alternative == _SIGNATURE_RULER:
            continue
        anchor = next((a for a in ("\\s*^", "(?<!\\A)^", "^") if alternative.startswith(a)),
                      None)
        rest = regex_atoms(alternative[len(anchor):]) if anchor else None
        if not rest:
            return None
        probes.append("".join(a + q for a, q in rest[:2]))
    return (head, probes) if probes else None


_patterns: _Patterns | None = None


def get_patterns() -> _Patterns:
    global _patterns
    if _patterns is None:
        _patterns = _Patterns()
    return _patterns


# What this module takes from mail-parser-reply, per language; "sent_from" is optional
# because the library has none for some languages (Japanese).
_REQUIRED_KEYS = ("wrote_header", "from_header")
_OPTIONAL_KEYS = ("sent_from",)


def reliance_problems() -> list[str]:
    """What of the things this module relies on the installed mail-parser-reply no longer
    provides in the form it was written for (an empty list: all of it).

    A missing language or key loses quote headers (results change); a pattern of a shape the
    probe reader does not know is searched the slow way (speed changes).
    """
    problems: list[str] = []
    for lang in _HEADER_LANGUAGES:
        spec = MAIL_LANGUAGES.get(lang)
        if not isinstance(spec, dict):
            problems.append(f"MAIL_LANGUAGES[{lang!r}] is gone: that language's quote headers "
                            "are no longer recognised")
            continue
        for key in _REQUIRED_KEYS + _OPTIONAL_KEYS:
            if key in spec and not isinstance(spec[key], str):
                problems.append(f"MAIL_LANGUAGES[{lang!r}][{key!r}] is no longer a regex string "
                                f"but {type(spec[key]).__name__}")
        for key in _REQUIRED_KEYS:
            pattern = spec.get(key)
            if not isinstance(pattern, str) or not pattern:
                problems.append(f"MAIL_LANGUAGES[{lang!r}][{key!r}] is gone: those quote headers "
                                "are no longer recognised")
            elif _header_probe(pattern) is None:
                problems.append(f"MAIL_LANGUAGES[{lang!r}][{key!r}] has a shape the probe reader "
                                f"does not know (searched slowly now): {pattern[:160]!r}")
    try:
        patterns = get_patterns()
    except Exception as exc:  # a changed EmailMessage signature or attribute
        return [*problems, "EmailMessage(text=, languages=, keep_hyphen_lists=).SIGNATURE_REGEX "
                f"no longer works: {exc!r}"]
    if patterns.signature_head is None:
        problems.append("EmailMessage.SIGNATURE_REGEX has a shape _signature_head does not know "
                        f"(searched slowly now): {patterns.signature.pattern[:160]!r}")
    elif not patterns.sent_from_probed:
        problems.append("a 'sent_from' pattern can now cross a line break, so 'Sent from my …' "
                        "lines are searched line by line")
    return problems
