"""What follows an identity link change, after its transaction has committed.

:func:`after_change` is called once per action (link, unlink, a whole API ``PUT`` or
``DELETE``) with the identities it linked and unlinked, never for an action that changed
nothing. Double puppeting hooks in here (retire the person's puppet, restore it on unlink).
The change is already durable when this runs: a failure here is logged, never undoes it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bridge.db.people import Identity

if TYPE_CHECKING:
    from bridge.core.hub import Hub

log = logging.getLogger("bridge.people")


@dataclass(frozen=True, slots=True)
class Change:
    """What one action did: links made and links removed (possibly of several people)."""

    linked: list[Identity] = field(default_factory=list)
    unlinked: list[Identity] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.linked or self.unlinked)


#: Called after every committed change, in order. Add a listener with :func:`listen`.
Listener = Callable[["Hub", Change], Awaitable[None]]
_listeners: list[Listener] = []


def listen(listener: Listener) -> None:
    """Run ``listener`` after every committed identity link change (idempotent)."""
    if listener not in _listeners:
        _listeners.append(listener)


def unlisten(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


async def after_change(hub: Hub, change: Change) -> None:
    """Tell whoever follows identity links about a committed change."""
    if not change:
        return
    for listener in list(_listeners):
        try:
            await listener(hub, change)
        except Exception:  # the link is made; what follows it is retried by its owner
            log.exception("after an identity link change, %r failed", listener)
