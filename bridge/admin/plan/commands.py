"""``bridge plan check|apply``: reading the files, running against the bridge, exit codes
(0 all well; 1 findings, a refused step or the bridge unreachable; 2 a broken plan or
config)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from bridge.admin.plan import EXIT_FAILED, EXIT_INVALID, apply, check
from bridge.admin.plan.client import ApiClient, ApiError, NotConfigured, Unreachable
from bridge.admin.plan.schema import Context, Plan, PlanError, load
from bridge.config import Config, load_config


def _prepare(config_path: str, plan_path: str) -> tuple[Config, Context, Plan] | int:
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
        return EXIT_INVALID
    return config, context, plan


def _run(work: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(work)
    except Unreachable as exc:
        print(f"bridge: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ApiError as exc:
        print(f"bridge: error: the bridge refused: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _client(config: Config, config_path: str) -> ApiClient | int:
    try:
        client = ApiClient(config)
    except NotConfigured as exc:
        print(f"bridge: config error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    client.run_hint = f"is the bridge running? `bridge run -c {config_path}`"
    return client


def run_check(config_path: str, plan_path: str) -> int:
    prepared = _prepare(config_path, plan_path)
    if isinstance(prepared, int):
        return prepared
    config, _, plan = prepared
    client = _client(config, config_path)
    if isinstance(client, int):
        return client

    async def work() -> int:
        async with client:
            return await check.check(client, plan, config.homeserver.domain)

    return _run(work())


def run_apply(config_path: str, plan_path: str, *, dry_run: bool, prune: bool) -> int:
    prepared = _prepare(config_path, plan_path)
    if isinstance(prepared, int):
        return prepared
    config, context, plan = prepared
    client = _client(config, config_path)
    if isinstance(client, int):
        return client

    async def work() -> int:
        async with client:
            return await apply.apply(client, plan, context, config.homeserver.domain,
                                     dry_run=dry_run, prune=prune)

    return _run(work())
