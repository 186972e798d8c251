"""Straight-through vector quantization, forward + backward: lgvq against taming, torch.compile, peers.

    python -m bench.quantize                   # default shape sets for the device
    python -m bench.quantize --device cpu --quick
    python -m bench.quantize --n 16384 --k 16384 --d 64 --dtype fp32

One timed step is: zero the gradients, quantize z (N, d) against a learnable codebook
(K, d), then backward of ``(z_q * g).sum() + loss`` (g a fixed upstream gradient).

Providers (all measured in one process):

- eager: taming VectorQuantizer2 (legacy=False) written out: dense N×K distances, argmin,
  gather, loss = beta·mean((z_q.detach() − z)²) + mean((z_q − z.detach())²), straight-through.
- torch.compile(eager): the same forward through torch.compile (backward by AOTAutograd).
- lgvq torch / lgvq triton: ``vector_quantize(..., backend=...)``; triton needs CUDA.
- vector-quantize-pytorch: ``VectorQuantize(learnable_codebook=True, ema_update=False,
  rotation_trick=False, commitment_weight=beta)`` in training mode — its forward builds the
  N×K distances and a dense N×K one-hot that it multiplies with the codebook; its loss is
  beta·mse(q, z) with gradients both ways (a different weighting, same work).

Throughput counts 2·N·K·d FLOP (the search) for every provider. Indices are checked
against exact fp64 distances on a row sample, and the taming-convention providers'
gradients against eager's on the first fp32 shape (in bf16 eager's own rounding picks
other codes on near-ties, so gradients are not comparable there).
"""

from __future__ import annotations

import torch

from bench.common import (
    Case,
    Row,
    format_table,
    measure_many,
    shape_bench_main,
    skipped,
    triton_skip_reason,
)
from bench.nearest import (
    CPU_SHAPES,
    CUDA_SHAPES,
    QUICK_SHAPES,
    check_optimal,
    compiled_or_note,
)
from lgvq.ops.quantize import vector_quantize

BETA = 0.25


