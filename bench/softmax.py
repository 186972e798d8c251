"""Codebook softmax, forward + backward: IBQ with the entropy loss, and LFQ's entropy, against eager.

    python -m bench.softmax                    # default shape sets for the device
    python -m bench.softmax --device cpu --quick
    python -m bench.softmax --n 4096 --k 262144 --d 64 --providers torch

Two tables per (N, K, d):

IBQ + entropy (Open-MAGVIT2's IndexPropagationQuantize with use_entropy_loss). One timed step
zeroes the gradients, quantizes z (N, d) against a learnable codebook (K, d) and runs the
backward of ``(z_q·g).sum() + quant_loss + sample_entropy - avg_entropy`` (g a fixed upstream
gradient), where quant_loss = mean((z_q - z)²) + mean((sg(E[idx]) - z)²) + β·mean((E[idx] - sg(z))²)
and the entropies are MAGVIT-2's at τ = 0.01.

- eager: the peer's formulas as written: logits = z·Eᵀ, soft = softmax(logits), argmax,
  a dense one-hot, one_hot = hard - sg(soft) + soft, z_q = one_hot·E, E[idx] = hard·E; the
  entropy from softmax(logits/τ), log_softmax(logits/τ + ε) and the batch mean of the probabilities.
- torch.compile(eager): the same function through torch.compile.
- sdpa: the attention formulation: the soft path softmax(z·Eᵀ)·sg(E) through
  ``F.scaled_dot_product_attention`` (q = z, k = E, v = sg(E), scale 1); SDPA exposes neither the
  argmax nor the log-sum-exp nor column sums, so the argmax and the entropy stay eager (dense).
- lgvq torch / lgvq triton: ``index_backprop_quantize`` + ``codebook_entropy``.

LFQ entropy (when K is a power of two, b = log2 K bits, x (N, b)): one step is the backward of
``sample_entropy - avg_entropy`` over all 2^b codes, logits 2·x·Cᵀ at τ = 0.01.
- eager: Open-MAGVIT2's LFQ entropy_loss on its full codebook buffer C (2^b, b);
- torch.compile(eager); lgvq torch / lgvq triton: ``lfq_entropy``.

Throughput counts 2·N·K·d FLOP (one logits product). Peak extra memory includes the
codebook's gradient (K·d elements), allocated inside each step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.common import Case, Row, available_memory, format_table, measure_many, shape_bench_main, skipped, triton_skip_reason
from bench.nearest import compiled_or_note
from lgvq.ops.softmax import codebook_entropy, index_backprop_quantize, lfq_codes, lfq_entropy

BETA = 0.25
TEMPERATURE = 0.01
EPS = 1e-5
CPU_SHAPES = [(4096, 8192, 64), (4096, 262144, 64)]
CUDA_SHAPES = [(4096, 8192, 64), (16384, 65536, 256), (16384, 262144, 256)]
QUICK_SHAPES = [(1024, 2048, 64)]


def eager_entropy(logits: torch.Tensor):
    """MAGVIT-2's entropy pieces over dense logits (N, K)."""
    probs = F.softmax(logits / TEMPERATURE, -1)
    log_probs = F.log_softmax(logits / TEMPERATURE + EPS, -1)
    avg_probs = probs.mean(dim=0)
    avg_entropy = -torch.sum(avg_probs * torch.log(avg_probs + EPS))
    sample_entropy = torch.mean(-torch.sum(probs * log_probs, -1))
    return sample_entropy, avg_entropy


def quant_loss(z, z_q, hard_q):
    return (torch.mean((z_q - z) ** 2) + torch.mean((hard_q.detach() - z) ** 2)
            + BETA * torch.mean((hard_q - z.detach()) ** 2))


def eager_ibq(z: torch.Tensor, embedding: torch.Tensor):
    """Open-MAGVIT2's IBQ forward with the entropy loss, on flat z (N, d): the total loss and idx."""
    logits = z @ embedding.t()
    soft_one_hot = F.softmax(logits, dim=1)
    ind = soft_one_hot.max(1, keepdim=True)[1]
    hard_one_hot = torch.zeros_like(logits).scatter_(1, ind, 1.0)
    one_hot = hard_one_hot - soft_one_hot.detach() + soft_one_hot
    z_q = one_hot @ embedding
    z_q_2 = hard_one_hot @ embedding
    sample_entropy, avg_entropy = eager_entropy(logits)
    return z_q, quant_loss(z, z_q, z_q_2) + sample_entropy - avg_entropy


def sdpa_ibq(z: torch.Tensor, embedding: torch.Tensor):
    """The soft path as attention (q = z, k = E, v = sg(E)); argmax and entropy dense."""
    soft = F.scaled_dot_product_attention(z[None], embedding[None], embedding.detach()[None], scale=1.0)[0]
    logits = z @ embedding.t()
    idx = logits.detach().argmax(dim=1)
    hard_q = embedding[idx]
    z_q = hard_q + (soft - soft.detach())
    sample_entropy, avg_entropy = eager_entropy(logits)
    return z_q, quant_loss(z, z_q, hard_q) + sample_entropy - avg_entropy


