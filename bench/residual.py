"""Residual VQ training step, forward + backward + EMA statistics: lgvq against eager, torch.compile, vqp.

    python -m bench.residual                   # default shapes for the device
    python -m bench.residual --device cpu --quick
    python -m bench.residual --shapes audio-d128-L8

One timed step: quantize x (N, d) through L stages of K codes (straight-through gradients),
backward of ``(quantized * g).sum() + Σ_l commitment_l`` (g a fixed upstream gradient), then
every stage's EMA codebook update from the counts and sums of the rows assigned to each code
(decay 0.8, Laplace smoothing; vqp's defaults). The codebooks are EMA buffers (no gradient).

Providers (all measured in one process, timed calls interleaved):

- eager: L stages of the taming formula on the residual: dense N×K distances
  |x|² + |e|² − 2 x·e, argmin, gather, commitment mean((x_l − sg(q_l))²), straight-through
  output, the next residual minus the detached output; EMA statistics through an (N, K)
  one-hot (counts = its column sums, sums = one-hotᵀ · x_l), as eager EMA code does.
- torch.compile(eager): the same forward and statistics through torch.compile.
- lgvq torch / lgvq triton: ``residual_quantize`` + ``residual_code_statistics``; triton needs CUDA.
- vector-quantize-pytorch: ``ResidualVQ(..., rotation_trick=False)`` in training mode with its
  own EMA (decay 0.8), from the same codebooks.

Cosine shapes ("factorised" codes, EnCodec/DAC style) normalise every stage's residual and the
codes. Throughput counts the search, 2·N·K·d·L FLOP, for every provider. Notes give the share
of rows whose L indices agree with eager's (fp32 near-ties may resolve differently and then
cascade through the later stages).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.common import (
    Case,
    Row,
    bench_device,
    format_table,
    measure_many,
    memory_skip_reason,
    run_options,
    skipped,
    triton_skip_reason,
    write_results,
)
from bench.nearest import compiled_or_note
from lgvq.ops import residual_code_statistics, residual_quantize

DECAY = 0.8
EPS = 1e-5  # vqp's Laplace smoothing constant
AGREEMENT_ROWS = 4096
#: name → (N, L, K, d, metric): audio codecs (SoundStream/EnCodec/DAC: 8–32 stages of 1,024
#: codes, d = 128 or factorised d = 8 unit codes) and an RQ-VAE image tokenizer.
SHAPES = {
    "audio-d128-L8": (16384, 8, 1024, 128, "l2"),
    "audio-d128-L32": (16384, 32, 1024, 128, "l2"),
    "audio-d8-L8-cos": (16384, 8, 1024, 8, "cos"),
    "audio-d8-L32-cos": (16384, 32, 1024, 8, "cos"),
    "image-d256-L4": (65536, 4, 16384, 256, "l2"),
    "quick": (2048, 4, 256, 32, "l2"),
}
DEFAULTS = {
    "cpu": ["audio-d128-L8", "audio-d128-L32", "audio-d8-L8-cos", "audio-d8-L32-cos", "image-d256-L4"],
    "cuda": ["audio-d128-L8", "audio-d128-L32", "audio-d8-L8-cos", "audio-d8-L32-cos", "image-d256-L4"],
}


class EMACodebooks:
    """L codebooks updated by exponential moving averages of per-code counts and sums."""

    def __init__(self, codebooks: torch.Tensor):
        self.codes = codebooks.clone()
        self.cluster_size = torch.ones(codebooks.shape[:2], device=codebooks.device)
        self.embed_avg = codebooks.clone()

    def update(self, counts: torch.Tensor, sums: torch.Tensor, cos: bool) -> None:
        self.cluster_size.lerp_(counts, 1 - DECAY)
        self.embed_avg.lerp_(sums, 1 - DECAY)
        total = self.cluster_size.sum(dim=1, keepdim=True)
        smoothed = (self.cluster_size + EPS) / (total + self.codes.shape[1] * EPS) * total
        codes = self.embed_avg / smoothed.unsqueeze(-1)
        self.codes.copy_(F.normalize(codes, dim=-1) if cos else codes)


def eager_residual(x: torch.Tensor, codebooks: torch.Tensor, cos: bool):
    """L eager stages: (quantized, indices (N, L), commitment losses (L,), counts (L, K), sums (L, K, d))."""
    residual, out = x, torch.zeros_like(x)
    indices, losses, counts, sums = [], [], [], []
    for codes in codebooks:
        inp = F.normalize(residual, dim=-1) if cos else residual
        dist = inp.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * inp @ codes.t()
        idx = dist.argmin(dim=1)
        q = codes[idx]
        losses.append(torch.mean((q.detach() - inp) ** 2))
        stage_out = inp + (q - inp).detach()
        out = out + stage_out
        residual = residual - stage_out.detach()
        one_hot = F.one_hot(idx, codes.shape[0]).type(inp.dtype)
        counts.append(one_hot.sum(0))
        sums.append(one_hot.t() @ inp.detach())
        indices.append(idx)
    return out, torch.stack(indices, 1), torch.stack(losses), torch.stack(counts), torch.stack(sums)


def lgvq_residual(backend: str):
    def fwd(x, codebooks, cos):
        metric = "cos" if cos else "l2"
        quantized, indices, losses = residual_quantize(x, codebooks, metric=metric, backend=backend)
        counts, sums = residual_code_statistics(x.detach(), codebooks, indices, metric=metric, backend=backend)
        return quantized, indices, losses, counts, sums
    return fwd


def make_step(fwd, x: torch.Tensor, state: EMACodebooks, g: torch.Tensor, cos: bool):
    def step():
        x.grad = None
        quantized, indices, losses, counts, sums = fwd(x, state.codes, cos)
        ((quantized * g).sum() + losses.sum()).backward()
        with torch.no_grad():
            state.update(counts, sums, cos)
        return indices
    return step


def vqp_step(x: torch.Tensor, codebooks: torch.Tensor, g: torch.Tensor, cos: bool):
    """A training step through vector-quantize-pytorch's ResidualVQ, or None when not installed."""
    try:
        from vector_quantize_pytorch import ResidualVQ
    except ImportError:
        return None
    num_stages, k, d = codebooks.shape
    rvq = ResidualVQ(dim=d, num_quantizers=num_stages, codebook_size=k, decay=DECAY, kmeans_init=False,
                     use_cosine_sim=cos, rotation_trick=False, commitment_weight=1.0).to(x.device).train()
    with torch.no_grad():
        for layer, codes in zip(rvq.layers, codebooks):
            layer._codebook.embed.copy_(codes[None])
            layer._codebook.embed_avg.copy_(codes[None])
    xf = x.detach().float().requires_grad_()

    def step():
        xf.grad = None
        quantized, indices, losses = rvq(xf[None])
        ((quantized[0] * g).sum() + losses.sum()).backward()
        return indices[0]
    return step


