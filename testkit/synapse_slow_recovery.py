"""A Synapse module for tests: widens the window of Synapse's appservice recovery race.

Synapse's recoverer re-sends the stored transactions of an appservice that was down, finds
none left and calls ``_TransactionController.on_recovered``, which marks the appservice up.
A transaction created in between is stored but not sent (the sender still read "down"),
and the newer ones go straight out (synapse/appservice/scheduler.py). The window is a few
milliseconds; this module waits ``delay_seconds`` (2 by default) before the "up" is written,
so that a test sending messages during a recovery hits it. It writes a line to Synapse's
log when the wait starts and when it ends.

Load it with ``SynapseServer(..., extra_config={"modules": [{"module":
"testkit.synapse_slow_recovery.SlowRecovery", "config": {"delay_seconds": 2}}]},
python_path=[<the repository>])``.
"""

from __future__ import annotations

import logging
from typing import Any

from synapse.appservice import scheduler
from synapse.module_api import ModuleApi
from synapse.util.duration import Duration

log = logging.getLogger(__name__)

_ORIGINAL = scheduler._TransactionController.on_recovered


class SlowRecovery:
    def __init__(self, config: dict[str, Any], api: ModuleApi) -> None:
        delay = float(config.get("delay_seconds", 2))

        async def on_recovered(controller: scheduler._TransactionController,
                               recoverer: scheduler._Recoverer) -> None:
            log.info("slow recovery: waiting %.1f s before marking %s up", delay,
                     recoverer.service.id)
            await controller.clock.sleep(Duration(seconds=delay))
            log.info("slow recovery: marking %s up now", recoverer.service.id)
            await _ORIGINAL(controller, recoverer)

        # The recoverer is given the controller's bound method when it is created, so the
        # class attribute is what every later recovery uses.
        scheduler._TransactionController.on_recovered = on_recovered  # type: ignore[method-assign,assignment]

    @staticmethod
    def parse_config(config: dict[str, Any] | None) -> dict[str, Any]:
        return dict(config or {})
