"""Large codebooks: quantize time and peak extra memory vs K, the quantizer modules at the
target size, and a training step.

    python -m bench.scale --threads 1        # CPU: N=4,096, K=2^10…2^20, d=8 and 32 (~4 min)
    python -m bench.scale --device cuda      # N=65,536, K=2^10…2^20, d=8, 16, 32
    python -m bench.scale --quick            # small sizes, no results file
    python -m bench.scale --parts sweep --dims 8 --k-log2 14,18

Part 1, the sweep. One timed step quantizes z (N, d) against a learnable codebook (K, d) and
back-propagates ``(z_q * g).sum() + loss`` (bench.quantize's step). Providers:

- eager: taming VectorQuantizer2 (legacy=False) written out, a dense N×K distance matrix
  (bench.quantize.eager_quantize). On CPU it is skipped where the N×K fp32 matrix exceeds
  ``CPU_DENSE_LIMIT_BYTES`` (its working set is ~3 such matrices).
- vector-quantize-pytorch: ``VectorQuantize(codebook_size=K, dim=d, learnable_codebook=True,
  ema_update=False, rotation_trick=False, kmeans_init=False, commitment_weight=0.25)`` in training
  mode (bench.quantize.vqp_forward): cdist plus a dense N×K one-hot matmul; same CPU limit.
- lgvq: ``vector_quantize`` with the torch backend on CPU (tiled search, O(N + K) memory) and
  the Triton kernels on CUDA. Its indices are checked against exact fp64 distances on a few rows.

Part 2, the modules at the target size (K = 2^18, d = 8): forward + backward through
``VectorQuantizer`` (l2 and cosine) and ``ProjectedVectorQuantizer`` (SimVQ: frozen codebook,
learned projection recomputed each step), with their usage statistics.

Part 3, a training step: ``build_model("vqvae-tiny", n_embed=K, embed_dim=d)``, one Adam step
on a batch of images (L1 + L2 reconstruction + VQ loss), with lgvq's quantizer against the same
module searching eagerly (``EagerVectorQuantizer``: identical except for the dense search).

Peak extra memory: see bench.common (CUDA allocator peak; CPU resident-set high-water mark).
Timed calls of the providers of one table cell are interleaved (bench.common.measure_many), so
load changes on a shared CPU hit them alike. On a CPU that other processes keep busy, prefer
``--threads 1``: there the tiled search's many short two-thread parallel regions wait for a core
(measured ~5× slower than one thread at K=2^18, N=4,096 under a load average of 5 on 2 cores).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.common import (
    Case, Row, bench_device, format_table, measure_many, skipped, write_results,
)
from bench.nearest import check_optimal
from bench.quantize import BETA, eager_quantize, lgvq_quantize, make_step, vqp_forward
from lgvq.models import build_model
from lgvq.quantize import ProjectedVectorQuantizer, VectorQuantizer

#: Largest N×K fp32 matrix the dense providers may build on CPU. Eager's working set is ~3× that
#: (12 GiB at N=4,096, K=2^18), enough for the OOM killer on a shared 24 GiB machine.
CPU_DENSE_LIMIT_BYTES = 2 * 2**30
#: From this many N·K distances on, a step takes seconds on CPU: one timed call, not several.
CPU_HEAVY_SCORES = 2**30
#: Rows whose chosen code is checked against exact distances (an fp64 rows×K matrix).
CHECKED_ROWS = 32
PARTS = ("sweep", "modules", "train")
PROVIDERS = ("eager", "vqp", "lgvq")


@dataclass(frozen=True)
class Plan:
    n: int
    sweep: dict[int, tuple[int, ...]]  # d -> log2 K of the sweep
    module_k_log2: int
    module_dim: int
    train_batch: int
    train_dim: int
    train_k_log2: tuple[int, ...]


PLANS = {
    "cpu": Plan(n=4096, sweep={d: (10, 12, 14, 16, 18, 20) for d in (8, 32)},
                module_k_log2=18, module_dim=8, train_batch=16, train_dim=8, train_k_log2=(10, 14, 18)),
    "cuda": Plan(n=65536, sweep={d: (10, 12, 14, 16, 18, 20) for d in (8, 16, 32)},
                 module_k_log2=18, module_dim=8, train_batch=256, train_dim=8, train_k_log2=(10, 14, 18)),
    "quick": Plan(n=1024, sweep={8: (10, 14)}, module_k_log2=14, module_dim=8, train_batch=4, train_dim=8,
                  train_k_log2=(10,)),
}


def lgvq_backend(device: torch.device) -> str:
    return "torch" if device.type == "cpu" else "triton"


def dense_skip_note(nk_bytes: int, device: torch.device) -> str | None:
    """Why a dense provider is not run at this size on this device, or None to run it."""
    if device.type == "cpu" and nk_bytes > CPU_DENSE_LIMIT_BYTES:
        return (f"skipped: the N×K fp32 matrix would be {nk_bytes / 2**30:.0f} GiB "
                f"(CPU limit {CPU_DENSE_LIMIT_BYTES // 2**30} GiB)")
    return None


def repeats_and_budget(scores: int, repeats: int, budget_s: float, device: torch.device):
    """One timed call for a step that takes seconds on CPU; else ``repeats`` within ``budget_s``."""
    if device.type == "cpu" and scores >= CPU_HEAVY_SCORES:
        return 1, None
    return repeats, budget_s


def recording(step):
    """``step`` that keeps its last result, so it can be checked without another call."""
    last = {}

    def run():
        last["out"] = step()
    return run, last


def append_check(row: Row, problem: str) -> None:
    row.note = "; ".join(s for s in (row.note, problem) if s)


class EagerVectorQuantizer(VectorQuantizer):
    """VectorQuantizer searching with taming's dense formula instead of the fused op: the same
    module and statistics, so a training step's difference is the quantization alone."""

    def _quantize_flat(self, flat: torch.Tensor):
        return eager_quantize(flat, self._codebook_for_step(), self.beta)


