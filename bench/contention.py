"""The torch CPU ops on an idle and on a busy machine: lgvq on every thread vs on one thread vs eager.

    python -m bench.contention            # N = K = 16,384, d = 64; relation at B=32, L=30, M=256, Dt=512
    python -m bench.contention --quick    # small shapes (a smoke test)

One process measures every provider under three conditions, started and stopped by the
benchmark itself so the ratios compare like with like:

- idle: nothing added (other users' processes may still run: see the load column),
- busy process: one extra single-threaded busy loop (a browser tab, a DataLoader worker),
- 2-thread torch: another torch process multiplying matrices on every core (a second run).

For each op (nearest_code, vector_quantize forward + backward, relation_alignment_loss
forward + backward) the table gives the median of ``--repeats`` calls for lgvq's torch
backend on all torch threads, on one thread, and for the eager formula (the taming /
released LG-VQ code), and the ratios the design targets: lgvq ≥ its 1-thread speed and
≥ 2× eager under load, ≥ 4× eager idle. The load column is the CPU time that processes
other than this one used during the condition, in cores (the added competitor included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from bench.common import set_cpu_threads, write_results
from bench.quantize import eager_quantize, lgvq_quantize, make_step
from bench.relation import loss_and_grad, make_inputs, released_style_loss
from bench.nearest import eager_nearest
from lgvq.ops.nearest import nearest_code
from lgvq.ops.relation import relation_alignment_loss
from lgvq.threads import LoadMeter, torch_threads

#: Competing processes, by condition name (None: nothing added).
COMPETITORS: dict[str, list[str] | None] = {
    "idle": None,
    "busy process": [sys.executable, "-c", "while True: pass"],
    "2-thread torch": [
        sys.executable, "-c",
        "import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True: a @ a",
    ],
}


@contextmanager
def condition(name: str):
    """Run the block with ``name``'s competitor; yields a dict that gets 'load' (other cores busy)."""
    command = COMPETITORS[name]
    competitor = subprocess.Popen(command) if command else None
    info: dict[str, float] = {}
    try:
        time.sleep(1.0 if competitor else 0.0)  # let the competitor start up
        meter = LoadMeter().start()
        yield info
        info["load"] = meter.stop().other_cores
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


OPS = ("nearest_code", "vector_quantize fwd+bwd", "relation_alignment_loss fwd+bwd")


def ops(n: int, k: int, d: int, relation_shape: tuple[int, int, int, int]) -> dict[str, dict[str, Callable]]:
    """op name -> {'lgvq': fn, 'eager': fn}; every fn is one call (forward + backward where trained)."""
    g = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    z, embedding = x.clone().requires_grad_(True), codebook.clone().requires_grad_(True)
    upstream = torch.randn(n, d, generator=g)
    rel = make_inputs(*relation_shape, torch.device("cpu"))
    rel[3].requires_grad_(True)
    return {
        "nearest_code": {"lgvq": lambda: nearest_code(x, codebook, backend="torch"),
                         "eager": lambda: eager_nearest(x, codebook)},
        "vector_quantize fwd+bwd": {"lgvq": make_step(lgvq_quantize("torch"), z, embedding, upstream),
                                    "eager": make_step(eager_quantize, z, embedding, upstream)},
        "relation_alignment_loss fwd+bwd": {
            "lgvq": lambda: loss_and_grad(lambda *a: relation_alignment_loss(*a, backend="torch"), *rel),
            "eager": lambda: loss_and_grad(released_style_loss, *rel),
        },
    }


def measure_condition(name: str, cases: dict[str, dict[str, Callable]], threads: int, repeats: int) -> list[dict]:
    rows = []
    with condition(name) as info:
        for op, fns in cases.items():
            row = {"op": op, "condition": name, "lgvq": median_seconds(fns["lgvq"], repeats)}
            with torch_threads(1):
                row["lgvq 1 thread"] = median_seconds(fns["lgvq"], repeats)
            row["eager"] = median_seconds(fns["eager"], repeats)
            rows.append(row)
            print(row, flush=True)
    for row in rows:
        row["load"] = info["load"]
    return rows


def table(rows: list[dict], threads: int) -> str:
    lines = [
        f"| op | condition | other processes' load (cores) | lgvq, {threads} threads (ms) | lgvq, 1 thread (ms) "
        "| eager (ms) | lgvq vs its 1 thread | lgvq vs eager |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['condition']} | {r['load']:.2f} | {1e3 * r['lgvq']:.1f} | {1e3 * r['lgvq 1 thread']:.1f} "
            f"| {1e3 * r['eager']:.1f} | {r['lgvq 1 thread'] / r['lgvq']:.2f}× | {r['eager'] / r['lgvq']:.2f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--conditions", nargs="+", choices=list(COMPETITORS), default=list(COMPETITORS))
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="which ops to time")
    parser.add_argument("--no-save", action="store_true", help="print only; do not append to bench/results")
    args = parser.parse_args(argv)
    threads = set_cpu_threads(args.threads)
    if args.quick:
        cases, repeats = ops(512, 512, 16, (4, 6, 16, 32)), 1
    else:
        cases, repeats = ops(16384, 16384, 64, (32, 30, 256, 512)), args.repeats
    cases = {op: fns for op, fns in cases.items() if op in args.ops}
    rows = [row for name in args.conditions for row in measure_condition(name, cases, threads, repeats)]
    text = table(rows, threads)
    if args.no_save:
        print(text)
    else:
        write_results("contention", torch.device("cpu"), [text], [f"Medians of {repeats} calls after one warm-up."])
    return rows


if __name__ == "__main__":
    main()