def eager_quantize(z: torch.Tensor, embedding: torch.Tensor, beta: float = BETA):
    """taming-transformers VectorQuantizer2.forward (legacy=False) on flat z (N, d)."""
    d = (
        torch.sum(z**2, dim=1, keepdim=True)
        + torch.sum(embedding**2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", z, embedding.t())
    )
    min_encoding_indices = torch.argmin(d, dim=1)
    z_q = embedding[min_encoding_indices]
    loss = beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
    z_q = z + (z_q - z).detach()
    return z_q, min_encoding_indices, loss


def lgvq_quantize(backend: str):
    def fwd(z, embedding):
        return vector_quantize(z, embedding, BETA, "l2", backend=backend)
    return fwd


def vqp_forward(codebook: torch.Tensor):
    """A forward (z, codebook) -> (z_q, idx, loss) through vector-quantize-pytorch, or None."""
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        return None, None
    k, d = codebook.shape
    vq = VectorQuantize(dim=d, codebook_size=k, kmeans_init=False, learnable_codebook=True, ema_update=False,
                        rotation_trick=False, commitment_weight=BETA).to(codebook.device).train()
    with torch.no_grad():
        vq._codebook.embed.copy_(codebook.float()[None])

    def fwd(z, _embedding):
        z_q, idx, loss = vq(z[None])
        return z_q[0], idx[0], loss
    return fwd, vq._codebook.embed


def make_step(fwd, z: torch.Tensor, codebook: torch.Tensor, g: torch.Tensor):
    def step():
        z.grad = None
        codebook.grad = None
        z_q, idx, loss = fwd(z, codebook)
        ((z_q * g).sum() + loss).backward()
        return idx
    return step


def grads_note(step, z, codebook, ref: tuple[torch.Tensor, torch.Tensor] | None) -> str:
    if ref is None:
        return ""
    step()
    tol = {"rtol": 1e-3, "atol": 1e-5} if z.dtype == torch.float32 else {"rtol": 5e-2, "atol": 1e-2}
    ok = torch.allclose(z.grad.float(), ref[0], **tol) and torch.allclose(codebook.grad.float(), ref[1], **tol)
    return "" if ok else "WRONG: gradients differ from eager"


def run_shape(n: int, k: int, d: int, dtype: torch.dtype, device: torch.device, *, repeats: int,
              budget_s: float, compile_timeout: float, providers: set[str] | None, check_grads: bool) -> str:
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(n, d, generator=gen).to(device, dtype).requires_grad_()
    codebook = torch.randn(k, d, generator=gen).to(device, dtype).requires_grad_()
    g = torch.randn(n, d, generator=gen).to(device, dtype)
    flops = 2.0 * n * k * d
    nk_bytes = n * k * z.element_size()
    entries: list[Case | Row] = []
    grads_checked: set[str] = set()  # providers following taming's convention: compared with eager

    def want(name: str) -> bool:
        return providers is None or name in providers

    def case(name: str, step, compare: bool = True, **kw) -> None:
        entries.append(Case(name, step, flops=flops, repeats=repeats, **kw))
        if compare:
            grads_checked.add(name)

    if want("eager"):
        case("eager", make_step(eager_quantize, z, codebook, g), needs_bytes=4 * nk_bytes, warmup=1)
    if want("compile"):
        name = "torch.compile(eager)"
        fn, note = compiled_or_note(eager_quantize, (z, codebook), compile_timeout)
        if fn is None:
            entries.append(skipped(name, note, flops))
        else:
            case(name, make_step(fn, z, codebook, g), note=note, needs_bytes=4 * nk_bytes, warmup=1)
    if want("torch"):
        case("lgvq torch", make_step(lgvq_quantize("torch"), z, codebook, g))
    if want("triton"):
        why = triton_skip_reason(device)
        if why is not None:
            entries.append(skipped("lgvq triton", why, flops))
        else:
            case("lgvq triton", make_step(lgvq_quantize("triton"), z, codebook, g))
    if want("vqp"):
        name = "vector-quantize-pytorch"
        fwd, embed = vqp_forward(codebook.detach())
        if fwd is None:
            entries.append(skipped(name, "not installed", flops))
        else:
            zf = z.detach().float().requires_grad_()
            case(name, make_step(fwd, zf, embed, g.float()), compare=False,
                 note="train mode: cdist + dense one-hot matmul; its own loss weighting",
                 needs_bytes=6 * n * k * 4, warmup=1)

    cases = [e for e in entries if isinstance(e, Case)]
    measured = iter(measure_many(cases, device, budget_s=budget_s))
    rows = [e if isinstance(e, Row) else next(measured) for e in entries]
    steps = {c.provider: c.fn for c in cases}
    ref_grads = None
    if check_grads and "eager" in steps and any(r.provider == "eager" and r.seconds for r in rows):
        steps["eager"]()
        ref_grads = (z.grad.float().clone(), codebook.grad.float().clone())
    for row in rows:
        if row.seconds is None:
            continue
        step = steps[row.provider]
        problems = [check_optimal(step(), z.detach(), codebook.detach())]
        if check_grads and row.provider in grads_checked and row.provider != "eager":
            problems.append(grads_note(step, z, codebook, ref_grads))
        row.note = "; ".join(s for s in (row.note, *problems) if s)
    torch._dynamo.reset()

    title = f"N={n:,}, K={k:,}, d={d} · {str(dtype).removeprefix('torch.')} · forward + backward"
    return format_table(title, rows)


def main(argv: list[str] | None = None) -> list[str]:
    def shape(n, k, d, dtype, device, *, first, **options):
        # gradients checked once, in fp32 (in bf16 eager's rounding picks other codes on near-ties)
        return run_shape(n, k, d, dtype, device, check_grads=first and dtype == torch.float32, **options)

    return shape_bench_main("quantize", __doc__.split("\n")[0], shape,
                            {"quick": QUICK_SHAPES, "cpu": CPU_SHAPES, "cuda": CUDA_SHAPES}, "eager,compile,torch,triton,vqp", argv)


if __name__ == "__main__":
    main()
