"""The ``bridge`` command.

Exit codes: 0 success; 2 invalid configuration or usage (one line naming the key, no
traceback); 1 any other failure, with a clear message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bridge import __version__
from bridge.config import Config, ConfigError, load_config
from bridge.logs import setup_logging
from bridge.networks import networks
from bridge.registration import (
    build_double_puppet_registration,
    build_registration,
    double_puppet_registration_path,
)

EXIT_FAILURE = 1
EXIT_USAGE = 2


class Failure(Exception):
    """A clear, expected failure: printed as is, exit code 1."""


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read: it holds the appservice tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def example_config_text() -> str:
    template = resources.files("bridge").joinpath("example-config.yaml").read_text("utf-8")
    core = (template.replace("@AS_TOKEN@", secrets.token_urlsafe(48))
            .replace("@HS_TOKEN@", secrets.token_urlsafe(48))
            .replace("@PROVISIONING_SECRET@", secrets.token_urlsafe(32))
            .replace("@DOUBLE_PUPPET_TOKEN@", secrets.token_urlsafe(48)))
    # Then each network's own section, in the order of the registry.
    return core.rstrip("\n") + "\n" + "".join("\n" + network.example_config()
                                              for network in networks())


def cmd_generate_config(args: argparse.Namespace) -> int:
    path = Path(args.output)
    if path.exists() and not args.force:
        raise Failure(f"{path} already exists; pass --force to overwrite it")
    _write_private(path, example_config_text())
    print(f"Wrote {path}. Edit homeserver.*, appservice.address, appservice.port and "
          "bridge.admins, then run "
          f"`bridge generate-registration -c {path}`.")
    return 0


def cmd_generate_registration(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = Path(args.registration)
    _write_private(path, yaml.safe_dump(build_registration(config), sort_keys=False))
    if not config.double_puppet.enabled:
        print(f"Wrote {path}. Add it to your homeserver's app_service_config_files and "
              "restart the homeserver.")
        return 0
    second = double_puppet_registration_path(path)
    _write_private(second, yaml.safe_dump(build_double_puppet_registration(config),
                                          sort_keys=False))
    print(f"Wrote {path} and, for double puppeting, {second}. Add both to your homeserver's "
          "app_service_config_files and restart the homeserver.")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.format, config.secrets())

    async def upgrade() -> tuple[str | None, str | None]:
        from bridge.db.engine import Database

        db = Database(config.database.url)
        try:
            return await db.upgrade()
        finally:
            await db.close()

    before, after = _run_db(upgrade, config)
    if before == after:
        print(f"Database is up to date (revision {after}).")
    else:
        print(f"Database upgraded from {before or 'empty'} to revision {after}.")
    return 0


def _run_db(func: Callable[[], Coroutine[Any, Any, Any]], config: Config) -> Any:
    try:
        return asyncio.run(func())
    except (OSError, ConnectionError) as exc:
        raise Failure(f"cannot reach the database ({_safe_db(config)}): {exc}") from None
    except Exception as exc:
        if exc.__class__.__module__.startswith(("sqlalchemy", "asyncpg", "sqlite3")):
            raise Failure(f"database error ({_safe_db(config)}): "
                          f"{str(exc).splitlines()[0]}") from None
        raise


def _safe_db(config: Config) -> str:
    """The database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(config.database.url).render_as_string(hide_password=True)


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.format, config.secrets())
    from bridge.app import Bridge, StartError

    bridge = Bridge(config)
    bridge.migrate_in_subprocess = True  # alembic stays out of the long-running process

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await bridge.run_until_stopped(stop)

    try:
        asyncio.run(main())
    except StartError as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"cannot start: {exc}") from None
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from bridge.checks import run_checks

    results = asyncio.run(run_checks(config, config_path=args.config))
    for result in results:
        print(f"[{result.verdict:>4}] {result.name}: {result.detail}")
    failed = [r for r in results if not r.ok]
    warned = sum(1 for r in results if r.warning)
    also = f" ({warned} warning(s))" if warned else ""
    print(f"All checks passed{also}." if not failed else f"{len(failed)} check(s) failed{also}.")
    return 0 if not failed else EXIT_FAILURE


def cmd_plan_check(args: argparse.Namespace) -> int:
    from bridge.admin.plan.commands import run_check

    return run_check(args.config, args.plan)


