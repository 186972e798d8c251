"""Shared benchmark harness: timing, peak extra memory, result tables.

Every benchmark measures all providers in one process and one run, so the ratio to the
eager baseline compares like with like. Times are medians over repeats after warm-up;
on CUDA they are taken with CUDA events, on CPU with a wall clock.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes allocated by one call of ``fn()`` above what was live before it.

    CUDA: the caching allocator's peak statistic. CPU (Linux): the resident-set high-water
    mark, reset through /proc/self/clear_refs before the call; large tensors are mmapped
    by the allocator, so they show up there as soon as they are touched.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _rss_bytes("VmRSS")
    fn()
    return max(0, _rss_bytes("VmHWM") - base)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


@dataclass
class Row:
    provider: str
    seconds: float | None  # None: did not run (out of memory, or not installed)
    peak_bytes: int | None
    flops: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def measure(provider: str, fn: Callable[[], object], device: torch.device, *, flops: float | None = None,
            warmup: int = 2, repeats: int = 5) -> Row:
    """Time and memory of one provider; an out-of-memory failure becomes a row that says so."""
    try:
        peak = peak_extra_memory(fn, device)
        seconds = median_time(fn, device, warmup=warmup, repeats=repeats)
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err) and not isinstance(err, MemoryError):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return Row(provider, None, None, flops, note="out of memory")
    return Row(provider, seconds, peak, flops)


def format_table(title: str, rows: list[Row], baseline: str = "eager") -> str:
    """A markdown table; 'vs eager' is the baseline's time over this row's time (>1 = faster)."""
    base = next((r.seconds for r in rows if r.provider == baseline and r.seconds), None)
    lines = [
        f"### {title}",
        "",
        "| provider | median ms | TFLOP/s | peak extra MiB | vs eager | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ms = f"{r.seconds * 1e3:.2f}" if r.seconds else "—"
        tflops = f"{r.flops / r.seconds / 1e12:.3f}" if (r.flops and r.seconds) else "—"
        mem = f"{r.peak_bytes / 2**20:.1f}" if r.peak_bytes is not None else "—"
        ratio = f"{base / r.seconds:.2f}×" if (base and r.seconds) else "—"
        lines.append(f"| {r.provider} | {ms} | {tflops} | {mem} | {ratio} | {r.note} |")
    return "\n".join(lines)


def write_results(name: str, device: torch.device, tables: list[str]) -> Path:
    """Append one run's tables to ``bench/results/NAME-<device kind>.md`` and print them."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    kind = "cuda" if device.type == "cuda" else "cpu"
    path = RESULTS_DIR / f"{name}-{kind}.md"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (
        f"## {stamp} · {device_name(device)} · torch {torch.__version__}\n\n"
        f"Command: `python -m {' '.join(['bench.' + name] + sys.argv[1:])}`\n"
    )
    body = header + "\n" + "\n\n".join(tables) + "\n\n"
    print(body)
    with open(path, "a") as f:
        f.write(body)
    return path


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
