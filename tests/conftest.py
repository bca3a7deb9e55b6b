"""Shared test helpers: small real models on CPU."""

from __future__ import annotations

from collections.abc import Iterator

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
