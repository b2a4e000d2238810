"""The ``test`` section of the config."""

from __future__ import annotations

from bridge.config import NetworkConfig


class RecordingConfig(NetworkConfig):
    puppet_prefix: str = "test_"
    address: str = "memory://recording"
