"""The ``esper`` command: grow a network, train the static baseline, rebuild reports, watch.

Start-up is quick: parsing needs only `esper.cli.parser` (no torch), so ``--help`` and
argument errors answer at once, and the command's heavy imports follow in `main`.
"""

# ruff: noqa: E402  (the start-up settings below come before every other import)
from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

# OpenMP threads that wait for work sleep instead of spinning: a spinning thread steals a
# core from every other process on the machine, and the runtime reads this once, when
# torch first loads it, so it must be set before anything imports torch. A value the
# user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_STARTUP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_during_startup(signum: int, frame: FrameType | None) -> None:
    # Ctrl-C or SIGTERM while the command is still importing: one line and out, at once.
    # Nothing is written before the imports end, so there is nothing to clean up, and an
    # exception raised into half-imported libraries (numpy, torch) can end in a traceback
    # of theirs instead.
    os.write(2, b"esper: interrupted while starting up\n")
    os._exit(128 + signum)


def _set_handlers(handlers: dict[signal.Signals, Any]) -> dict[signal.Signals, Any]:
    """Install ``handlers``; returns the ones they replace ({} outside the main thread,
    where signals are not ours to change)."""
    previous: dict[signal.Signals, Any] = {}
    try:
        for signum, handler in handlers.items():
            if handler is not None:
                previous[signum] = signal.signal(signum, handler)
    except ValueError:
        pass
    return previous


_STARTING = dict.fromkeys(_STARTUP_SIGNALS, _stop_during_startup)
_previous_handlers = _set_handlers(_STARTING)

from collections.abc import Sequence

from rich.console import Console

from esper.cli.common import Terminated, print_error
from esper.cli.parser import build_parser

_set_handlers(_previous_handlers)

__all__ = ["build_parser", "main"]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``esper`` command; returns the process exit code.

    0 done; 1 the run had to stop (disk full, persistent fault, a failed compare run); 2
    bad input or a run directory that cannot be used; 130 interrupted (Ctrl-C); 143
    terminated (SIGTERM).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    previous = _set_handlers(_STARTING)
    try:
        args = build_parser().parse_args(arguments)
        args.argv = arguments
        # Imported here, not at the top, for start-up time only: the commands import
        # torch and friends (seconds), which --help and argument errors never need, and
        # neither does `watch`, which only reads files (and should not take a watched
        # run's memory and cores for torch).
        if args.command == "watch":
            from esper.cli.watch import watch_command as run_command
        else:
            from esper.cli.commands import run_command
    finally:
        _set_handlers(previous)
    previous = _set_handlers({signal.SIGTERM: _terminate})
    try:
        return run_command(args, Console())
    except KeyboardInterrupt as interrupt:  # before or after the run itself
        print_error("esper: interrupted", style="yellow")
        return 143 if isinstance(interrupt, Terminated) else 130
    finally:
        _set_handlers(previous)
