"""Reading a regex's source text, just enough to take cheap probes from it.

`mail_parser_reply_patterns` uses this to take the probes from mail-parser-reply's
patterns. Anything unexpected makes these return None, and the caller then searches the
pattern as it is (slowly, with the same result).
"""

from __future__ import annotations

import re


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


def group_end(src: str, start: int) -> int:
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


def regex_atoms(src: str) -> list[tuple[str, str]] | None:
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
            end = group_end(src, i)
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


def regex_alternatives(src: str) -> list[str] | None:
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


def min_repeat(quantifier: str) -> int:
    if quantifier in ("", "+", "+?", "++"):
        return 1
    match = re.match(r"\{(\d+)", quantifier)
    return int(match.group(1)) if match else 0


def spread_alternatives(src: str, depth: int = 0) -> list[str]:
    """`src` as a list of alternatives: (?:a|b)c becomes ac, bc, and (?:a)?b becomes ab, b
    (a leading group only). The same matches, as far as where one exists goes."""
    atoms = regex_atoms(src)
    if atoms is None:
        alternatives = regex_alternatives(src)
        if depth > 3 or not alternatives or len(alternatives) < 2:
            return [src]
        return [x for alt in alternatives for x in spread_alternatives(alt, depth + 1)]
    if depth > 3 or not atoms or atoms[0][1] not in ("", "?", "??") \
            or not atoms[0][0].startswith("(?:"):
        return [src]
    rest = "".join(a + q for a, q in atoms[1:])
    alternatives = regex_alternatives(atoms[0][0][3:-1])
    if not alternatives or len(alternatives) > 64:
        return [src]
    if atoms[0][1]:  # (?:a)?b: ab, b
        alternatives.append("")
    return [x for alt in alternatives for x in spread_alternatives(alt + rest, depth + 1)]


_BOUNDS = re.compile(r"\{(\d*)(,?)(\d*)\}")
_ONE_CHARACTER = re.compile(r"\[.*\]|\\[dDsSwW]|\\[^\w\s]|[^\\.^$|()\[\]{}*+?]", re.DOTALL)


def unroll_first_atom(src: str, depth: int = 0) -> list[str]:
    """Regexes that together match where `src` does (not necessarily as far), each starting
    with an atom of one character without a quantifier where `src` starts with a quantified
    one: "x{2}y" becomes "xx{1,1}y", "x*y" becomes "xx{0,}y" and "y". (The regex engine
    skips an alternative by its first character only when that is a plain literal or class.)"""
    atoms = regex_atoms(src)
    if not atoms or depth > 3:
        return [src]
    atom, quantifier = atoms[0]
    lazy = "?" if len(quantifier) > 1 and quantifier.endswith("?") else ""
    base = quantifier.removesuffix(lazy)
    if base == "*":
        low, high = 0, ""
    elif base == "+":
        low, high = 1, ""
    elif base == "?":
        low, high = 0, "1"
    else:
        bounds = _BOUNDS.fullmatch(base)
        if bounds is None:  # no quantifier, or a possessive one
            return [src]
        low = int(bounds.group(1) or 0)
        high = bounds.group(3) if bounds.group(2) else bounds.group(1)
    if not _ONE_CHARACTER.fullmatch(atom) or (high and int(high) < max(low, 1)):
        return [src]
    rest = "".join(a + q for a, q in atoms[1:])
    # The atom once, then as often again as the quantifier allows after that.
    again = "" if high == "1" else f"{atom}{{{max(low - 1, 0)},{int(high) - 1 if high else ''}}}"
    unrolled = [atom + again + (lazy if again else "") + rest]
    if low == 0:  # or without the atom at all
        unrolled += unroll_first_atom(rest, depth + 1) if rest else [""]
    return unrolled


# The characters that an ASCII letter matches under re.IGNORECASE are ASCII letters and
# these four (the re module's documentation names them).
_CASE_CANDIDATES = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\u0130\u0131\u017f\u212a"


def first_letter_chars(src: str) -> tuple[str | None, str]:
    """(the characters that the letter `src` starts with matches under re.IGNORECASE, the
    rest), or (None, src)."""
    atoms = regex_atoms(src)
    if not atoms or atoms[0][1] or not re.fullmatch(r"[A-Za-z]|\[[A-Za-z]+\]", atoms[0][0]):
        return None, src
    chars = "".join(c for c in _CASE_CANDIDATES if re.fullmatch(atoms[0][0], c, re.IGNORECASE))
    return chars, "".join(a + q for a, q in atoms[1:])


def stays_on_line(src: str) -> bool:
    """Whether a regex can neither match a line break nor look across one."""
    return not any(token in src for token in
                   ("\n", "\\s", "\\W", "\\D", "\\n", "\\x0", "\\A", "\\Z", "[^", "(?s",
                    "(?<"))
