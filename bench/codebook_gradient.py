"""The cost of a deterministic codebook gradient on the CPU: the torch path's gather, forward + backward.

    python -m bench.codebook_gradient --threads 2
    python -m bench.codebook_gradient --threads 2 --quick

``vector_quantize``'s torch path gathers the chosen codes e = codebook[idx] (N rows of the
(K, d) codebook) and differentiates through the gather. Providers, all in one process with
their timed calls interleaved (``bench.common.measure_many``):

- ``codebook[idx]``: advanced indexing, as the path did before; its backward is
  ``index_put_(accumulate=True)``, which on the CPU adds with parallel atomics once N·d ≥
  32,768 and more than one thread runs: the sum's order, hence its last bits, changes from
  run to run.
- ``F.embedding`` (what the path uses now): each thread takes a range of codes and adds
  their rows in index order, the same sum on any number of threads.
- ``vector_quantize (torch)``: the whole op (search, gather, losses, backward), to show what
  share of a quantization step the gather is.

One timed call: zero the gradient, gather, backward of ``(e * g).sum()`` with a fixed g
(the whole op: of ``(z_q * g).sum() + loss``). Before timing, the gradients of both gathers
are compared with a 1-thread computation: F.embedding's must be equal bit for bit.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.common import Case, bench_device, format_table, measure_many, write_results
from lgvq.ops.quantize import vector_quantize

# (N, K, d): the shapes-vqvae(-lg) step (batch 16 of 8×8 codes, 256 codes of 64), a VQGAN-f16
# batch of 64 at 256² (16·16·64 codes, 1024 of 256), and a large codebook.
SHAPES = [(1024, 256, 64), (16384, 1024, 256), (16384, 16384, 64)]
QUICK_SHAPES = [(1024, 256, 64)]


def _gather_step(gather, codebook, idx, g):
    def step():
        codebook.grad = None
        (gather(codebook, idx) * g).sum().backward()
    return step


def _quantize_step(z, codebook, g):
    def step():
        codebook.grad = z.grad = None
        z_q, _, loss = vector_quantize(z, codebook, backend="torch")
        ((z_q * g).sum() + loss).backward()
    return step


GATHERS = {
    "codebook[idx]": lambda codebook, idx: codebook[idx],
    "F.embedding": lambda codebook, idx: F.embedding(idx, codebook),
}


def _gradient(gather, codebook, idx, g, threads: int) -> torch.Tensor:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _gather_step(gather, codebook, idx, g)()
        return codebook.grad.clone()
    finally:
        torch.set_num_threads(previous)


def bench_shape(n: int, k: int, d: int, device: torch.device, *, repeats: int, budget_s: float) -> str:
    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(k, d, generator=gen).requires_grad_(True)
    z = torch.randn(n, d, generator=gen).requires_grad_(True)
    idx = torch.randint(0, k, (n,), generator=gen)
    g = torch.randn(n, d, generator=gen)
    notes = {}
    for name, gather in GATHERS.items():
        same = torch.equal(_gradient(gather, codebook, idx, g, torch.get_num_threads()),
                           _gradient(gather, codebook, idx, g, 1))
        notes[name] = "gradient equal to 1 thread's" if same else "gradient differs from 1 thread's"
    if notes["F.embedding"] != "gradient equal to 1 thread's":
        raise AssertionError(f"F.embedding's codebook gradient depends on the thread count at N={n} K={k} d={d}")
    cases = [Case(name, _gather_step(gather, codebook, idx, g), repeats=repeats, note=notes[name])
             for name, gather in GATHERS.items()]
    cases.append(Case("vector_quantize (torch)", _quantize_step(z, codebook, g), repeats=repeats,
                      note="the whole op, with F.embedding"))
    rows = measure_many(cases, device, budget_s=budget_s)
    title = f"N={n:,}, K={k:,}, d={d} · float32 · gather forward + backward"
    return format_table(title, rows, baseline="codebook[idx]")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Codebook gather forward + backward on the CPU: atomics vs F.embedding.")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="one small shape, no results file")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 20, quick 5)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed repeats per provider")
    args = p.parse_args(argv)
    device = bench_device("cpu", args.threads)
    repeats = args.repeats or (5 if args.quick else 20)
    tables = [bench_shape(n, k, d, device, repeats=repeats, budget_s=args.budget)
              for n, k, d in (QUICK_SHAPES if args.quick else SHAPES)]
    if args.quick:
        print("\n\n".join(tables))
    else:
        write_results("codebook_gradient", device, tables, notes=[
            "The machine is shared: other helpers' jobs ran on its 2 cores throughout (see the load average); "
            "compare the ratios within a table, which were measured interleaved, not the absolute times."])


if __name__ == "__main__":
    main()
