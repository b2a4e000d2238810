"""The tiers of tests/tiers.py: which fixtures put a test in which tier, and the unit tier's
refusal of network sockets."""

from __future__ import annotations

import socket

import pytest

from tests.tiers import NetworkInUnitTest, _refusing, tier_by_fixtures


@pytest.mark.parametrize(("fixtures", "tier"), [
    ([], "unit"),
    (["tmp_path", "monkeypatch"], "unit"),
    (["tmp_path", "sqlite_url"], "integration"),
    (["database_url"], "integration"),
    (["slack_sim"], "integration"),
    (["sink"], "integration"),
    # A test asking for `bridge` gets the closure: homeserver and database_url too.
    (["bridge", "homeserver", "database_url", "tmp_path"], "e2e"),
])
def test_fixtures_decide_the_tier(fixtures: list[str], tier: str) -> None:
    assert tier_by_fixtures(fixtures) == tier


def test_network_sockets_are_refused_by_name_and_local_ones_are_not() -> None:
    connect = _refusing(socket.socket.connect, "tests/x.py::test_y")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as inet, \
            pytest.raises(NetworkInUnitTest, match=r"tests/x.py::test_y .*mark it integration"):
        connect(inet, ("127.0.0.1", 1))
    # A socket pair (asyncio's self-pipe) is no network: the original call goes through.
    bind = _refusing(socket.socket.bind, "tests/x.py::test_y")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        bind(unix, "")  # the abstract namespace, autobound; nothing on disk
        assert unix.getsockname()
