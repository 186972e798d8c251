"""Shared benchmark harness: timing, peak extra memory, result tables.

Every benchmark measures all providers in one process and one run, so the ratio to the
eager baseline compares like with like. Times are medians over repeats after warm-up;
on CUDA they are taken with CUDA events, on CPU with a wall clock.

Peak extra memory is what one call allocates above what was live before it: on CUDA the
caching allocator's peak statistic; on CPU (Linux) the resident-set high-water mark
(VmHWM), reset through /proc/self/clear_refs after returning freed heap memory to the
system (malloc_trim), so that reused heap pages cannot hide an allocation.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {_cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def set_cpu_threads(threads: int | None = None) -> int:
    """Use ``threads`` (default: every core) for torch's intra-op pool; returns the count."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"torch threads: {torch.get_num_threads()} (os.cpu_count() = {os.cpu_count()})", flush=True)
    return threads


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_time(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, repeats: int = 5,
                budget_s: float | None = None) -> float:
    """Median wall time of ``fn()`` in seconds.

    ``budget_s`` caps the timed repeats of slow functions: after warm-up, at most as many
    repeats as fit in the budget are run (at least 3, at most ``repeats``).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    return statistics.median(_times(fn, device, repeats=repeats, budget_s=budget_s))


def _times(fn: Callable[[], object], device: torch.device, *, repeats: int, budget_s: float | None) -> list[float]:
    times = [_one_time(fn, device)]
    if budget_s is not None:
        repeats = max(3, min(repeats, int(budget_s / max(times[0], 1e-9))))
    while len(times) < repeats:
        times.append(_one_time(fn, device))
    return times


def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _release_free_heap() -> None:
    """Collect garbage and hand freed malloc memory back to the OS (glibc only)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes allocated by one call of ``fn()`` above what was live before it.

    CUDA: the caching allocator's peak statistic. CPU (Linux): the resident-set high-water
    mark, reset through /proc/self/clear_refs before the call; large tensors are mmapped
    by the allocator, so they show up there as soon as they are touched. The result of
    ``fn`` is dropped before the call returns, but it counts (it was resident at the peak).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    _release_free_heap()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _rss_bytes("VmRSS")
    fn()
    return max(0, _rss_bytes("VmHWM") - base)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated: free GPU memory, or MemAvailable on Linux."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def is_oom(err: BaseException) -> bool:
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(err).lower()


@dataclass
class Row:
    provider: str
    seconds: float | None  # None: did not run (out of memory, or not installed)
    peak_bytes: int | None
    flops: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def triton_skip_reason(device: torch.device) -> str | None:
    """Why the Triton provider cannot be timed on ``device``, or None when it can."""
    from lgvq.kernels import HAS_TRITON

    if device.type != "cuda":
        return "needs CUDA (the CPU interpreter does not measure speed)"
    return None if HAS_TRITON else "triton not installed"


def skipped(provider: str, note: str, flops: float | None = None) -> Row:
    """A row for a provider that did not run (not installed, needs CUDA, ...)."""
    return Row(provider, None, None, flops, note=note)


def memory_skip_reason(device: torch.device, needs_bytes: int | None) -> str | None:
    """Why a provider with a working set of ``needs_bytes`` is not run on the CPU (it would not
    fit in the memory the system has available: the OOM killer would end the run), or None."""
    if needs_bytes is None or device.type != "cpu":
        return None
    avail = available_memory(device)
    if avail is None or needs_bytes <= 0.9 * avail:
        return None
    return f"skipped: needs ~{needs_bytes / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"


def measure(provider: str, fn: Callable[[], object], device: torch.device, *, flops: float | None = None,
            warmup: int = 2, repeats: int = 5, budget_s: float | None = None, needs_bytes: int | None = None,
            note: str = "") -> Row:
    """Time and memory of one provider; an out-of-memory failure becomes a row that says so.

    Order: warm-up calls (compilation, caches), one call for the peak extra memory, then the
    timed repeats (see :func:`median_time` for ``budget_s``). ``needs_bytes`` is an estimate
    of the provider's working set: on CPU a provider that would not fit in the memory the
    system has available is skipped with a note instead of risking the OOM killer.
    """
    why = memory_skip_reason(device, needs_bytes)
    if why is not None:
        return Row(provider, None, None, flops, note=why)
    try:
        for _ in range(max(1, warmup)):
            fn()
        t0 = time.perf_counter()
        peak = peak_extra_memory(fn, device)
        seconds = time.perf_counter() - t0  # rough (includes the memory probe); replaced below
        if repeats > 0:
            times = _times(fn, device, repeats=repeats, budget_s=budget_s)
            seconds = statistics.median(times)
            extra = {"times": times, "min_seconds": min(times)}
        else:
            extra = {}
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        gc.collect()
        return Row(provider, None, None, flops, note="out of memory")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Row(provider, seconds, peak, flops, note=note, extra=extra)