def lgvq_ibq(backend: str):
    def fwd(z, embedding):
        z_q, idx = index_backprop_quantize(z, embedding, backend=backend)
        sample_entropy, avg_entropy = codebook_entropy(z, embedding, temperature=TEMPERATURE, backend=backend)
        return z_q, quant_loss(z, z_q, embedding[idx]) + sample_entropy - avg_entropy
    return fwd


def eager_lfq(x: torch.Tensor, codebook: torch.Tensor):
    sample_entropy, avg_entropy = eager_entropy(2 * x @ codebook.t())
    return sample_entropy - avg_entropy


def lgvq_lfq(backend: str):
    def fwd(x, _codebook):
        sample_entropy, avg_entropy = lfq_entropy(x, temperature=TEMPERATURE, backend=backend)
        return sample_entropy - avg_entropy
    return fwd


def ibq_step(fwd, z, codebook, g):
    def step():
        z.grad = None
        codebook.grad = None
        z_q, loss = fwd(z, codebook)
        ((z_q * g).sum() + loss).backward()
    return step


def lfq_step(fwd, x, codebook):
    def step():
        x.grad = None
        fwd(x, codebook).backward()
    return step


def _table(title: str, entries: list, device) -> str:
    cases = [e for e in entries if isinstance(e, Case)]
    measured = iter(measure_many(cases, device))
    rows = [e if isinstance(e, Row) else next(measured) for e in entries]
    torch._dynamo.reset()
    return format_table(title, rows)


def _providers(entries, want, eager_fn, extra, lgvq_factory, make, flops, nk_bytes, repeats, device,
               compile_timeout, example):
    """Append the eager, compile, ``extra`` (name, fn, bytes needed), lgvq torch and triton cases
    that ``want`` selects; ``make(fn)`` turns a forward into a timed step."""
    if want("eager"):
        entries.append(Case("eager", make(eager_fn), flops=flops, repeats=repeats, needs_bytes=8 * nk_bytes, warmup=1))
    if want("compile"):
        fn, note = compiled_or_note(eager_fn, example, compile_timeout) if 8 * nk_bytes < _free(device) else (
            None, "skipped: the eager working set does not fit")
        entries.append(skipped("torch.compile(eager)", note, flops) if fn is None else
                       Case("torch.compile(eager)", make(fn), flops=flops, repeats=repeats, note=note,
                            needs_bytes=8 * nk_bytes, warmup=1))
    for name, fn, needs in extra:
        if want(name):
            entries.append(Case(name, make(fn), flops=flops, repeats=repeats, needs_bytes=needs, warmup=1))
    if want("torch"):
        entries.append(Case("lgvq torch", make(lgvq_factory("torch")), flops=flops, repeats=repeats, warmup=1))
    if want("triton"):
        why = triton_skip_reason(device)
        entries.append(skipped("lgvq triton", why, flops) if why else
                       Case("lgvq triton", make(lgvq_factory("triton")), flops=flops, repeats=repeats))


def _free(device) -> int:
    return available_memory(device) or 2**62


def run_shape(n: int, k: int, d: int, dtype: torch.dtype, device: torch.device, *, repeats: int,
              budget_s: float, compile_timeout: float, providers: set[str] | None) -> str:
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = (0.1 * torch.randn(n, d, generator=gen)).to(device, dtype).requires_grad_()
    codebook = (0.1 * torch.randn(k, d, generator=gen)).to(device, dtype).requires_grad_()
    g = torch.randn(n, d, generator=gen).to(device, dtype)
    nk_bytes = n * k * z.element_size()

    def want(name: str) -> bool:
        return providers is None or name in providers

    entries: list[Case | Row] = []
    _providers(entries, want, eager_ibq, [("sdpa", sdpa_ibq, 6 * nk_bytes)], lgvq_ibq,
               lambda fn: ibq_step(fn, z, codebook, g), 2.0 * n * k * d, nk_bytes, repeats, device,
               compile_timeout, (z, codebook))
    kind = str(dtype).removeprefix("torch.")
    tables = [_table(f"IBQ + entropy · N={n:,}, K={k:,}, d={d} · {kind} · forward + backward", entries, device)]

    bits = int(math.log2(k))
    if 2**bits == k and bits < 32:
        x = (0.05 * torch.randn(n, bits, generator=gen)).to(device, dtype).requires_grad_()
        lfq_codebook = lfq_codes(0, k, bits, device, dtype)
        entries = []
        _providers(entries, want, eager_lfq, [], lgvq_lfq, lambda fn: lfq_step(fn, x, lfq_codebook), 2.0 * n * k * bits,
                   nk_bytes, repeats, device, compile_timeout, (x, lfq_codebook))
        tables.append(_table(f"LFQ entropy · N={n:,}, 2^{bits} codes · {kind} · forward + backward", entries, device))
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> list[str]:
    def shape(n, k, d, dtype, device, *, first, **options):
        return run_shape(n, k, d, dtype, device, **options)

    return shape_bench_main("softmax", __doc__.split("\n")[0], shape,
                            {"quick": QUICK_SHAPES, "cpu": CPU_SHAPES, "cuda": CUDA_SHAPES},
                            "eager,compile,sdpa,torch,triton", argv)


if __name__ == "__main__":
    main()
