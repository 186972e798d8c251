"""CPU thread policy for training, and a measure of how busy the machine was meanwhile.

Training the tiny models is a long series of small ops. On a 2-core machine a 2-thread run
waits at every op for the core another process holds (60 steps of shapes-vqvae took 40 s
on 2 threads under light load, 21.6 s on 1; bench/results/training-cpu.md), so several
models train fastest as parallel processes of ``threads_per_process`` threads each.

``LoadMeter`` records what the rest of the machine did during a measurement: the CPU time
of every other process, in cores, and the load average. Timings are stated beside it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_process(processes: int) -> int:
    """Torch threads for each of ``processes`` parallel CPU processes: the cores split evenly."""
    return max(1, cpu_cores() // max(1, processes))


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (None: leave them), then restore the previous setting."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (None where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system (idle iowait) irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Load:
    other_cores: float | None  # average cores used by other processes during the window
    load_average: float | None  # 1-minute load average at the end of the window
    seconds: float

    def describe(self) -> str:
        parts = []
        if self.other_cores is not None:
            parts.append(f"other processes used {self.other_cores:.1f} of {cpu_cores()} cores")
        if self.load_average is not None:
            parts.append(f"load average {self.load_average:.1f}")
        return ", ".join(parts) or "machine load unknown"

    def as_dict(self) -> dict:
        return {"other_cores": self.other_cores, "load_average": self.load_average, "seconds": self.seconds}


class LoadMeter:
    """``start()`` … ``stop()`` → the ``Load`` of the rest of the machine over that window.

    Child processes count as this process's own work once they have been waited for.
    """

    def start(self) -> LoadMeter:
        self._wall, self._busy, self._own = time.perf_counter(), _machine_busy_seconds(), _own_seconds()
        return self

    def stop(self) -> Load:
        wall = time.perf_counter() - self._wall
        busy = _machine_busy_seconds()
        other = None
        if busy is not None and self._busy is not None and wall > 0:
            other = max(0.0, (busy - self._busy) - (_own_seconds() - self._own)) / wall
        average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return Load(other, average, wall)
