"""``esper export RUN_DIR``: a run's grown network as a plain PyTorch model file."""

from __future__ import annotations

import argparse

from rich.console import Console

from esper.cli.common import print_error
from esper.run import export_run

__all__ = ["export_command"]


def export_command(args: argparse.Namespace, console: Console) -> int:
    def warn(message: str) -> None:
        print_error(f"esper: warning: {message}", style="yellow")

    path = export_run(args.run_dir, args.out, warn)
    console.print(
        f"network in {path}; load it with: esper.load_model({str(path)!r})", soft_wrap=True
    )
    return 0