# ---- part 1: the sweep ---------------------------------------------------------------------

def sweep_cell(n: int, k: int, d: int, device: torch.device, providers: set[str], repeats: int,
               budget_s: float) -> list[Row]:
    """Every provider's row for one (N, K, d)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    codebook = torch.randn(k, d, generator=gen).to(device).requires_grad_()
    g = torch.randn(n, d, generator=gen).to(device)
    nk_bytes = n * k * 4
    dense_note = dense_skip_note(nk_bytes, device)
    repeats, budget_s = repeats_and_budget(n * k, repeats, budget_s, device)
    common = {"flops": 2.0 * n * k * d, "repeats": repeats, "warmup": 1}
    cases, skips = [], []
    if "eager" in providers:
        if dense_note:
            skips.append(skipped("eager", dense_note))
        else:
            cases.append(Case("eager", make_step(eager_quantize, z, codebook, g),
                              needs_bytes=3 * nk_bytes, **common))
    if "vqp" in providers:
        name = "vector-quantize-pytorch"
        fwd, embed = (None, None) if dense_note else vqp_forward(codebook.detach())
        if fwd is None:
            skips.append(skipped(name, dense_note or "not installed"))
        else:
            cases.append(Case(name, make_step(fwd, z, embed, g), needs_bytes=6 * nk_bytes, **common))
    lgvq_row = f"lgvq {lgvq_backend(device)}"
    if "lgvq" in providers:
        step, last = recording(make_step(lgvq_quantize(lgvq_backend(device)), z, codebook, g))
        cases.append(Case(lgvq_row, step, **common))
    rows = skips + measure_many(cases, device, budget_s=budget_s)
    for row in rows:
        if row.provider == lgvq_row and row.seconds is not None:
            append_check(row, check_optimal(last["out"], z, codebook, rows=CHECKED_ROWS))
    return rows


# ---- part 2: the quantizer modules at the target size --------------------------------------

def module_step(quantizer: VectorQuantizer, z: torch.Tensor, g: torch.Tensor):
    """Forward + backward through ``quantizer.quantize``; returns the output (indices, usage)."""
    def step():
        quantizer.zero_grad(set_to_none=True)
        z.grad = None
        out = quantizer.quantize(z)
        ((out.z_q * g).sum() + out.loss).backward()
        return out
    return step


def nearest_check(quantizer: VectorQuantizer, z: torch.Tensor, indices: torch.Tensor) -> str:
    codes, x = quantizer.codebook.detach(), z.detach()
    if quantizer.metric == "cos":  # between unit vectors the L2-nearest code is the cosine-nearest
        codes, x = F.normalize(codes, dim=-1), F.normalize(x, dim=-1)
    return check_optimal(indices, x, codes, rows=CHECKED_ROWS)


def modules_table(n: int, k: int, d: int, device: torch.device, repeats: int, budget_s: float) -> str:
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    g = torch.randn(n, d, generator=gen).to(device)
    backend = lgvq_backend(device)
    quantizers = {
        "VectorQuantizer l2": VectorQuantizer(k, d, BETA, track_usage=True, backend=backend),
        "VectorQuantizer cos": VectorQuantizer(k, d, BETA, metric="cos", track_usage=True, backend=backend),
        "ProjectedVectorQuantizer (SimVQ)": ProjectedVectorQuantizer(k, d, BETA, track_usage=True, backend=backend),
    }
    repeats, budget_s = repeats_and_budget(n * k, repeats, budget_s, device)
    cases, outputs = [], {}
    for name, quantizer in quantizers.items():
        step, outputs[name] = recording(module_step(quantizer.to(device).train(), z, g))
        cases.append(Case(name, step, flops=2.0 * n * k * d, repeats=repeats, warmup=1))
    rows = measure_many(cases, device, budget_s=budget_s)
    for row in rows:
        if row.seconds is not None:
            out, quantizer = outputs[row.provider]["out"], quantizers[row.provider]
            append_check(row, nearest_check(quantizer, z, out.indices))
            append_check(row, f"usage {out.usage.item():.2%} of codes after {int(quantizer.step)} steps")
    title = f"Quantizer modules · N={n:,}, K={k:,}, d={d} · fp32 · forward + backward, training mode"
    return format_table(title, rows, baseline="VectorQuantizer l2")


# ---- part 3: a training step ---------------------------------------------------------------

def training_model(k: int, d: int, eager: bool, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("vqvae-tiny", n_embed=k, embed_dim=d, backend=lgvq_backend(device))
    if eager:
        lgvq_quantizer = model.quantize
        model.quantize = EagerVectorQuantizer(k, d, model.config.beta, sane_index_shape=True, legacy=False,
                                              track_usage=True)
        model.quantize.load_state_dict(lgvq_quantizer.state_dict())
    return model.to(device).train()


def training_step(model: torch.nn.Module, images: torch.Tensor):
    """One optimizer step of vqvae-tiny's objective: L1 + L2 reconstruction + the VQ loss."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(images)
        loss = F.l1_loss(out.x_rec, images) + F.mse_loss(out.x_rec, images) + out.vq_loss
        loss.backward()
        opt.step()
    return step


