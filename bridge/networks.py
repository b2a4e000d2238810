"""The registry of networks: the one place from which the core learns which networks exist.

A network is one folder (``bridge/<network>/``) with a module that declares a
:class:`Network`: its config section, connector, ``bridge check`` items, tables and
migrations. The folders are listed as entry points of the group ``matrix_hub_bridge.networks``
in pyproject.toml (``Network.position`` orders them); another package can add a
network the same way, and tests add one with :func:`register_network`. The core builds the
config, the connectors, ``bridge check``, the registration, the bot's sentences, the
migrations and the networks' own ``bridge`` sub-commands from this list and never names a
network itself.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp
    from sqlalchemy.ext.asyncio import AsyncSession

    from bridge.checks import CheckResult
    from bridge.cli import CommandGroups
    from bridge.config import Config, NetworkConfig
    from bridge.core.connector import Connector
    from bridge.db.erasure import ErasedPerson
    from bridge.db.retention import StoredData

ENTRY_POINT_GROUP = "matrix_hub_bridge.networks"


@dataclass(frozen=True, slots=True)
class Network:
    """Everything the core needs to know about one network, declared in its folder."""

    #: The config section, the word in commands, lanes and the ``network`` column ("slack").
    name: str
    #: The network as a sentence names it ("Slack"; "email" for mail, a common noun).
    prose_name: str
    #: The pydantic model of its config section (a :class:`bridge.config.NetworkConfig`).
    config_model: type[NetworkConfig]
    #: Its connector, made from the whole config; imported only when the network is enabled.
    connector: Callable[[Config], Connector]
    #: Its commented section of `bridge generate-config`'s output, with fresh secrets.
    example_config: Callable[[], str]
    #: Its `bridge check` items, run when the network is enabled (an HTTP session to use).
    checks: Callable[[aiohttp.ClientSession, Config], Awaitable[list[CheckResult]]] | None = None
    #: Where it comes among the networks (ascending; entry points have no order of their
    #: own): the order of config sections, `bridge check` items and registration namespaces.
    position: int = 100
    #: A word for `help link` on what its `link` command takes beyond the remote ID.
    link_hint: str | None = None
    #: How ``people link``/``unlink`` name one of its identities, after the network's name
    #: (``<workspace>:<user id>``); None if its people cannot be linked.
    person_words: str | None = None
    #: The module with its tables (SQLAlchemy models on ``bridge.db.models.Base``).
    models: str | None = None
    #: Its alembic version location: its migrations, a branch on the core's history.
    migrations: Path | None = None
    #: Adds its own ``bridge`` sub-commands to the command groups it is handed
    #: (``bridge import slack-export``); the core's commands name no network.
    cli: Callable[[CommandGroups], None] | None = None
    #: What each of its tables stores and how long (the retention job, ``bridge
    #: data-report``); every table in ``models`` should be declared.
    stored_data: tuple[StoredData, ...] = ()
    #: ``bridge erase --<name> <erase_words>``: how a person of this network is named there
    #: (``ADDRESS``); None: its people cannot be erased by name.
    erase_words: str | None = None
    #: The remote IDs (as its puppets know them) those words name, from the database; raises
    #: ValueError with a sentence when the words cannot name anyone.
    find_person: Callable[[AsyncSession, Config, str], Awaitable[list[str]]] | None = None
    #: Removes (with ``dry_run``: counts) what its own tables hold about the person; rows
    #: per table.
    erase_person: Callable[[AsyncSession, ErasedPerson, bool],
                           Awaitable[dict[str, int]]] | None = None


_extra: list[Network] = []


@functools.cache
def _installed() -> tuple[Network, ...]:
    found = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        network = entry.load()
        if not isinstance(network, Network):
            raise TypeError(f"entry point {entry.value} ({ENTRY_POINT_GROUP}) is not a Network")
        found.append(network)
    return tuple(sorted(found, key=lambda n: (n.position, n.name)))


def networks() -> tuple[Network, ...]:
    """Every known network: the installed ones by position, then any registered."""
    return _installed() + tuple(_extra)


def network(name: str) -> Network:
    for candidate in networks():
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def register_network(network: Network) -> None:
    """Add a network that is not installed as an entry point (a test's, a plug-in's)."""
    if any(known.name == network.name for known in networks()):
        raise ValueError(f"a network named {network.name!r} is already registered")
    _extra.append(network)


def unregister_network(name: str) -> None:
    _extra[:] = [known for known in _extra if known.name != name]


@contextmanager
def registered(network: Network) -> Iterator[Network]:
    """The network is known inside the block only."""
    register_network(network)
    try:
        yield network
    finally:
        unregister_network(network.name)


def load_models() -> None:
    """Import every network's tables, so that ``Base.metadata`` describes the whole schema."""
    for known in networks():
        if known.models:
            importlib.import_module(known.models)


def migration_locations() -> list[Path]:
    return [known.migrations for known in networks() if known.migrations is not None]