def run_shape(name: str, device: torch.device, *, repeats: int, budget_s: float, compile_timeout: float,
              providers: set[str] | None) -> str:
    n, num_stages, k, d, metric = SHAPES[name]
    cos = metric == "cos"
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    codebooks = torch.randn(num_stages, k, d, generator=gen).to(device)
    codebooks = F.normalize(codebooks, dim=-1) if cos else codebooks
    g = torch.randn(n, d, generator=gen).to(device)
    flops = 2.0 * n * k * d * num_stages
    # The dense providers' working set: eager and vqp each peaked at ~11 (N, K) fp32 tensors at
    # audio-d128-L8 (distances, their terms, the int64 one-hot and its float copy).
    dense_bytes = 12 * n * k * 4
    entries: list[Case | Row] = []

    def want(provider: str) -> bool:
        return providers is None or provider in providers

    def case(provider: str, step, **kw) -> None:
        entries.append(Case(provider, step, flops=flops, repeats=repeats, **kw))

    def provider_step(fwd):
        return make_step(fwd, x, EMACodebooks(codebooks), g, cos)

    if want("eager"):
        case("eager", provider_step(eager_residual), needs_bytes=dense_bytes, warmup=1)
    if want("compile"):
        # compiling runs the graph: check its memory first (the warm-up call is not timed)
        fn, note = None, memory_skip_reason(device, dense_bytes)
        if note is None:
            fn, note = compiled_or_note(eager_residual, (x, codebooks, cos), compile_timeout)
        if fn is None:
            entries.append(skipped("torch.compile(eager)", note, flops))
        else:
            case("torch.compile(eager)", provider_step(fn), note=note, needs_bytes=dense_bytes, warmup=1)
    if want("torch"):
        case("lgvq torch", provider_step(lgvq_residual("torch")), warmup=1)
    if want("triton"):
        why = triton_skip_reason(device)
        if why is not None:
            entries.append(skipped("lgvq triton", why, flops))
        else:
            case("lgvq triton", provider_step(lgvq_residual("triton")), warmup=1)
    if want("vqp"):
        step = vqp_step(x, codebooks, g, cos)
        if step is None:
            entries.append(skipped("vector-quantize-pytorch", "not installed", flops))
        else:
            case("vector-quantize-pytorch", step, note="ResidualVQ train mode, EMA", needs_bytes=dense_bytes,
                 warmup=1)

    cases = [e for e in entries if isinstance(e, Case)]
    measured = iter(measure_many(cases, device, budget_s=budget_s))
    rows = [e if isinstance(e, Row) else next(measured) for e in entries]
    _note_agreement(rows, x, codebooks, cos)
    torch._dynamo.reset()
    title = (f"{name}: N={n:,}, L={num_stages}, K={k:,}, d={d}, {metric} · float32 · "
             "forward + backward + EMA statistics")
    return format_table(title, rows, also=("vector-quantize-pytorch", "torch.compile(eager)"))


