"""The bookkeeping behind the transaction gap check (bridge/matrix/transaction_gaps.py):
bounded memory, once per number, and when the check stops and starts again."""

from __future__ import annotations

from bridge.matrix.transaction_gaps import (
    CONSECUTIVE_TO_RESUME,
    FOLLOWED_BEFORE,
    REMEMBERED,
    TransactionGaps,
    transaction_number,
)


def test_only_decimal_ids_are_numbers() -> None:
    assert transaction_number("411") == 411
    assert transaction_number("txn-411") is None
    assert transaction_number("411a") is None
    assert transaction_number("٤١١") is None  # decimal digits, but not ASCII ones
    assert transaction_number("9" * 40) is None
    assert transaction_number("") is None


def test_a_gap_is_one_only_among_numbers_the_bridge_followed() -> None:
    gaps = TransactionGaps()
    assert gaps.numbers_before(30) == list(range(30 - 1 - FOLLOWED_BEFORE, 30))
    assert gaps.numbers_before(3) == [1, 2]
    assert gaps.is_gap(30, {27, 28})
    assert not gaps.is_gap(30, {29})
    assert not gaps.is_gap(30, set())  # a new database, or another homeserver's numbers


def test_a_number_is_refused_at_most_once_and_one_never() -> None:
    gaps = TransactionGaps()
    gaps.handled(5)
    assert gaps.needs_look(7)
    gaps.refuse(7)
    assert not gaps.needs_look(7) and gaps.was_refused(7)
    assert not gaps.needs_look(1)
    assert not gaps.needs_look(6)  # 5 was handled


def test_a_gap_that_proves_permanent_stops_the_check_until_numbers_follow_again() -> None:
    gaps = TransactionGaps()
    gaps.handled(5)
    gaps.refuse(7)
    assert gaps.came_back(7, predecessor_seen=False)
    assert not gaps.checking
    gaps.handled(7)
    for number in range(8, 8 + CONSECUTIVE_TO_RESUME - 1):
        gaps.handled(number)
        assert not gaps.checking
    gaps.handled(8 + CONSECUTIVE_TO_RESUME - 1)
    assert gaps.checking


def test_the_race_held_transaction_arriving_is_no_proof_of_a_permanent_gap() -> None:
    gaps = TransactionGaps()
    gaps.handled(5)
    gaps.refuse(7)
    gaps.handled(6)
    assert not gaps.came_back(7, predecessor_seen=True)
    assert gaps.checking


def test_a_refusal_before_anything_was_seen_here_proves_nothing() -> None:
    """Just started: the number before may have needed nothing and not been recorded."""
    gaps = TransactionGaps()
    gaps.refuse(7)
    assert not gaps.came_back(7, predecessor_seen=False)
    assert gaps.checking


def test_memory_is_bounded() -> None:
    gaps = TransactionGaps()
    for number in range(1, 3 * REMEMBERED):
        gaps.handled(number)
        gaps.refuse(number + 10 * REMEMBERED)
    assert gaps.seen(3 * REMEMBERED - 1) and not gaps.seen(1)
    assert gaps.was_refused(13 * REMEMBERED - 1) and not gaps.was_refused(1 + 10 * REMEMBERED)
