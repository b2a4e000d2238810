"""Test tiers, assigned by what a test needs, so that no test file has to say it:

- ``e2e``: a real Synapse (the ``homeserver`` fixture, or any fixture built on it);
- ``integration``: a database (``database_url``, ``sqlite_url``) or a stand-in server the
  test talks to over a socket (the Slack simulator, the SMTP sink);
- ``unit``: none of these: no Synapse, no PostgreSQL, no network.

A tier marker written on a test (or module, via ``pytestmark``) wins, for a test that starts
such a server or a process itself; it may raise a test's tier, not lower it.
``make test-fast`` runs ``-m unit``; ``make test`` runs all tiers.

A run that selects only unit tests refuses network sockets, so a test that reaches for the
network without a fixture saying so fails by name instead of quietly slowing the fast tier.
Mixed runs leave sockets alone: a unit test there may share the event loop with the
background tasks of an integration fixture.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

TIERS = ("unit", "integration", "e2e")
E2E_FIXTURES = frozenset({"homeserver"})
INTEGRATION_FIXTURES = frozenset({"database_url", "sqlite_url", "slack_sim", "sink"})

_UNIT_ONLY_RUN = pytest.StashKey[bool]()


class NetworkInUnitTest(AssertionError):
    """A test running as ``unit`` opened a network socket."""


def tier_by_fixtures(fixturenames: Iterable[str]) -> str:
    # fixturenames is the closure: a test using `bridge` also lists `homeserver`.
    names = set(fixturenames)
    if names & E2E_FIXTURES:
        return "e2e"
    if names & INTEGRATION_FIXTURES:
        return "integration"
    return "unit"


def _written_tier(item: pytest.Item) -> str | None:
    # iter_markers yields the closest first: a test's own marker before its module's.
    return next((mark.name for mark in item.iter_markers() if mark.name in TIERS), None)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = tier_by_fixtures(getattr(item, "fixturenames", []))
        written = _written_tier(item)
        if written is None:
            item.add_marker(needs)
        elif TIERS.index(written) < TIERS.index(needs):
            # A marker may only move a test up (it starts a server itself), never hide a
            # Synapse or a database from the tier that is meant to run without them.
            raise pytest.UsageError(
                f"{item.nodeid} is marked {written} but uses fixtures of the {needs} tier")


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_UNIT_ONLY_RUN] = bool(session.items) and all(
        item.get_closest_marker("unit") is not None for item in session.items)


def _refusing(original: Callable[..., Any], nodeid: str) -> Callable[..., Any]:
    def refuse(sock: socket.socket, address: Any, *args: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise NetworkInUnitTest(
                f"{nodeid} runs as a unit test but opened a network socket to {address!r}; "
                "use the fixture that provides the server, or mark it integration")
        return original(sock, address, *args)
    return refuse


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # A hook, not an autouse fixture: a fixture asked for by every test would change the
    # order in which the others are set up and torn down, in every tier.
    if not item.config.stash.get(_UNIT_ONLY_RUN, False):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        for name in ("connect", "connect_ex", "bind", "sendto"):
            patch.setattr(socket.socket, name,
                          _refusing(getattr(socket.socket, name), item.nodeid))
        yield
