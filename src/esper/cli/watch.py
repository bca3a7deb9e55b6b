"""``esper watch``: the live view of a run or a PPO training directory.

Imported by `esper.cli.main` without `esper.cli.commands`, so watching costs no torch
import; the Textual app is the optional extra ``esper[watch]``.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from esper.cli.common import print_error
from esper.watch.files import NotARunError, classify

try:
    from esper.watch.app import WatchApp
except ImportError as error:  # the extra is not installed; a bug elsewhere still raises
    if error.name not in ("textual", "textual_plotext", "plotext"):
        raise
    MISSING: str | None = error.name
else:
    MISSING = None

__all__ = ["watch_command"]


def watch_command(args: argparse.Namespace, console: Console) -> int:
    """Run the live view until the user quits; 2 for a directory it cannot show."""
    try:
        classify(args.run_dir)
    except NotARunError as error:
        print_error(f"esper: error: {error}")
        return 2
    if MISSING is not None:
        print_error(
            f"esper: error: esper watch needs {MISSING.replace('_', '-')}: "
            "pip install 'esper[watch]'"
        )
        return 2
    app = WatchApp(args.run_dir, args.interval)
    app.run()
    # Textual prints an unhandled error itself and records it as a non-zero return code.
    return app.return_code or 0
