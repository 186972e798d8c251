"""Straight-through vector quantization: ``vector_quantize(z, codebook, beta, metric)``.

Forward: e = codebook[nearest_code(z)], z_q = e in z's dtype, and
``loss = beta * mean((z - sg(e))^2) + mean((sg(z) - e)^2)`` (taming's VectorQuantizer2
with legacy=False, CVQ-VAE). Backward: z receives the straight-through gradient plus the
commitment term; the codebook receives only the codebook-loss gradient.

The torch path is the search op plus plain torch ops (autograd differentiates them, and
torch.compile traces them). The fused Triton path is two registered ops,
``lgvq::vector_quantize_triton`` and its backward, joined by ``register_autograd``, each with a
fake implementation, so it compiles without a graph break and replays in CUDA graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lgvq.checks import check_positive
from lgvq.ops.backend import resolve_backend
from lgvq.ops.nearest import (
    check_code_sq_norms,
    check_codebook_inputs,
    normalize_for_metric,
    score_offsets,
    search,
)


def straight_through(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Forward value exactly ``e`` (in z's dtype), gradient to z the identity, none to e."""
    return e.detach().to(z.dtype) + (z - z.detach())


def vector_quantize_torch(
    z: torch.Tensor, codebook: torch.Tensor, beta: float, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference over flat z (N, d): plain torch ops, differentiated by autograd.

    The gather is ``F.embedding``, not ``codebook[idx]``: the latter's backward
    (``index_put_(accumulate=True)``) adds the rows with parallel atomics on the CPU once
    N·d ≥ 32,768 and more than one thread runs, so the codebook gradient, and every step after
    it, changed from run to run. Embedding's CPU backward gives each thread a range of codes and
    adds each code's rows in index order: the same sum on any number of threads.
    """
    with torch.no_grad():
        _, idx = search(z.detach(), codebook.detach(), offsets, "torch")
    e = F.embedding(idx, codebook)
    acc = torch.promote_types(z.dtype, torch.float32)
    loss = beta * F.mse_loss(z.to(acc), e.detach().to(acc)) + F.mse_loss(z.detach().to(acc), e.to(acc))
    return straight_through(z, e), idx, loss


@torch.library.custom_op("lgvq::vector_quantize_triton", mutates_args=())
def vector_quantize_triton(
    z: torch.Tensor, codebook: torch.Tensor, offsets: torch.Tensor, beta: float, num_splits: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused Triton path over flat z (N, d): search, then gather + squared error in one pass."""
    from lgvq.kernels.quantize import gather_and_sqerr

    _, idx = search(z, codebook, offsets, "triton", num_splits)
    z_q, sqerr = gather_and_sqerr(z.contiguous(), codebook.contiguous(), idx)
    return z_q, idx, sqerr.sum() * ((1.0 + beta) / z.numel())


@vector_quantize_triton.register_fake
def _vector_quantize_triton_fake(z, codebook, offsets, beta, num_splits):
    return torch.empty_like(z), z.new_empty(z.shape[0], dtype=torch.int64), z.new_empty((), dtype=torch.float32)


@torch.library.custom_op("lgvq::vector_quantize_triton_backward", mutates_args=())
def vector_quantize_triton_backward(
    z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor, grad_zq: torch.Tensor, grad_loss: torch.Tensor,
    beta: float, code_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dz, dcodebook) in one pass; dcodebook is empty (0,) unless ``code_grad``."""
    from lgvq.kernels.quantize import quantize_backward

    grad_z, grad_codebook = quantize_backward(
        z.contiguous(), codebook.contiguous(), idx, grad_zq, grad_loss.float().reshape(1), beta, code_grad
    )
    return grad_z, grad_codebook if code_grad else z.new_empty(0)


@vector_quantize_triton_backward.register_fake
def _vector_quantize_triton_backward_fake(z, codebook, idx, grad_zq, grad_loss, beta, code_grad):
    return torch.empty_like(z, memory_format=torch.contiguous_format), (
        torch.empty_like(codebook, memory_format=torch.contiguous_format) if code_grad else z.new_empty(0)
    )


def _save_for_quantize_backward(ctx, inputs, output):
    z, codebook, _offsets, beta, _num_splits = inputs
    ctx.save_for_backward(z, codebook, output[1])
    ctx.beta = beta


def _quantize_backward(ctx, grad_zq, _grad_idx, grad_loss):
    z, codebook, idx = ctx.saved_tensors
    code_grad = ctx.needs_input_grad[1]
    grad_z, grad_codebook = vector_quantize_triton_backward(z, codebook, idx, grad_zq, grad_loss, ctx.beta, code_grad)
    return grad_z, (grad_codebook if code_grad else None), None, None, None


vector_quantize_triton.register_autograd(_quantize_backward, setup_context=_save_for_quantize_backward)


def vector_quantize(
    z: torch.Tensor,
    codebook: torch.Tensor,
    beta: float = 0.25,
    metric: str = "l2",
    *,
    backend: str = "auto",
    code_sq_norms: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize every vector of ``z`` (..., d) to its nearest code, with straight-through gradients.

    Returns ``(z_q, idx, loss)``: z_q with z's shape and dtype (forward value = codebook[idx];
    for ``metric="cos"`` z and the codebook are L2-normalised first), idx int64 of shape
    ``z.shape[:-1]``, loss an fp32 scalar (see the module docstring). ``code_sq_norms`` are
    optional cached |e_k|^2; ``num_splits`` forces the Triton codebook split (for tests).
    """
    check_codebook_inputs("z", z, codebook, metric)
    check_code_sq_norms(code_sq_norms, codebook, metric)
    check_positive("beta", beta, allow_zero=True)
    backend = resolve_backend(backend, z, codebook)
    flat, codes = normalize_for_metric(z.reshape(-1, z.shape[-1]), codebook, metric)
    offsets = score_offsets(codes.detach(), metric, code_sq_norms)
    if backend == "torch":
        z_q, idx, loss = vector_quantize_torch(flat, codes, beta, offsets)
    else:
        z_q, idx, loss = vector_quantize_triton(flat, codes, offsets, float(beta), num_splits)
    return z_q.view(z.shape), idx.view(z.shape[:-1]), loss