def training_cell(k: int, d: int, batch: int, device: torch.device, providers: set[str], repeats: int,
                  budget_s: float) -> list[Row]:
    """The training step with the quantizers of ``providers`` ("eager" and "lgvq"; vqp has no
    vqvae-tiny model)."""
    images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    nk_bytes = batch * 64 * k * 4  # vqvae-tiny: 8×8 codes per 32×32 image
    dense_note = dense_skip_note(nk_bytes, device) if "eager" in providers else None
    skips = [skipped("eager quantizer", dense_note)] if dense_note else []
    cases = []
    if "eager" in providers and not dense_note:
        cases.append(Case("eager quantizer", training_step(training_model(k, d, True, device), images), warmup=1,
                          repeats=repeats, needs_bytes=3 * nk_bytes))
    if "lgvq" in providers:
        cases.append(Case("lgvq quantizer", training_step(training_model(k, d, False, device), images), warmup=1,
                          repeats=repeats))
    return skips + measure_many(cases, device, budget_s=budget_s)


# ---- tables --------------------------------------------------------------------------------

def pivot_table(title: str, by_k: dict[int, list[Row]], baseline: str, target: str) -> str:
    """One row per K, one 'median ms (min ms) · peak extra MiB' cell per provider, notes as numbered
    footnotes, and the baseline's median time over the target's (>1 = the target is faster).
    On a shared CPU the fastest call is the least disturbed by other processes."""
    providers = list(dict.fromkeys(r.provider for rows in by_k.values() for r in rows))
    footnotes: dict[str, int] = {}

    def mark(note: str) -> str:
        return f" ({footnotes.setdefault(note, len(footnotes) + 1)})" if note else ""

    def cell(row: Row | None) -> str:
        if row is None:
            return "—"
        if row.seconds is None:
            return "—" + mark(row.note)
        fastest = row.extra.get("min_seconds", row.seconds)
        return (f"{row.seconds * 1e3:,.1f} ms (min {fastest * 1e3:,.1f}) · {row.peak_bytes / 2**20:,.0f} MiB"
                + mark(row.note))

    head = "| K | " + " | ".join(providers) + f" | {target} vs {baseline} |"
    lines = [f"### {title}", "", head, "|---:|" + "---:|" * (len(providers) + 1)]
    for k, rows in by_k.items():
        named = {r.provider: r for r in rows}
        base, tgt = named.get(baseline), named.get(target)
        ratio = f"{base.seconds / tgt.seconds:.2f}×" if base and tgt and base.seconds and tgt.seconds else "—"
        cells = " | ".join(cell(named.get(p)) for p in providers)
        lines.append(f"| 2^{k.bit_length() - 1} = {k:,} | {cells} | {ratio} |")
    if footnotes:
        lines.append("")
        lines += [f"({i}) {note}  " for note, i in footnotes.items()]
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------