@dataclass
class Case:
    """One provider for :func:`measure_many`: what to call and how often."""

    provider: str
    fn: Callable[[], object]
    flops: float | None = None
    warmup: int = 2
    repeats: int = 5
    needs_bytes: int | None = None
    note: str = ""


def measure_many(cases: list[Case], device: torch.device, *, budget_s: float | None = None) -> list[Row]:
    """Like :func:`measure` for several providers, with their timed calls interleaved.

    Each provider is first warmed up and its peak extra memory taken (an out-of-memory
    failure or a ``needs_bytes`` skip becomes a row that says so); then the timed calls go
    round-robin over the providers, so that a change in machine load (other processes on a
    shared CPU, clocks) hits every provider alike and the ratios between them stay fair.
    Slow providers get fewer repeats when ``budget_s`` is set (at least 3).
    """
    rows: list[Row] = []
    live: list[tuple[Case, Row, int]] = []
    for case in cases:
        row = measure(case.provider, case.fn, device, flops=case.flops, warmup=case.warmup, repeats=0,
                      needs_bytes=case.needs_bytes, note=case.note)
        rows.append(row)
        if row.seconds is not None:
            repeats = case.repeats
            if budget_s is not None:
                repeats = max(3, min(repeats, int(budget_s / max(row.seconds, 1e-9))))
            row.extra["times"] = []
            live.append((case, row, repeats))
        print(f"  {case.provider}: {'ready' if row.seconds is not None else row.note}", flush=True)
    for round_ in range(max((r for _, _, r in live), default=0)):
        for case, row, repeats in live:
            if round_ < repeats:
                try:
                    row.extra["times"].append(_one_time(case.fn, device))
                except (RuntimeError, MemoryError) as err:
                    if not is_oom(err):
                        raise
                    row.note = "out of memory (while timing)"
    for _, row, _ in live:
        times = row.extra["times"]
        if times:
            row.seconds = statistics.median(times)
            row.extra["min_seconds"] = min(times)
        else:
            row.seconds = None
    return rows


def format_table(title: str, rows: list[Row], baseline: str = "eager", also: tuple[str, ...] = ()) -> str:
    """A markdown table; 'vs eager' is the baseline's median time over this row's (>1 = faster).

    'min ms' is the fastest timed call (when known): on a shared CPU it is the least
    disturbed by other processes, the median the more honest typical value.

    Throughput is in TFLOP/s, or GFLOP/s when every row is under 1 TFLOP/s (CPU).

    ``also`` names further providers to compare against, one 'vs NAME' column each
    (>1 = this row is faster than NAME).
    """
    def time_of(name: str) -> float | None:
        return next((r.seconds for r in rows if r.provider == name and r.seconds), None)

    refs = [(baseline, time_of(baseline))] + [(name, time_of(name)) for name in also]
    rates = [r.flops / r.seconds for r in rows if r.flops and r.seconds]
    unit, scale = ("TFLOP/s", 1e12) if not rates or max(rates) >= 1e12 else ("GFLOP/s", 1e9)
    head = f"| provider | median ms | min ms | {unit} | peak extra MiB | " + " | ".join(f"vs {n}" for n, _ in refs) + " | note |"
    lines = [f"### {title}", "", head, "|---|---:|---:|---:|---:|" + "---:|" * len(refs) + "---|"]
    for r in rows:
        ms = f"{r.seconds * 1e3:.2f}" if r.seconds else "—"
        min_s = r.extra.get("min_seconds") if r.seconds else None
        min_ms = f"{min_s * 1e3:.2f}" if min_s else "—"
        tflops = f"{r.flops / r.seconds / scale:.3g}" if (r.flops and r.seconds) else "—"
        mem = f"{r.peak_bytes / 2**20:.1f}" if r.peak_bytes is not None else "—"
        ratios = [f"{t / r.seconds:.2f}×" if (t and r.seconds) else "—" for _, t in refs]
        lines.append(f"| {r.provider} | {ms} | {min_ms} | {tflops} | {mem} | " + " | ".join(ratios) + f" | {r.note} |")
    return "\n".join(lines)


