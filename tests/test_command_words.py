"""Bot commands take the words their declared usage line says (pure unit tests)."""

from __future__ import annotations

import pytest

from bridge.core.commands import WordCount, word_count


@pytest.mark.parametrize(("arguments", "expected"), [
    ("", WordCount(0, 0)),
    ("[workspace]", WordCount(0, 1)),
    ("<address>", WordCount(1, 1)),
    ("<address> [name...]", WordCount(1, None)),
    ("<network> <remote-id> [workspace]", WordCount(2, 3)),
    ("<network> [<remote-id>]", WordCount(1, 2)),
    ("<id>|all", WordCount(1, 1)),
    ("subscribers|domain <domain>|open", WordCount(1, 2)),
    ("[<command>...]", WordCount(0, None)),
])
def test_the_usage_line_says_how_many_words(arguments: str, expected: WordCount) -> None:
    assert word_count(arguments) == expected


def test_a_count_allows_what_lies_within_it() -> None:
    link = word_count("<network> <remote-id> [workspace]")
    assert [link.allows(n) for n in range(5)] == [False, False, True, True, False]
    subscribe = word_count("<address> [name...]")
    assert not subscribe.allows(0) and subscribe.allows(1) and subscribe.allows(7)