def cmd_plan_apply(args: argparse.Namespace) -> int:
    from bridge.admin.plan.commands import run_apply

    return run_apply(args.config, args.plan, dry_run=args.dry_run, prune=args.prune)


class CommandGroups:
    """Where a network adds its own sub-commands (see ``Network.cli``): ``bridge <group>
    <command>``, the group made on first use."""

    #: What each group is for, as ``bridge --help`` says it.
    HELP = {"import": "bring a network's history into rooms from its export files"}

    def __init__(self, sub: Any) -> None:
        self._sub = sub
        self._groups: dict[str, Any] = {}

    def group(self, name: str) -> Any:
        """The sub-parsers of ``bridge <name>``: ``add_parser`` a command there."""
        if name not in self._groups:
            parser = self._sub.add_parser(name, help=self.HELP.get(name, name))
            self._groups[name] = parser.add_subparsers(dest=f"{name}_command", required=True,
                                                       parser_class=_Parser)
        return self._groups[name]


def read_database(config: Config, read: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``read(db)`` on the configured database as it is (see :func:`_read_db`), for a
    network's own commands: a database behind the code is refused, naming the fix."""
    return _read_db(config, read)


def _read_db(config: Config, read: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``read(db)`` on the configured database, as it is: the bridge need not run, and
    nothing is migrated (a database behind the code is refused, naming the fix)."""

    from sqlalchemy.engine import make_url

    url = make_url(config.database.url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).exists():
        # Opening it would create an empty file where the operator expects their database.
        raise Failure(f"there is no database at {url.database} (database.url); is this the "
                      "bridge's config?")

    async def run() -> Any:
        from bridge.db.engine import Database, current_revisions, describe, head_revisions

        db = Database(config.database.url)
        try:
            current = await current_revisions(db.engine)
            if current != head_revisions():
                raise Failure(f"the database ({_safe_db(config)}) is at revision "
                              f"{describe(current) or 'none (empty)'}, this bridge expects "
                              f"{describe(head_revisions())}: run `bridge db upgrade` with "
                              "this config first")
            return await read(db)
        finally:
            await db.close()

    return _run_db(run, config)


def cmd_report(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from bridge.admin.report import build_report, render

    report = _read_db(config, lambda db: build_report(db, days=args.days))
    sys.stdout.write(render(report, args.format))
    return 0


def cmd_data_report(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from bridge.admin.data_report import build, render

    sys.stdout.write(render(_read_db(config, lambda db: build(db, config.retention))))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from bridge.admin.erase import EraseError, erase, render
    from bridge.matrix.puppet_erase import MatrixError

    chosen = [(known, getattr(args, f"erase_{known.name}")) for known in networks()
              if known.erase_words and getattr(args, f"erase_{known.name}", None)]
    known, words = chosen[0]  # (argparse requires exactly one)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        erasure = _read_db(config, lambda db: erase(config, db, known, words,
                                                    redact=args.redact, dry_run=args.dry_run,
                                                    progress=progress))
    except EraseError as exc:
        raise Failure(str(exc)) from None
    except MatrixError as exc:
        raise Failure(f"{exc}; what was done so far stays done: run the command again "
                      "to finish") from None
    sys.stdout.write(render(erasure))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from bridge.admin import audit

    async def read(db: Any) -> list[audit.Entry]:
        async with db.sessions() as session:
            return await audit.entries(session, since=args.since, room_id=args.room)

    entries = _read_db(config, read)
    if args.format == "json":
        import json

        # The document GET /_bridge/api/v1/audit answers with.
        print(json.dumps({"entries": [entry.as_json() for entry in entries]}, indent=2,
                         ensure_ascii=False))
        return 0
    for entry in entries:
        print(audit_line(entry))
    return 0


def audit_line(entry: Any) -> str:
    """One entry as one line: time (UTC), actor, via, room, action, details as key=value."""
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(entry.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    details = " ".join(f"{key}={_detail(value)}" for key, value in sorted(entry.details.items())
                       if value is not None)
    return " ".join(filter(None, (at, entry.actor, entry.via, entry.room_id or "-",
                                  entry.action, details)))


def _detail(value: Any) -> str:
    text = value if isinstance(value, str) else json_dumps_compact(value)
    # Quoted when it would not read as one word (a display name with spaces).
    return json_dumps_compact(text) if not text or any(c.isspace() for c in text) else text


def json_dumps_compact(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def since_time(text: str) -> float:
    """--since: an ISO date (midnight UTC) or time (UTC unless it says otherwise)."""
    from bridge.admin.audit import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def report_days(text: str) -> int:
    from bridge.admin.report import MAX_DAYS

    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of days from 1 to {MAX_DAYS}")
    return days


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like a config error
        self.print_usage(sys.stderr)
        print(f"bridge: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    names = [network.prose_name for network in networks()]
    described = " and ".join(filter(None, (", ".join(names[:-1]), names[-1] if names else "")))
    parser = _Parser(prog="bridge", description=f"Matrix hub bridge for {described}.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("generate-config", help="write a commented example config")
    p.add_argument("-o", "--output", default="config.yaml", help="where (default config.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_generate_config)

    p = sub.add_parser("generate-registration", help="write the homeserver registration file")
    p.add_argument("-c", "--config", default="config.yaml")
    p.add_argument("-r", "--registration", default="registration.yaml")
    p.set_defaults(func=cmd_generate_registration)

    p = sub.add_parser("db", help="database maintenance")
    db_sub = p.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    up = db_sub.add_parser("upgrade", help="apply pending schema migrations")
    up.add_argument("-c", "--config", default="config.yaml")
    up.set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("run", help="run the bridge until SIGINT or SIGTERM")
    p.add_argument("-c", "--config", default="config.yaml")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="verify homeserver, tokens, reachability and database")
    p.add_argument("-c", "--config", default="config.yaml")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("plan", help="check or apply a migration plan (through the running "
                                    "bridge's provisioning API)")
    plan_sub = p.add_subparsers(dest="plan_command", required=True, parser_class=_Parser)
    pc = plan_sub.add_parser("check", help="validate the plan and check it against the live "
                                           "systems; one line per finding")
    pc.add_argument("-c", "--config", default="config.yaml")
    pc.add_argument("plan", metavar="PLAN.yaml")
    pc.set_defaults(func=cmd_plan_check)
    pa = plan_sub.add_parser("apply", help="print the actions the plan needs, then take them")
    pa.add_argument("-c", "--config", default="config.yaml")
    pa.add_argument("plan", metavar="PLAN.yaml")
    pa.add_argument("--dry-run", action="store_true", help="print the actions, take none")
    pa.add_argument("--prune", action="store_true",
                    help="also remove links and subscribers of the plan's rooms that the plan "
                         "does not list")
    pa.set_defaults(func=cmd_plan_apply)

    p = sub.add_parser("report", help="the progress report: messages and people per side, "
                                      "per department and room")
    p.add_argument("-c", "--config", default="config.yaml")
    p.add_argument("--days", type=report_days, default=7,
                   help="the last N UTC days, today included (default 7)")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("audit", help="the audit log of administrative actions")
    p.add_argument("-c", "--config", default="config.yaml")
    p.add_argument("--since", type=since_time, metavar="TIME",
                   help="entries from then on: an ISO date (UTC) or time")
    p.add_argument("--room", metavar="ROOM_ID", help="only this room's entries")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("data-report", help="what the bridge stores, per table: rows, the "
                                           "oldest, and the retention that applies")
    p.add_argument("-c", "--config", default="config.yaml")
    p.set_defaults(func=cmd_data_report)

    p = sub.add_parser("erase", help="remove everything the bridge holds about one person "
                                     "(data-protection request)")
    p.add_argument("-c", "--config", default="config.yaml")
    who = p.add_mutually_exclusive_group(required=True)
    for network in networks():
        if network.erase_words:
            who.add_argument(f"--{network.name}", dest=f"erase_{network.name}",
                             metavar=network.erase_words,
                             help=f"the person's {network.prose_name} identity")
    p.add_argument("--redact", action="store_true",
                   help="also redact the messages the bridge posted for them in Matrix")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be removed, change nothing")
    p.set_defaults(func=cmd_erase)

    groups = CommandGroups(sub)
    for network in networks():
        if network.cli is not None:
            network.cli(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"bridge: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"bridge: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Unexpected, but still one clear line rather than a traceback for the operator.
        print(f"bridge: error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
