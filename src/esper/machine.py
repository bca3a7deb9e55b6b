"""What the machine offers a run, and the thread count that suits it (``--threads auto``).

Intra-op threads pay only when every operation has enough work to split: each parallel
op wakes the other threads and waits for the slowest, so a tiny model (the digits host)
runs fastest on one thread, and a thread that shares its core with another process
stalls every op it is part of. `auto_threads` therefore asks for one thread per
`FLOPS_PER_THREAD` of training work per step, never more than the physical cores this
process may use, and none of the cores other processes keep busy when the run starts.

Pure Python (no torch): the caller applies the count.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

__all__ = ["FLOPS_PER_THREAD", "auto_threads", "busy_cores", "physical_cores"]

FLOPS_PER_THREAD = 25e6
"""Training FLOPs per step (forward and backward of one batch) that one thread must have
before a second pays for waking it: about a millisecond of work, against the tens of
microseconds each op spends handing work out and joining it. The digits host does
about 1.2 MFLOPs per step (one thread); the CIFAR-10 host about 570 MFLOPs."""

_SYS_CPU = Path("/sys/devices/system/cpu")


def _allowed_cpus() -> list[int]:
    """Logical CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup in cores (None: no quota, or not Linux)."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def physical_cores() -> int:
    """Physical cores this process may use: the CPUs in its affinity mask with SMT
    siblings counted once, capped by a cgroup CPU quota (a container's ``--cpus``)."""
    cpus = _allowed_cpus()
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = _SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            cores = {(str(c), "") for c in cpus}  # no topology (not Linux): one core per CPU
            break
        cores.add((package, core))
    count = max(1, len(cores))
    quota = _cgroup_cpus()
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return count


def _cpu_times(cpus: list[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks so far of ``cpus``, from /proc/stat (None elsewhere)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if name not in wanted:
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        ticks = [int(f) for f in fields[:8]]
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait; steal is busy
    return (busy, total) if total else None


def busy_cores(interval: float = 0.2) -> float:
    """Cores' worth of this process's CPUs that other processes keep busy, measured over
    ``interval`` seconds (Linux; elsewhere the 1-minute load average, or 0)."""
    cpus = _allowed_cpus()
    per_cpu = physical_cores() / len(cpus)  # SMT: two busy siblings fill one core
    before, own_before, start = _cpu_times(cpus), time.process_time(), time.perf_counter()
    if before is None:
        try:
            return min(float(len(cpus)), os.getloadavg()[0]) * per_cpu
        except (AttributeError, OSError):
            return 0.0
    time.sleep(interval)
    after, own_after, end = _cpu_times(cpus), time.process_time(), time.perf_counter()
    assert after is not None
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    ticks_per_second = total / len(cpus) / (end - start)  # USER_HZ, as /proc/stat counts
    others = busy - (own_after - own_before) * ticks_per_second  # without this process
    return min(float(len(cpus)), max(0.0, others / total * len(cpus))) * per_cpu


def auto_threads(flops_per_step: float, cores: int | None = None, busy: float | None = None) -> int:
    """Threads for a model doing ``flops_per_step`` training FLOPs per batch.

    One per `FLOPS_PER_THREAD` of work, at most ``cores`` (default: `physical_cores`, and
    no more than ``OMP_NUM_THREADS`` when the environment sets it) less the cores other
    processes keep busy (``busy``, rounded; default: `busy_cores`, measured only when
    more than one thread is in question), and at least one.
    """
    by_work = max(1, int(flops_per_step // FLOPS_PER_THREAD))
    if cores is None:
        cores = physical_cores()
        limit = os.environ.get("OMP_NUM_THREADS", "")
        if limit.isdigit() and int(limit) > 0:  # a cluster's or a user's own cap
            cores = min(cores, int(limit))
    wanted = min(by_work, cores)
    if wanted <= 1:
        return 1
    busy = busy_cores() if busy is None else busy
    return max(1, min(wanted, cores - math.floor(busy + 0.5)))
