"""What every ``esper`` command shares: one-line errors."""

from __future__ import annotations

from rich.console import Console

__all__ = ["Terminated", "first_line", "print_error"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops between two writes, resumable."""


def print_error(line: str, style: str = "bold red") -> None:
    Console(stderr=True).print(line, style=style, markup=False, highlight=False, soft_wrap=True)


def first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error).strip() else type(error).__name__
