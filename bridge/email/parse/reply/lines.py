"""How the reply strategies see a line (each is stripped and capped at `MAX_LINE` first)."""

from __future__ import annotations

MAX_LINE = 400  # longer lines cannot be attribution lines; keeps the regexes linear


def is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")
