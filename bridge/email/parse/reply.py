"""Plain-text reply splitting: `split_reply` tells the new part of a mail from the quoted history
below (or above) it and from the sender's signature. The quote headers and sign-offs of many
languages are mail-parser-reply's patterns, compiled once (`_Patterns`) and run only on the
lines a cheap probe picks; on top of them come separator lines, attribution lines that open
a trailing ``>`` quote block, and bottom-posted replies.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mailparser_reply.constants import MAIL_LANGUAGES


@dataclass
class ReplySplit:
    text: str  # the new part
    signature: str | None  # the sender's signature below it
    quote: str | None  # the quoted history (attribution line included)
    bottom_posted: bool = False  # the quote stood above the new part

    @property
    def quoted(self) -> str | None:
        """Everything split off `text`, as one string."""
        parts = [p for p in (self.signature, self.quote) if p]
        return "\n\n".join(parts) if parts else None


# Languages whose quote headers we look for (mail-parser-reply's patterns). Polish is left out
# on purpose: its header pattern accepts a single "Do: …" line, and "Do:" is the German
# abbreviation for Thursday in every second appointment list.
_HEADER_LANGUAGES = ("de", "en", "fr", "it", "es", "nl", "da", "sv", "cs", "ja", "ko", "zh")
# Sign-off words only for languages whose lists cannot hit ordinary German or English lines
# (the Danish list contains "Tak", which starts "Take …").
_SIGNATURE_LANGUAGES = ("de", "en", "fr", "it", "es", "nl")
_MAX_LINE = 400  # longer lines cannot be attribution lines; keeps the regexes linear
_MAX_SPLIT_CHARS = 200_000
_MAX_SIGNATURE_LINES = 20  # an administration's signature block with address and disclaimer

_FROM_KEY = re.compile(
    r"^(?:>\s?)*[*\s]*(?:from|von|de|da|fra|från|van|od|от|發件人|发件人|보낸\s?사람|sender|"
    r"absender)[*\s]*[:\uff1a]", re.IGNORECASE)
_KEY_LINE = re.compile(r"^(?:>\s?)*[*\s]*[^\W\d_][\w .'-]{0,25}[*\s]*[:\uff1a]", re.IGNORECASE)
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
_WROTE_WORD = re.compile(
    r"wrote|schrieb|a écrit|ha scritto|escribió|escreveu|schreef|skrev|napisał|написал|"
    r"пише|kirjoitti|napsal|geschreven|写道|寫道|작성", re.IGNORECASE)


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
                    if probe:
                        char = _probe_char(probe[0])
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
        found = _signature_head(self.signature.pattern)
        if found:
            head, signature_probes = found
            if _stays_on_line(sent_from):
                signature_probes.append(rf"(?:> ?)*(?:{sent_from})")
                self.sent_from_probed = True
            self.signature_head = re.compile(head, self.signature.flags)
            alternatives = _any_of(signature_probes)
            self.signature_first_line = re.compile(alternatives, self.signature.flags)
            self.signature_lines = re.compile(rf"\n(?=(?:{alternatives}))",
                                              self.signature.flags)


def _any_of(regexes: list[str]) -> str:
    """One regex (for re.IGNORECASE) that matches where any of these does, built so that the
    regex engine tries it fast at each line start: the quote marks they all start with are
    taken out in front, alternatives inside them are spread out into one list, and a letter
    at the start of an alternative is written as a case-sensitive class (the engine skips an
    alternative by its first character only when that is a plain literal or class)."""
    if not regexes:
        return "(?!)"
    prefix = _QUOTE_PREFIX if all(r.startswith(_QUOTE_PREFIX) for r in regexes) else ""
    by_letter: dict[str, list[str]] = {}  # alternatives by their first letter's class
    others: list[str] = []
    for regex in regexes:
        for alternative in _spread(regex.removeprefix(prefix)):
            letter, rest = _first_letter(alternative)
            if letter:
                by_letter.setdefault(letter, []).append(rest)
            else:
                others.append(f"(?:{alternative})")
    branches = [f"{letter}(?:{'|'.join(dict.fromkeys(rests))})"
                for letter, rests in by_letter.items()]
    return prefix + "(?:" + "|".join(branches + list(dict.fromkeys(others))) + ")"


def _spread(src: str, depth: int = 0) -> list[str]:
    """`src` as a list of alternatives: (?:a|b)c becomes ac, bc, and (?:a)?b becomes ab, b
    (a leading group only). The same matches, as far as where one exists goes."""
    atoms = _regex_atoms(src)
    if atoms is None:
        alternatives = _regex_alternatives(src)
        if depth > 3 or not alternatives or len(alternatives) < 2:
            return [src]
        return [x for alt in alternatives for x in _spread(alt, depth + 1)]
    if depth > 3 or not atoms or atoms[0][1] not in ("", "?", "??") \
            or not atoms[0][0].startswith("(?:"):
        return [src]
    rest = "".join(a + q for a, q in atoms[1:])
    alternatives = _regex_alternatives(atoms[0][0][3:-1])
    if not alternatives or len(alternatives) > 64:
        return [src]
    if atoms[0][1]:  # (?:a)?b: ab, b
        alternatives.append("")
    return [x for alt in alternatives for x in _spread(alt + rest, depth + 1)]


# The characters that an ASCII letter matches under re.IGNORECASE are ASCII letters and
# these four (the re module's documentation names them).
_CASE_CANDIDATES = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\u0130\u0131\u017f\u212a"


def _first_letter(src: str) -> tuple[str | None, str]:
    """(case-sensitive class for the letter `src` starts with, the rest), or (None, src)."""
    atoms = _regex_atoms(src)
    if not atoms or atoms[0][1] or not re.fullmatch(r"[A-Za-z]|\[[A-Za-z]+\]", atoms[0][0]):
        return None, src
    chars = "".join(c for c in _CASE_CANDIDATES if re.fullmatch(atoms[0][0], c, re.IGNORECASE))
    return f"(?-i:[{chars}])", "".join(a + q for a, q in atoms[1:])


def _stays_on_line(src: str) -> bool:
    """Whether a regex can neither match a line break nor look across one."""
    return not any(token in src for token in
                   ("\n", "\\s", "\\W", "\\D", "\\n", "\\x0", "\\A", "\\Z", "[^", "(?s",
                    "(?<"))


# Reading mail-parser-reply's regex source, just enough to take the probes from it. Anything
# unexpected makes these return None, and the pattern is then searched as it is.

def _class_end(src: str, start: int) -> int:
    """Index just past the character class that opens at ``src[start]``, or -1."""
    i = start + 1
    if src.startswith("^", i):
        i += 1
    if src.startswith("]", i):
        i += 1  # a "]" right at the start is a literal
    while i < len(src):
        if src[i] == "\\":
            i += 2
        elif src[i] == "]":
            return i + 1
        else:
            i += 1
    return -1


def _group_end(src: str, start: int) -> int:
    """Index just past the group that opens at ``src[start]``, or -1."""
    depth = 0
    i = start
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i = _class_end(src, i)
            if i < 0:
                return -1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


_QUANTIFIER = re.compile(r"(?:[*+?]|\{\d*,?\d*\})[?+]?")


def _regex_atoms(src: str) -> list[tuple[str, str]] | None:
    """The top-level (atom, quantifier) sequence of a regex; None if it has a top-level "|"
    or syntax this reader does not know (backreferences, named characters)."""
    atoms: list[tuple[str, str]] = []
    i = 0
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            nxt = src[i + 1:i + 2]
            if not nxt or nxt.isdigit() or nxt in "Ngk":
                return None
            end = i + {"x": 4, "u": 6, "U": 10}.get(nxt, 2)
        elif ch == "[":
            end = _class_end(src, i)
        elif ch == "(":
            end = _group_end(src, i)
        elif ch in "|)*+?{":
            return None
        else:
            end = i + 1
        if end < 0 or end > len(src):
            return None
        quantifier = _QUANTIFIER.match(src, end)
        stop = quantifier.end() if quantifier else end
        atoms.append((src[i:end], src[end:stop]))
        i = stop
    return atoms


def _regex_alternatives(src: str) -> list[str] | None:
    """A regex split at its top-level "|"."""
    parts: list[str] = []
    depth = last = i = 0
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i = _class_end(src, i)
            if i < 0:
                return None
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(src[last:i])
            last = i + 1
        i += 1
    parts.append(src[last:])
    return parts


def _min_repeat(quantifier: str) -> int:
    if quantifier in ("", "+", "+?", "++"):
        return 1
    match = re.match(r"\{(\d+)", quantifier)
    return int(match.group(1)) if match else 0


_QUOTE_PREFIX = r"(?:> ?)*"
_BLOCK_LINE_START = r"(?:^|\n|\n(?:> ?)*)"


def _header_probe(src: str) -> tuple[str, str | None] | None:
    """(probe, guard) for a quote-header pattern of mail-parser-reply, or None.

    The probe matches at the start of the line where a match of the pattern begins (the
    pattern may begin at that line's start or at the line break just before it): it is the
    pattern's first few elements, and a regex that matches implies that every prefix of it
    matches. The guard, if any, finds texts where a match may begin elsewhere.
    """
    if src.startswith("^(?!"):
        # "On … wrote:" lines: ^(?!…)((?:> ?)*On\s…)$ — a line that starts with the keyword.
        lookahead_end = _group_end(src, 1)
        if lookahead_end < 0 or not src.startswith("(", lookahead_end) \
                or src.startswith("(?", lookahead_end):
            return None
        body_end = _group_end(src, lookahead_end)
        atoms = _regex_atoms(src[lookahead_end + 1:body_end - 1]) if body_end > 0 else None
        if not atoms or len(atoms) < 2 or atoms[0] != (_QUOTE_PREFIX[:-1], "*"):
            return None
        return "".join(a + q for a, q in atoms[:4]), None
    if not src.startswith("(") or src.startswith("(?") or _group_end(src, 0) != len(src):
        return None
    # "From: … / Sent: …" blocks: ((?:(?:^|\n|\n(?:> ?)*)[* ]*(?:From|Sent|…):…){2,}…)
    atoms = _regex_atoms(src[1:-1])
    if not atoms:
        return None
    guard = None
    if _min_repeat(atoms[0][1]) == 0:
        # An optional lead-in (Danish: "-----Oprindelig meddelelse-----"). Where it is
        # missing from the text, the match starts with the block; elsewhere search it all.
        head, quantifier = atoms.pop(0)
        inner = _regex_atoms(head[3:-1]) if head.startswith("(?:") and quantifier == "?" \
            else None
        while inner and _min_repeat(inner[0][1]) == 0:
            inner.pop(0)
        if not inner or not atoms:
            return None
        guard = "".join(a + q for a, q in inner)
    block, quantifier = atoms[0]
    if not block.startswith("(?:") or _min_repeat(quantifier) < 1:
        return None
    line = _regex_atoms(block[3:-1])
    if not line or len(line) < 2 or line[0] != (_BLOCK_LINE_START, ""):
        return None
    return _QUOTE_PREFIX + "".join(a + q for a, q in line[1:4]), guard


def _probe_char(probe: str) -> str | None:
    """A character that every line where `probe` matches (at its start) contains: a
    punctuation character the probe must match before anything that could cross a line
    break."""
    for atom, quantifier in _regex_atoms(probe) or []:
        if len(atom) == 1 and not quantifier and not atom.isalnum() and not atom.isspace() \
                and atom not in ".^$":
            return atom
        if not _stays_on_line(atom):
            return None
    return None


# The signature regex's alternatives each start at a line start, after blank space before
# one, or (the long ruler) on the line breaks before it.
_SIGNATURE_RULER = r"(\n{2,} ?[_-]{32,})"
_RULER_LINE = re.compile(r"\n\n(?= ?[_-]{32})")


def _signature_head(src: str) -> tuple[str, list[str]] | None:
    """mail-parser-reply's signature regex without the ``(.|\\s)*`` tail that takes in the
    rest of the text (it matches anything, so a match starts where the head's does), and
    probes: what its alternatives other than the long ruler must match at a line start."""
    if not src.startswith("(") or _group_end(src, 0) != len(src):
        return None
    atoms = _regex_atoms(src[1:-1])
    if not atoms or len(atoms) != 2 or atoms[1] != ("(.|\\s)", "*") or atoms[0][1] \
            or not atoms[0][0].startswith("("):
        return None
    head = atoms[0][0]
    probes = []
    for alternative in _regex_alternatives(head[1:-1]) or []:
        if alternative == _SIGNATURE_RULER:
            continue
        anchor = next((a for a in ("\\s*^", "(?<!\\A)^", "^") if alternative.startswith(a)),
                      None)
        rest = _regex_atoms(alternative[len(anchor):]) if anchor else None
        if not rest:
            return None
        probes.append("".join(a + q for a, q in rest[:2]))
    return (head, probes) if probes else None


_patterns: _Patterns | None = None


def _get_patterns() -> _Patterns:
    global _patterns
    if _patterns is None:
        _patterns = _Patterns()
    return _patterns


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _looks_like_attribution(text: str) -> bool:
    text = text.strip()
    return (text.endswith((":", "\uff1a")) and len(text) <= 2 * _MAX_LINE
            and bool(re.search(r"\d|@", text) or _WROTE_WORD.search(text)))


def _attribution_start(work: list[str], first_quoted: int) -> int:
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
    if k >= 1 and work[k - 1] and not _is_quoted(work[k - 1]) and (
            len(work[k]) < 40 or work[k - 1].endswith("<")):
        joined = work[k - 1] + " " + work[k]
        if _looks_like_attribution(joined) and len(work[k - 1]) < 300:
            return k - 1
    return k if _looks_like_attribution(work[k]) else first_quoted


def _probe_lines(norm: str) -> list[int]:
    """Starts of the lines of `norm` where some quote-header pattern's probe matches."""
    patterns = _get_patterns()
    starts = {match.start() + 1 for match in patterns.header_lines.finditer(norm)}
    if patterns.header_first_line.match(norm):
        starts.add(0)
    for char, probe in patterns.header_char_probes:
        at = norm.find(char)
        while at >= 0:
            start = norm.rfind("\n", 0, at) + 1
            if probe.match(norm, start):
                starts.add(start)
            end = norm.find("\n", at)
            at = norm.find(char, end) if end >= 0 else -1
    return sorted(starts)


def _header_matches(index: int, norm: str, lines: list[int]) -> Iterator[re.Match[str]]:
    """The matches that ``headers[index].finditer(norm)`` yields, found by trying the pattern
    only at the line starts in `lines` (and the line breaks just before them) that its
    probe accepts."""
    patterns = _get_patterns()
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


def _header_candidate(work: list[str], norm: str) -> int | None:
    """First line where mail-parser-reply's quote-header patterns match, after our checks."""
    best: int | None = None
    lines = _probe_lines(norm)
    for index in range(len(_get_patterns().headers)):
        for count, match in enumerate(_header_matches(index, norm, lines)):
            if count >= 20:
                break
            start = match.start()
            while start < match.end() and norm[start] in "\n \t":
                start += 1
            line = norm.count("\n", 0, start)
            if best is not None and line >= best:
                break
            block = [ln for ln in match.group(0).split("\n") if ln.strip()]
            key_lines = [ln for ln in block if _KEY_LINE.match(ln)]
            if len(key_lines) >= 2:
                # An Outlook-style header block: it must name a sender, or "Datum:/Betreff:"
                # lines of a form letter would count as a quote. The sender may stand just
                # above the part the pattern matched ("From:" / "Reply-To:" / "Date:" …).
                if not any(_FROM_KEY.match(ln) for ln in key_lines):
                    above = next((j for j in range(line - 1, max(line - 4, -1), -1)
                                  if _FROM_KEY.match(work[j])), None)
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


# Both separator patterns need a line that starts with ">", a ruler character or a space,
# or one that ends with ":": found at the line breaks next to them, all lines at once.
_SEPARATOR_HINT = re.compile(r"\n(?:(?=[>\-=_*]|[^\S\n])|(?<=:\n))")


def _separator_candidate(work: list[str], norm: str) -> int | None:
    hinted = {0, len(work) - 1}  # the first and last line have a break on one side only
    number = last = 0
    for match in _SEPARATOR_HINT.finditer(norm):
        number += norm.count("\n", last, match.start())
        last = match.start()
        hinted.update((number, number + 1))
    for i in sorted(hinted):
        line = work[i] if 0 <= i < len(work) else ""
        if not line or not (line[0] in ">-=_*" or line[0].isspace() or line[-1] == ":"):
            continue
        if _SEPARATOR.match(line):
            return i
        if _UNDERSCORE_LINE.match(line):
            # Outlook's line above "From: …"; alone it is just a ruler.
            following = [ln for ln in work[i + 1:i + 4] if ln]
            if following and _FROM_KEY.match(following[0]):
                return i
    return None


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
    if len(text) > 2 * _MAX_LINE:
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
_ATTRIBUTION_END = re.compile(r"\n(?:(?<=[:\uff1a]\n)|(?<=[-=][-=]\n))")  # before a break


def _attribution_candidate(work: list[str], norm: str) -> int | None:
    ends: set[int] = set()  # numbers of the lines that end like an attribution
    number = last = 0
    for match in _ATTRIBUTION_END.finditer(norm):
        number += norm.count("\n", last, match.start())
        last = match.start()
        ends.update((number - 1, number))
    if work and work[-1].endswith(_ATTRIBUTION_ENDS):
        ends.update((len(work) - 2, len(work) - 1))
    for i in sorted(ends):
        line = work[i] if 0 <= i < len(work) else ""
        if not line or _is_quoted(line):
            continue
        if _is_strong_attribution(line):
            return i
        if (i + 1 < len(work) and work[i + 1] and not line.endswith((".", "!", "?"))
                and not _is_strong_attribution(work[i + 1])
                and _is_strong_attribution(line + " " + work[i + 1])):
            return i
    return None


def _trailing_quote_candidate(work: list[str]) -> int | None:
    """Start of a ``>`` block that runs to the end (a trailing ``-- `` signature allowed)."""
    last_quoted = None
    for i in range(len(work) - 1, -1, -1):
        if ">" in work[i] and _is_quoted(work[i]):
            last_quoted = i
            break
    if last_quoted is None:
        return None
    after = [ln for ln in work[last_quoted + 1:] if ln]
    if after and after[0] not in ("--", "-- ", "__"):
        return None  # text follows the quote: inline or bottom-posted reply
    first = last_quoted
    while first > 0 and (_is_quoted(work[first - 1]) or not work[first - 1]):
        first -= 1
    while first < last_quoted and not work[first]:
        first += 1
    return _attribution_start(work, first)


def _bottom_posted(lines: list[str], work: list[str]) -> ReplySplit | None:
    """Quote first, answer below: "Le … a écrit :" / "> …" / "my answer"."""
    first = next((i for i, ln in enumerate(work) if ln), None)
    if first is None:
        return None
    quoted_at = _next_quoted(work, first)
    if quoted_at >= len(work):
        return None
    if quoted_at != first and _attribution_start(work, quoted_at) != first:
        return None  # text above the quote: a normal top-posted reply
    end = quoted_at
    while end < len(work) and (not work[end] or _is_quoted(work[end])):
        end += 1
    rest = [j for j in range(end, len(work)) if work[j]]
    if not rest or any(_is_quoted(work[j]) for j in rest):
        return None  # nothing after the quote, or interleaved answers: keep everything
    quote = "\n".join(lines[:end]).strip("\n")
    return ReplySplit(text="\n".join(lines[end:]).strip("\n"), signature=None, quote=quote,
                      bottom_posted=True)


def _next_quoted(work: list[str], start: int) -> int:
    for j in range(start, len(work)):
        if ">" in work[j] and _is_quoted(work[j]):
            return j
    return len(work)


def _signature_start(work: list[str], end: int, norm: str | None = None) -> int | None:
    """Line where the sender's signature begins in work[:end] (`norm`: those lines joined,
    if at hand), per mail-parser-reply."""
    patterns = _get_patterns()
    first_text = next((i for i, line in enumerate(work) if line), len(work))
    if norm is None:
        norm = "\n".join(work[:end])
    anchors = _signoff_anchors(norm)
    lines_from = max(1, first_text + 1)  # a "Sent from" line needs text above it
    candidates: Iterable[int] = range(lines_from, end)
    if anchors is not None and patterns.sent_from_probed:
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
    patterns = _get_patterns()
    pos = 0
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
        line_no = norm.count("\n", 0, start)
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
                and _few_lines(work, line_no + 1, end, _MAX_SIGNATURE_LINES)):
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


def _signoff_anchors(norm: str) -> list[int] | None:
    """Starts of the lines where a match of the signature regex can end its leading blank
    space, in order (None: the regex is not of the shape `_signature_head` knows). Every
    line that `sent_from` matches is among them too, when `sent_from_probed`.

    A match begins on such a line or in the blank space right before it: the regex's
    alternatives start with ``\\s*^`` or ``^`` (then the regex matches at the line start
    too) or are the long ruler after an empty line. The probes may pick more lines than
    that; `_signoff_search` tries the regex itself.
    """
    patterns = _get_patterns()
    first, lines = patterns.signature_first_line, patterns.signature_lines
    if first is None or lines is None:
        return None
    anchors = {match.start() + 1 for match in lines.finditer(norm)}
    anchors.update(match.end() for match in _RULER_LINE.finditer(norm))
    if first.match(norm):
        anchors.add(0)
    return sorted(anchors)


def _signoff_search(norm: str, pos: int, anchors: list[int]) -> int | None:
    """Where ``signature.search(norm, pos)`` would match, trying only the blank space before
    each anchor line and its start."""
    head = _get_patterns().signature_head
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


def split_reply(text: str) -> ReplySplit:
    """Split a plain-text body into the new part, the signature and the quoted history.

    When in doubt the text is kept: if stripping would leave nothing, nothing is stripped.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    head, tail = text, ""
    if len(text) > _MAX_SPLIT_CHARS:
        cut = text.rfind("\n", 0, _MAX_SPLIT_CHARS)
        cut = cut if cut > 0 else _MAX_SPLIT_CHARS
        head, tail = text[:cut], text[cut:]
    lines = head.split("\n")
    # A stripped, length-capped copy, one entry per line, so that matches map back to lines.
    if "\ufeff" in head or "\u200b" in head:
        work = [line.strip().lstrip("\ufeff\u200b")[:_MAX_LINE] for line in lines]
    else:
        work = [line.strip()[:_MAX_LINE] for line in lines]
    # Without a ">" there are no quoted lines: no bottom-posted quote, no trailing quote.
    quoted = ">" in head

    bottom = _bottom_posted(lines, work) if not tail and quoted else None
    if bottom is not None:
        lines = bottom.text.split("\n")
        work = [line.strip()[:_MAX_LINE] for line in lines]
        sig = _signature_start(work, len(work))
        if sig is not None and any(work[:sig]):
            return ReplySplit("\n".join(lines[:sig]).strip("\n"),
                              "\n".join(lines[sig:]).strip("\n") or None, bottom.quote,
                              bottom_posted=True)
        return bottom

    norm = "\n".join(work)
    candidates = [c for c in (_header_candidate(work, norm), _separator_candidate(work, norm),
                              _attribution_candidate(work, norm),
                              _trailing_quote_candidate(work) if quoted else None)
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
    sig_start = _signature_start(work, end, norm if end == len(work) else None)

    new_end = sig_start if sig_start is not None else end
    new_text = "\n".join(lines[:new_end]).strip("\n")
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
