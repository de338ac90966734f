"""``turret`` command line: argument parsing, logging, exit codes."""

from __future__ import annotations

import argparse
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


async def _serve(target: object, spec: str, shutdown_timeout: float | None) -> None:
    async with open_monitor(target, spec) as monitor:
        if shutdown_timeout is not None:
            monitor.shutdown_timeout(shutdown_timeout)
        await monitor.run_with_signal(task_status=_Ready(spec))
    log.info("turret worker %s: shut down cleanly", spec)


def _worker(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        target = load_target(args.target, app_dir=os.path.abspath(args.app_dir))
        trio.run(_serve, target, args.target, args.shutdown_timeout)
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
    parser.print_help(sys.stderr)
    return 2
