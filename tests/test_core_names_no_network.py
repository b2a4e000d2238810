"""The core knows networks only through the registry (issue 10): outside the networks' own
folders, the words "slack" and "email" may appear in comments and docstrings that name an
example, never in code, strings or names."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[1] / "bridge"
NETWORK_WORDS = re.compile(r"slack|email", re.IGNORECASE)


def _core_files() -> list[Path]:
    files = sorted(BRIDGE.glob("*.py"))
    for folder in ("core", "db", "matrix", "people"):
        files += sorted((BRIDGE / folder).rglob("*.py"))
    return files


def _documentation_lines(source: str) -> set[int]:
    """Lines of bare string statements: docstrings (of modules, classes, functions)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def network_names_in_code(source: str) -> list[str]:
    docs = _documentation_lines(source)
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            continue
        if token.type == tokenize.STRING and token.start[0] in docs:
            continue
        if NETWORK_WORDS.search(token.string):
            found.append(f"line {token.start[0]}: {token.string[:60]}")
    return found


def test_the_finder_tells_code_from_comments() -> None:
    source = ('"""Slack, email: examples."""\n'
              "# a Slack channel\n"
              "x = 1  # email\n"
              "def f():\n    '''for email'''\n    return 'slack'\n"
              "email_store = None\n")
    assert network_names_in_code(source) == ["line 6: 'slack'", "line 7: email_store"]


def test_core_names_networks_only_in_comments() -> None:
    found = {str(path.relative_to(BRIDGE.parent)): names for path in _core_files()
             if (names := network_names_in_code(path.read_text(encoding="utf-8")))}
    assert found == {}
