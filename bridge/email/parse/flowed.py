"""`unflow`: a format=flowed text/plain body (RFC 3676, DelSp=yes too) with its soft line breaks
joined again, quote depth by quote depth, so that paragraphs are not broken at the sender's
line length.
"""

from __future__ import annotations


def unflow(text: str, delsp: bool = False) -> str:
    """Join the soft line breaks of a format=flowed body (RFC 3676, including DelSp=yes)."""
    out: list[str] = []
    current: str | None = None
    current_depth = 0

    def emit(depth: int, line: str) -> None:
        out.append((">" * depth + " " + line) if depth else line)

    for raw_line in text.replace("\r\n", "\n").split("\n"):
        depth = len(raw_line) - len(raw_line.lstrip(">"))
        content = raw_line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        is_signature = content == "-- "
        flowed = content.endswith(" ") and not is_signature
        if flowed and delsp:
            content = content[:-1]
        if current is not None and depth != current_depth:
            emit(current_depth, current)  # a flowed line must not join across quote depths
            current = None
        current = content if current is None else current + content
        current_depth = depth
        if not flowed:
            emit(current_depth, current)
            current = None
    if current is not None:
        emit(current_depth, current)
    return "\n".join(out)
