"""Ray, the optional engine behind ``--ray``: import it (or say how to install it) and
connect to a cluster.

Ray is an optional extra (``pip install 'esper[ray]'``): nothing else in Esper imports
it, and the modules that run work on Ray (`esper.compare.pools`, `esper.rl.ray_envs`)
import it through `import_ray` only when a pool is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

__all__ = ["INSTALL", "RayUnavailableError", "connected", "import_ray"]

INSTALL = "pip install 'esper[ray]'"
"""The command that installs Ray for Esper."""


class RayUnavailableError(RuntimeError):
    """``--ray`` was asked for, but Ray is not installed or its cluster is out of reach."""


def import_ray() -> ModuleType:
    """The ``ray`` module, or `RayUnavailableError` saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise RayUnavailableError(f"--ray needs Ray, which is not installed: {INSTALL}") from None


@contextmanager
def connected(address: str | None) -> Iterator[ModuleType]:
    """Ray, connected for the body of the ``with``: to ``address`` (a cluster's
    ``HOST:6379``, ``ray://HOST:10001`` or ``auto``), or with None to the cluster that
    ``RAY_ADDRESS`` names, else a new Ray on this machine alone.

    A connection this process already has is used as it is and left open; one made here
    is closed at the end (which never stops a cluster, only this driver's part in it).
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address or None)
    except ConnectionError as error:
        where = address or "RAY_ADDRESS"
        raise RayUnavailableError(
            f"cannot reach a Ray cluster at {where} ({str(error).splitlines()[0]}); start one "
            "with 'ray start --head' and pass its address, e.g. --ray HOST:6379"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()
