"""``--threads auto``: never more threads than cores, one for a batch too small to split."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from esper.contracts import TaskType
from esper.machine import FLOPS_PER_THREAD, auto_threads, busy_cores, physical_cores
from esper.model import build_host
from esper.training.builders import build_model, load_data
from esper.training.compute import train_flops
from esper.training.tasks import TaskOptions, get_task


@given(
    flops=st.floats(0, 1e15),
    cores=st.integers(1, 256),
    busy=st.floats(0, 512),
)
def test_auto_never_asks_for_more_threads_than_cores(flops: float, cores: int, busy: float) -> None:
    assert 1 <= auto_threads(flops, cores, busy) <= cores


def test_on_this_machine_auto_stays_within_its_physical_cores() -> None:
    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert 0.0 <= busy_cores(0.05) <= len(os.sched_getaffinity(0))
    assert 1 <= auto_threads(1e15) <= cores


def test_auto_keeps_within_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert auto_threads(1e15) == 1


def _flops_per_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """What the run computes: training FLOPs per item times the items of a batch."""
    per_item = train_flops(model, (inputs, targets), nn.CrossEntropyLoss(), TaskType.CLASSIFICATION)
    return per_item * targets.numel()


def test_the_digits_host_gets_one_thread_on_any_machine() -> None:
    spec = get_task("digits")
    split = load_data(spec, TaskOptions())
    model = build_model(spec, split)
    inputs, targets = next(iter(torch.utils.data.DataLoader(split.train, spec.batch_size)))
    flops = _flops_per_step(model, inputs, targets)
    assert flops < 2 * FLOPS_PER_THREAD  # about 1.2 MFLOPs: nothing worth splitting
    assert auto_threads(flops, cores=64, busy=0.0) == 1


def test_the_cifar_host_gets_the_cores_other_processes_leave_free() -> None:
    host = build_host("cnn", num_classes=10, widths=(8, 16, 32))
    flops = _flops_per_step(host, torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,)))
    assert flops > 4 * FLOPS_PER_THREAD
    assert auto_threads(flops, cores=2, busy=0.1) == 2  # an idle 2-core machine
    assert auto_threads(flops, cores=2, busy=0.9) == 1  # one core taken by another process
    assert auto_threads(flops, cores=2, busy=2.0) == 1
    assert auto_threads(flops, cores=4, busy=1.0) == 3
