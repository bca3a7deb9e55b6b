"""The ``esper`` command: grow a network, train the static baseline, rebuild reports."""

# ruff: noqa: E402  (the start-up signal handlers below come before the slow imports)
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any, NoReturn

_STARTUP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_during_startup(signum: int, frame: FrameType | None) -> None:
    # Ctrl-C or SIGTERM while torch and friends are still importing: one line, no
    # traceback through the import machinery.
    sys.stderr.write("esper: interrupted while starting up\n")
    raise SystemExit(128 + signum)


_previous_handlers: dict[signal.Signals, Any] = {}
try:
    for _signal in _STARTUP_SIGNALS:
        _previous_handlers[_signal] = signal.signal(_signal, _stop_during_startup)
except ValueError:  # imported outside the main thread: signals are not ours to change
    pass

import argparse
from collections.abc import Sequence

from rich.console import Console

from esper import __version__
from esper.cli import compare as compare_cli
from esper.cli import ppo as ppo_cli
from esper.cli import runs
from esper.cli.common import Terminated, first_line, print_error
from esper.config import ConfigError
from esper.data import DataFormatError, DataUnavailableError
from esper.lifecycle import LifecycleError
from esper.registry import UnknownNameError
from esper.run import RunError
from esper.telemetry import SinkError
from esper.training.tasks import TASKS

for _signal, _handler in _previous_handlers.items():
    if _handler is not None:
        signal.signal(_signal, _handler)

__all__ = ["build_parser", "main"]

EXPECTED_ERRORS = (
    ConfigError,
    DataFormatError,
    DataUnavailableError,
    LifecycleError,
    RunError,
    SinkError,
    UnknownNameError,
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def build_parser() -> argparse.ArgumentParser:
    tasks = "\n".join(f"  {name:<14} {spec.help}" for name, spec in TASKS.items())
    parser = _Parser(
        prog="esper",
        description="Morphogenetic training: a host network grows seeds while it trains.",
        epilog=f"tasks:\n{tasks}\n\nrun 'esper COMMAND --help' for each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"esper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs.add_parsers(commands)
    compare_cli.add_parser(commands)
    ppo_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``esper`` command; returns the process exit code.

    0 done; 1 the run had to stop (disk full, persistent fault, a failed compare run); 2
    bad input or a run directory that cannot be used; 130 interrupted (Ctrl-C); 143
    terminated (SIGTERM).
    """
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        previous = None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    try:
        arguments = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(arguments)
        args.argv = arguments
        console = Console()
        if args.command == "report":
            return runs.report_command(args, console)
        if args.command == "compare":
            return compare_cli.compare_command(args, console)
        if args.command == "ppo":
            return ppo_cli.ppo_command(args, console)
        return runs.train_command(args, console)
    except EXPECTED_ERRORS as error:
        # One line that names the fix; no traceback for input the user can correct.
        print_error(f"esper: error: {first_line(error)}")
        return int(getattr(error, "exit_code", 2))
    except OSError as error:  # the machine, not the input: a full disk, a failing device
        where = f" ({error.filename})" if error.filename else ""
        print_error(f"esper: error: {error.strerror or first_line(error)}{where}")
        return 1
    except KeyboardInterrupt as interrupt:  # before or after the run itself
        print_error("esper: interrupted", style="yellow")
        return 143 if isinstance(interrupt, Terminated) else 130
