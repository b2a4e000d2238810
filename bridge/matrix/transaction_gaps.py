"""Which numbered transactions this process has seen, to notice one the homeserver held back.

Synapse numbers an appservice's transactions and sends them one at a time. After the bridge
was unreachable, a recoverer re-sends the stored ones oldest first and then marks the
appservice up; a transaction created between the recoverer's last look and that mark is
stored but not sent, and the newer ones go out straight away (synapse/appservice/
scheduler.py, ``_Recoverer.retry`` and ``_TransactionController.send``). It stays held
until the next failure starts a recoverer. So when N arrives and N-1 was never seen, the
bridge answers N with 503 once: Synapse starts a recoverer, which sends N-1 first, then N
(and a ping from the bridge a moment later makes it start at once, not after 2 s).

The check is bounded, because a gap may be permanent: a sequence value consumed without a
transaction, or another appservice on the homeserver taking numbers from the same sequence
(Synapse has one for all of them; the double-puppet registration, whose URL is null, takes
one for every event it is interested in). A given N is refused at most once per process;
and once a refused N comes back without N-1, the IDs are not this bridge's alone, so the
process stops checking until it has seen a long run of consecutive IDs again.
"""

from __future__ import annotations

from collections import deque
from typing import Any

# How many recent IDs the process remembers: far more than can arrive between a
# transaction and the next (Synapse sends one at a time).
REMEMBERED = 4096
# How far back a gap must have a handled number before it: a gap is one only in numbers the
# bridge was following, not at its first contact with a homeserver or with a new database
# (then nothing before N is known). A few held transactions in a row are still seen.
FOLLOWED_BEFORE = 16
# Consecutive IDs after which a process that stopped checking (a permanent gap) checks again:
# long enough that a homeserver sharing its sequence with another busy appservice does not
# get there, so it is not refused once per run.
CONSECUTIVE_TO_RESUME = 1000


def transaction_number(txn_id: str) -> int | None:
    """The number of a decimal transaction ID (Synapse's); None for any other form, which
    is never checked."""
    if txn_id.isascii() and txn_id.isdecimal() and len(txn_id) <= 18:
        return int(txn_id)
    return None


def transaction_field(body: dict[str, Any], name: str, unstable_prefix: str) -> Any:
    """A transaction field under its stable name or Synapse's unstable one."""
    if name in body:
        return body[name]
    return body.get(f"{unstable_prefix}.{name}")


class _Recent:
    """A set of at most ``size`` numbers that forgets the oldest added first."""

    def __init__(self, size: int) -> None:
        self._members: set[int] = set()
        self._order: deque[int] = deque()
        self._size = size

    def __contains__(self, number: int) -> bool:
        return number in self._members

    def __bool__(self) -> bool:
        return bool(self._members)

    def add(self, number: int) -> None:
        if number in self._members:
            return
        self._members.add(number)
        self._order.append(number)
        if len(self._order) > self._size:
            self._members.discard(self._order.popleft())


class TransactionGaps:
    """What one process knows about the transaction numbers: those it handled, those it
    refused once, and whether it still checks."""

    def __init__(self, checking: bool = True) -> None:
        self.checking = checking
        self._seen = _Recent(REMEMBERED)
        self._refused: dict[int, bool] = {}
        self._refused_order: deque[int] = deque()
        self._consecutive = 0

    def seen(self, number: int) -> bool:
        return number in self._seen

    def handled(self, number: int) -> None:
        """N was acknowledged (stored, a repeat, or needing nothing)."""
        if number - 1 in self._seen:
            self._consecutive += 1
            if not self.checking and self._consecutive >= CONSECUTIVE_TO_RESUME:
                self.checking = True
        else:
            self._consecutive = 0
        self._seen.add(number)

    def needs_look(self, number: int) -> bool:
        """Whether N's predecessor must be looked for (in memory, then in the database)
        before N is handled. N=1 never: Synapse on SQLite numbers from 1 again after a
        restart."""
        return (self.checking and number > 1 and number not in self._refused
                and number - 1 not in self._seen)

    @staticmethod
    def numbers_before(number: int) -> list[int]:
        """N-1 and the numbers before it that show whether the bridge followed them."""
        return list(range(max(1, number - 1 - FOLLOWED_BEFORE), number))

    @staticmethod
    def is_gap(number: int, handled: set[int]) -> bool:
        """N-1 is missing among numbers the bridge was following (``handled``: those of
        :meth:`numbers_before` that were handled, here or by another process)."""
        return number - 1 not in handled and bool(handled)

    def refuse(self, number: int) -> None:
        """N is answered 503 this once. Whether the process had seen other IDs is kept: a
        gap found by a process that has just started, against the database only, may be
        a transaction that needed nothing (not recorded), not proof of a foreign sequence."""
        self._refused[number] = bool(self._seen)
        self._refused_order.append(number)
        if len(self._refused_order) > REMEMBERED:
            self._refused.pop(self._refused_order.popleft(), None)

    def came_back(self, number: int, predecessor_seen: bool) -> bool:
        """N, refused before, is here again. True when that proves the gap permanent while
        the process had been watching the numbers: it stops checking then."""
        watched = self._refused.get(number)
        if predecessor_seen or not watched:
            return False
        self.checking = False
        self._consecutive = 0
        return True

    def was_refused(self, number: int) -> bool:
        return number in self._refused
