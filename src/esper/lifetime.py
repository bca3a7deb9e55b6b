"""How Esper's worker processes end: with the process that started them, however it
ends (even ``kill -9``, which runs no clean-up of its own).

`die_with_parent` is what a worker runs first: on Linux the kernel kills it the moment
its parent dies (``prctl PR_SET_PDEATHSIG``), and everywhere a watchdog thread ends it
within `PARENT_POLL_SECONDS` of being orphaned, mid-step or not. Exiting at any instant
is safe: every file a run or a training writes is replaced in one step.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["PARENT_POLL_SECONDS", "die_with_parent"]

PARENT_POLL_SECONDS = 0.25
"""How often a worker checks that the process that started it is still there."""

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """End this process as soon as ``parent`` (the pid that started it) is gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="esper-parent", daemon=True).start()


def _watch(parent: int) -> None:
    # The parent's death re-parents this process (to init or a subreaper).
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)
