"""``turret`` command line: argument parsing, logging, exit codes."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

import trio

from ..core._monitor import MonitorError, MonitorHandle
from ._load import TargetError, load_target, open_monitor

__all__ = ["main"]

log = logging.getLogger("turret.cli")

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turret", description="turret: trio-native background task workers."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    worker = commands.add_parser(
        "worker",
        help="run workers until SIGTERM/SIGINT",
        description=(
            "Run a Monitor, a Worker, or what a callable returns (plain, async, or an async "
            "context manager yielding one). SIGTERM or SIGINT shuts down gracefully; a second "
            "signal forces it. Exit code 0 after a graceful shutdown, 1 after a failure, 2 for "
            "a bad target."
        ),
    )
    db = commands.add_parser(
        "db",
        help="manage a PostgreSQL backend's schema",
        description="Create or upgrade turret's PostgreSQL schema (needs turret[postgres]).",
    )
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    migrate = db_commands.add_parser(
        "migrate", help="apply pending migrations (safe to run from many processes at once)"
    )
    migrate.add_argument(
        "--dsn",
        default=None,
        help="PostgreSQL DSN (default: the TURRET_POSTGRES_URL environment variable)",
    )
    migrate.add_argument("--schema", default="turret", help="schema name (default: turret)")
    worker.add_argument("target", metavar="MODULE:ATTR", help="e.g. myapp.tasks:monitor")
    worker.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=_LEVELS,
        help="stdlib logging level (default INFO)",
    )
    worker.add_argument(
        "--app-dir",
        default=".",
        help="directory put first on sys.path to import MODULE (default: the current one)",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="override the Monitor's shutdown timeout",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on PORT (needs turret[metrics]; e.g. 9464)",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of the metrics endpoint (default 127.0.0.1; 0.0.0.0 for all)",
    )
    return parser


class _Ready:
    """``task_status`` for ``run_with_signal``: logs the readiness line."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def started(self, value: MonitorHandle | None = None) -> None:
        names = ", ".join(value.statuses()) if value is not None else ""
        log.info(
            "turret worker %s: running [%s] (pid %d); SIGTERM or SIGINT stops gracefully",
            self.spec,
            names,
            os.getpid(),
        )


async def _serve(
    target: object,
    spec: str,
    shutdown_timeout: float | None,
    metrics: tuple[str, int] | None = None,
) -> None:
    async with open_monitor(target, spec) as monitor:
        if shutdown_timeout is not None:
            monitor.shutdown_timeout(shutdown_timeout)
        if metrics is not None:
            monitor.serve_metrics(*metrics)
        await monitor.run_with_signal(task_status=_Ready(spec))
    log.info("turret worker %s: shut down cleanly", spec)


def _freeze_startup_objects() -> None:
    """Move what exists once the app is imported (modules, classes, the app's globals,
    ~40k objects with PostgreSQL's driver) out of the cyclic collector's way: they live
    as long as the process, yet every full collection walked them, a 20-40 ms pause of
    every worker in the process. Garbage made so far is collected first, so nothing
    unreachable is frozen (docs/operations.md, "Garbage collection pauses")."""
    gc.collect()
    gc.freeze()


def _worker(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        target = load_target(args.target, app_dir=os.path.abspath(args.app_dir))
        _freeze_startup_objects()
        metrics = None if args.metrics_port is None else (args.metrics_host, args.metrics_port)
        trio.run(_serve, target, args.target, args.shutdown_timeout, metrics)
    except TargetError as exc:
        print(f"turret worker: error: {exc}", file=sys.stderr)
        return 2
    except MonitorError as exc:
        log.error("turret worker %s: %s", args.target, exc)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        log.exception("turret worker %s: crashed", args.target)
        return 1
    return 0


def _db_migrate(args: argparse.Namespace) -> int:
    try:
        from ..backends import PostgresBackend, redact_dsn
    except ImportError as exc:
        print(f"turret db migrate: error: {exc}; install turret[postgres]", file=sys.stderr)
        return 2
    dsn = args.dsn or os.environ.get("TURRET_POSTGRES_URL")
    if not dsn:
        print(
            "turret db migrate: error: no DSN; pass --dsn or set TURRET_POSTGRES_URL",
            file=sys.stderr,
        )
        return 2

    async def run() -> int:
        # Opening with migrate=True applies pending migrations under an advisory lock.
        async with PostgresBackend(dsn, schema=args.schema, migrate=True) as backend:
            version = backend.statistics().schema_version
        return version

    try:
        version = trio.run(run)
    except Exception as exc:  # the message never carries the password (redact_dsn)
        print(f"turret db migrate: error on {redact_dsn(dsn)}: {exc}", file=sys.stderr)
        return 1
    print(f"schema {args.schema!r} on {redact_dsn(dsn)} is at version {version}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``turret`` console script; returns the exit code.

    Example::

        raise SystemExit(main(["worker", "myapp.tasks:monitor", "--log-level", "DEBUG"]))
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

        print(f"turret {__version__}")
        return 0
    if args.command == "worker":
        return _worker(args)
    if args.command == "db":
        return _db_migrate(args)
    parser.print_help(sys.stderr)
    return 2