def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def parse_choices(text: str, choices: tuple[str, ...]) -> set[str]:
    chosen = set(text.split(","))
    if not chosen <= set(choices):
        raise argparse.ArgumentTypeError(f"unknown {sorted(chosen - set(choices))}; choose from {','.join(choices)}")
    return chosen


def sweep_plan(plan: Plan, dims: tuple[int, ...] | None, k_log2: tuple[int, ...] | None) -> dict[int, tuple[int, ...]]:
    """The plan's sweep, narrowed or extended by --dims and --k-log2."""
    longest = max(plan.sweep.values(), key=len)
    return {d: k_log2 or plan.sweep.get(d, longest) for d in dims or tuple(plan.sweep)}


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats, no results file")
    p.add_argument("--parts", type=lambda t: parse_choices(t, PARTS), default=set(PARTS),
                   help=f"comma list of {','.join(PARTS)} (default: all)")
    p.add_argument("--n", type=int, help="rows N of the sweep and module parts (default: 4,096 CPU, 65,536 CUDA)")
    p.add_argument("--dims", type=parse_ints, help="comma list of code dimensions d of the sweep")
    p.add_argument("--k-log2", type=parse_ints, help="comma list of log2 K of the sweep and the training step")
    p.add_argument("--providers", type=lambda t: parse_choices(t, PROVIDERS), default=set(PROVIDERS),
                   help=f"comma list of {','.join(PROVIDERS)} for the sweep and the training step "
                   "(default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 3)")
    p.add_argument("--budget", type=float, default=5.0, help="seconds of timed repeats per provider")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--write", action="store_true", help="append to bench/results even with --quick")
    args = p.parse_args(argv)

    device = bench_device(args.device, args.threads)
    plan = PLANS["quick" if args.quick else device.type]
    n = args.n or plan.n
    repeats = args.repeats or (3 if args.quick else 5)

    tables = []
    if "sweep" in args.parts:
        for d, k_log2 in sweep_plan(plan, args.dims, args.k_log2).items():
            by_k = {}
            for log2 in k_log2:
                print(f"sweep N={n} K=2^{log2} d={d}", flush=True)
                by_k[2**log2] = sweep_cell(n, 2**log2, d, device, args.providers, repeats, args.budget)
            title = f"Quantize forward + backward · N={n:,}, d={d} · fp32 · median ms (min) · peak extra MiB"
            tables.append(pivot_table(title, by_k, "eager", f"lgvq {lgvq_backend(device)}"))
    if "modules" in args.parts:
        print(f"modules N={n} K=2^{plan.module_k_log2} d={plan.module_dim}", flush=True)
        tables.append(modules_table(n, 2**plan.module_k_log2, plan.module_dim, device, repeats, args.budget))
    if "train" in args.parts:
        by_k = {}
        for log2 in args.k_log2 or plan.train_k_log2:
            print(f"training step K=2^{log2} d={plan.train_dim} batch={plan.train_batch}", flush=True)
            by_k[2**log2] = training_cell(2**log2, plan.train_dim, plan.train_batch, device, args.providers,
                                          repeats, args.budget)
        title = (f"Training step of vqvae-tiny (one Adam step) · batch {plan.train_batch} × 32² "
                 f"→ N={plan.train_batch * 64:,}, d={plan.train_dim} · median ms (min) · peak extra MiB")
        tables.append(pivot_table(title, by_k, "eager quantizer", "lgvq quantizer"))

    if args.quick and not args.write:
        print("\n\n".join(tables))
    else:
        write_results("scale", device, tables)
    return tables


if __name__ == "__main__":
    main()