def _note_agreement(rows: list[Row], x, codebooks, cos: bool) -> None:
    """lgvq's indices from the initial codebooks against eager's on the first ``AGREEMENT_ROWS``
    rows (rows are independent; the whole of N would hold eager's N×K tensors), as a share of
    rows. The timed steps have since moved their own EMA copies of the codebooks."""
    metric = "cos" if cos else "l2"
    sample = x.detach()[:AGREEMENT_ROWS]
    with torch.no_grad():
        reference = eager_residual(sample, codebooks, cos)[1]
        for row in rows:
            backend = {"lgvq torch": "torch", "lgvq triton": "triton"}.get(row.provider)
            if backend is None or row.seconds is None:
                continue
            indices = residual_quantize(sample, codebooks, metric=metric, backend=backend)[1]
            agree = (indices == reference).all(dim=1).float().mean().item()
            if agree < 1.0:
                share = f"indices as eager's on {100 * agree:.2f}% of the first {len(sample):,} rows"
                row.note = "; ".join(s for s in (row.note, share) if s)


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="one small shape, few repeats, no results file")
    p.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 3)")
    p.add_argument("--budget", type=float, default=30.0, help="seconds of timed repeats per slow provider")
    p.add_argument("--compile-timeout", type=float, default=300.0, help="seconds allowed for torch.compile")
    p.add_argument("--providers", default=None, help="comma list of eager,compile,torch,triton,vqp (default: all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = p.parse_args(argv)
    device = bench_device(args.device, args.threads)
    names = ["quick"] if args.quick else (args.shapes.split(",") if args.shapes else DEFAULTS[device.type])
    options = run_options(args)
    tables = []
    for name in names:
        print(name, SHAPES[name], flush=True)
        tables.append(run_shape(name, device, **options))
    if args.quick:
        print("\n\n".join(tables))
    else:
        write_results("residual", device, tables)
    return tables


if __name__ == "__main__":
    main()
