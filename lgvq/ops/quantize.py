"""Straight-through vector quantization: ``vector_quantize(z, codebook, beta, metric)``.

Forward: e = codebook[nearest_code(z)], z_q = e in z's dtype, and
``loss = beta * mean((z - sg(e))^2) + mean((sg(z) - e)^2)`` (taming's VectorQuantizer2
with legacy=False, CVQ-VAE). Backward: z receives the straight-through gradient plus the
commitment term; the codebook receives only the codebook-loss gradient.
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
    """Reference over flat z (N, d): plain torch ops, differentiated by autograd."""
    with torch.no_grad():
        _, idx = search(z.detach(), codebook.detach(), offsets, "torch")
    e = codebook[idx]
    acc = torch.promote_types(z.dtype, torch.float32)
    loss = beta * F.mse_loss(z.to(acc), e.detach().to(acc)) + F.mse_loss(z.detach().to(acc), e.to(acc))
    return straight_through(z, e), idx, loss


class VectorQuantizeFunction(torch.autograd.Function):
    """Fused Triton path: search, gather + squared error, and a one-pass backward."""

    @staticmethod
    def forward(ctx, z, codebook, offsets, beta, num_splits):
        from lgvq.kernels.quantize import gather_and_sqerr

        _, idx = search(z, codebook, offsets, "triton", num_splits)
        z = z.contiguous()
        codebook = codebook.contiguous()
        z_q, sqerr = gather_and_sqerr(z, codebook, idx)
        loss = sqerr.sum() * ((1.0 + beta) / z.numel())
        ctx.save_for_backward(z, codebook, idx)
        ctx.beta = beta
        ctx.mark_non_differentiable(idx)
        return z_q, idx, loss

    @staticmethod
    def backward(ctx, grad_zq, _grad_idx, grad_loss):
        from lgvq.kernels.quantize import quantize_backward

        z, codebook, idx = ctx.saved_tensors
        grad_z, grad_codebook = quantize_backward(
            z, codebook, idx, grad_zq, grad_loss.float().reshape(1), ctx.beta, ctx.needs_input_grad[1]
        )
        return grad_z, grad_codebook, None, None, None


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
        z_q, idx, loss = VectorQuantizeFunction.apply(flat, codes, offsets, float(beta), num_splits)
    return z_q.view(z.shape), idx.view(z.shape[:-1]), loss
