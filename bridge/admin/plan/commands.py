"""``bridge plan check|apply``: reading the files, running against the bridge, exit codes
(0 all well; 1 findings, a refused step or the bridge unreachable; 2 a broken plan or
config)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from bridge.admin.plan import EXIT_FAILED, EXIT_INVALID, apply, check
from bridge.admin.plan.client import ApiClient, ApiError, NotConfigured, Unreachable
from bridge.admin.plan.schema import Context, Plan, PlanError, load
from bridge.config import Config, load_config


class _Exit(Exception):
    """Stop with this exit code; what went wrong is printed already."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _prepare(config_path: str, plan_path: str) -> tuple[Config, Context, Plan]:
    config = load_config(config_path)
    context = Context.of(config)
    try:
        plan = load(Path(plan_path), context)
    except PlanError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        count = len(exc.problems)
        print(f"bridge: error: {plan_path} is not a valid plan ({count} problem"
              f"{'' if count == 1 else 's'}); nothing was checked or changed", file=sys.stderr)
        raise _Exit(EXIT_INVALID) from None
    return config, context, plan


def _client(config: Config, config_path: str) -> ApiClient:
    try:
        client = ApiClient(config)
    except NotConfigured as exc:
        print(f"bridge: config error: {exc}", file=sys.stderr)
        raise _Exit(EXIT_INVALID) from None
    client.run_hint = f"is the bridge running? `bridge run -c {config_path}`"
    return client


Work = Callable[[ApiClient, Config, Context, Plan], Awaitable[int]]


def _against_bridge(config_path: str, plan_path: str, work: Work) -> int:
    """Read the config and the plan (exit 2 if either is broken), then run ``work`` with a
    client of the running bridge's API (exit 1 if the bridge is away or refuses)."""
    try:
        config, context, plan = _prepare(config_path, plan_path)
        client = _client(config, config_path)
    except _Exit as exc:
        return exc.code

    async def run() -> int:
        async with client:
            return await work(client, config, context, plan)

    try:
        return asyncio.run(run())
    except Unreachable as exc:
        print(f"bridge: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ApiError as exc:
        print(f"bridge: error: the bridge refused: {exc}", file=sys.stderr)
        return EXIT_FAILED


def run_check(config_path: str, plan_path: str) -> int:
    return _against_bridge(config_path, plan_path, lambda client, config, _, plan: check.check(
        client, plan, config.homeserver.domain))


def run_apply(config_path: str, plan_path: str, *, dry_run: bool, prune: bool) -> int:
    return _against_bridge(config_path, plan_path, lambda client, config, context, plan:
                           apply.apply(client, plan, context, config.homeserver.domain,
                                       dry_run=dry_run, prune=prune))
