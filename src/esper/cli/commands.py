"""Run the command the parsed arguments name; an error the user can fix is one line.

This is where the ``esper`` command's heavy imports (torch, matplotlib, scikit-learn,
scipy, gymnasium) happen: `esper.cli` imports it only once the arguments are parsed.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from esper.cli import compare as compare_cli
from esper.cli import ppo as ppo_cli
from esper.cli import runs
from esper.cli import search as search_cli
from esper.cli.common import first_line, print_error
from esper.cli.export import export_command
from esper.cli.report import report_command
from esper.cluster import RayUnavailableError
from esper.config import ConfigError
from esper.data import DataFormatError, DataUnavailableError
from esper.lifecycle import LifecycleError
from esper.model.export import ExportError
from esper.registry import UnknownNameError
from esper.run import RunError
from esper.telemetry import SinkError

__all__ = ["EXPECTED_ERRORS", "run_command"]

EXPECTED_ERRORS = (
    ConfigError,
    DataFormatError,
    DataUnavailableError,
    ExportError,
    LifecycleError,
    RayUnavailableError,
    RunError,
    SinkError,
    UnknownNameError,
)


def run_command(args: argparse.Namespace, console: Console) -> int:
    """Run ``args.command``; returns the exit status (see `esper.cli.main`)."""
    try:
        if args.command == "report":
            return report_command(args, console)
        if args.command == "export":
            return export_command(args, console)
        if args.command == "compare":
            return compare_cli.compare_command(args, console)
        if args.command == "search":
            return search_cli.search_command(args, console)
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
