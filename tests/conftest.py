"""Shared test helpers: small real models on CPU, and a local Ray."""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

# Tiny models run no faster on two threads, and a second thread makes every op crawl
# whenever another process shares the machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread_again() -> Iterator[None]:
    # A run started in-process with --threads auto (the default) sets torch's threads
    # for the whole process; the next test starts from one again.
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[ModuleType]:
    """A Ray on this machine alone (2 CPUs, no dashboard), shared by one test module:
    starting it takes seconds."""
    # Ray binds to the machine's network address unless it believes it cannot form a
    # cluster; this keeps every connection of the tests on the loopback interface. Read
    # when ray is first imported, so set before.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
