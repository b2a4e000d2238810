"""What ``bridge run`` keeps imported (issue 15: idle resident memory under 60 MB).

Each library below is imported only by a command other than ``run``, or by ``run`` when
first needed (bench/README.md, "idle_memory.py", says what each costs). This checks that no
import at module level brings one back into every bridge.
"""

from __future__ import annotations

import json
import subprocess
import sys

# What `bridge run` imports with both networks enabled: the CLI, the app and the connectors.
RUN_MODULES = ("bridge.cli", "bridge.app", "bridge.slack.connector", "bridge.email.connector")

NOT_AT_START = {
    "alembic": "migrations run in a child process (python -m bridge.db.migrate)",
    "mako": "alembic's templates",
    "olm": "only with encryption.allow",
    "asyncpg": "only on PostgreSQL",
    "sqlalchemy.dialects.postgresql": "only on PostgreSQL",
    "dkim": "only with email.sender_auth: verify",
    "dns": "dkimpy's, only with email.sender_auth: verify",
    "lxml": "with the first mail or formatted Matrix message to Slack",
    "inscriptis": "with the first mail",
    "nh3": "with the first mail",
    "bridge.email.parse": "with the first mail",
    "bridge.email.compose": "with the first mail out",
    "emoji": "with the first emoji in a Slack message or reaction",
    "bridge.slack.emoji": "with the first emoji in a Slack message or reaction",
    "markdown_it": "with the bot's first reply",
}


def test_bridge_run_imports_at_start_only_what_every_bridge_needs() -> None:
    code = ("import json, sys\n"
            f"for name in {RUN_MODULES!r}: __import__(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    loaded = json.loads(result.stdout)
    found = {prefix: why for prefix, why in NOT_AT_START.items()
             if any(m == prefix or m.startswith(prefix + ".") for m in loaded)}
    assert not found, f"imported by `bridge run` at start, but should be: {found}"