def write_results(name: str, device: torch.device, tables: list[str], notes: list[str] | None = None) -> Path:
    """Append one run's tables to ``bench/results/NAME-<device kind>.md`` and print them.

    The header names the device, torch version, exact command (shell-quoted, so it can be pasted
    back) and, on CPU, the system load average (other processes on the machine skew CPU timings).
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    kind = "cuda" if device.type == "cuda" else "cpu"
    path = RESULTS_DIR / f"{name}-{kind}.md"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (
        f"## {stamp} · {device_name(device)} · torch {torch.__version__}\n\n"
        f"Command: `python -m {shlex.join(['bench.' + name] + sys.argv[1:])}`\n"
    )
    if kind == "cpu" and hasattr(os, "getloadavg"):
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        header += f"\nLoad average at the end of the run (1, 5, 15 min): {load}\n"
    for line in notes or []:
        header += f"\n{line}\n"
    body = header + "\n" + "\n\n".join(tables) + "\n\n"
    print(body)
    with open(path, "a") as f:
        f.write(body)
    return path


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bench_device(name: str | None, threads: int | None) -> torch.device:
    """The device a benchmark runs on (CUDA when available unless named); on CPU it also
    fixes the thread count, which every CPU timing depends on."""
    device = torch.device(name) if name else default_device()
    if device.type == "cpu":
        set_cpu_threads(threads)
    return device


def run_options(args) -> dict:
    """The per-shape options of a benchmark's command line (--repeats, --budget,
    --compile-timeout, --providers, --quick)."""
    return {
        "repeats": args.repeats or (3 if args.quick else 5),
        "budget_s": args.budget,
        "compile_timeout": args.compile_timeout,
        "providers": set(args.providers.split(",")) if args.providers else None,
    }


def shape_bench_main(name: str, description: str, run_shape, shape_sets: dict, provider_names: str,
                     argv: list[str] | None = None) -> list[str]:
    """The command line shared by the (N, K, d)-shaped benchmarks (bench.nearest, bench.quantize).

    ``shape_sets`` maps "quick" / "cpu" / "cuda" to lists of (N, K, d); ``run_shape(n, k, d,
    dtype, device, first=..., repeats=..., budget_s=..., compile_timeout=..., providers=...)``
    returns one markdown table (``first`` is True for the first shape only).
    """
    import argparse

    dtypes_by_name = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="one small shape, few repeats, no results file")
    p.add_argument("--n", type=int, help="rows (vectors to quantize)")
    p.add_argument("--k", type=int, help="codebook size")
    p.add_argument("--d", type=int, help="code dimension")
    p.add_argument("--dtype", choices=[*dtypes_by_name, "all"], default=None,
                   help="default: fp32 on CPU, fp32 and bf16 on CUDA")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 3)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed repeats per slow provider")
    p.add_argument("--compile-timeout", type=float, default=300.0, help="seconds allowed for torch.compile")
    p.add_argument("--providers", default=None, help=f"comma list of {provider_names} (default: all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--write", action="store_true", help="append to bench/results even with --quick")
    args = p.parse_args(argv)

    device = bench_device(args.device, args.threads)
    defaults = shape_sets["quick" if args.quick else device.type]
    shapes = defaults
    if args.n or args.k or args.d:
        shapes = [(args.n or defaults[0][0], args.k or defaults[0][1], args.d or defaults[0][2])]
    if args.dtype == "all":
        dtypes = list(dtypes_by_name.values())
    elif args.dtype:
        dtypes = [dtypes_by_name[args.dtype]]
    else:
        dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.bfloat16]
    options = run_options(args)
    tables = []
    for i, (n, k, d) in enumerate(shapes):
        for dtype in dtypes:
            print(f"N={n} K={k} d={d} {dtype}", flush=True)
            tables.append(run_shape(n, k, d, dtype, device, first=i == 0, **options))
    if args.quick and not args.write:
        print("\n\n".join(tables))
    else:
        write_results(name, device, tables)
    return tables
