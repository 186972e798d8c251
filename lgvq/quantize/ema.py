"""The EMA codebook update (van den Oord et al. 2017, appendix; Laplace smoothing as in Sonnet
and vector-quantize-pytorch), shared by every quantizer that keeps EMA statistics.

With this step's per-code counts n_k and sums s_k (summed over ranks), decay γ and K codes:

    N_k ← γ·N_k + (1 − γ)·n_k          S_k ← γ·S_k + (1 − γ)·s_k
    Ñ_k = (N_k + ε) / (Σ_j N_j + K·ε) · Σ_j N_j      (Laplace smoothing: no code divides by 0)
    e_k = S_k / Ñ_k

The smoothing matters while the counts are small (early steps, rare codes): without it a code
that no vector chose yet divides by (almost) zero.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def ema_(average: torch.Tensor, value: torch.Tensor, decay: float, weight: torch.Tensor | None = None) -> None:
    """average ← average + (1 − decay)·w·(value − average), in place (``lerp_``, as
    vector-quantize-pytorch); w = 1, or a per-code ``weight`` shaped like the leading dimensions
    of ``average`` (w = 0 leaves a code's statistics as they are)."""
    step = 1.0 - decay
    if weight is not None:
        step = step * weight.to(average.dtype).reshape(*weight.shape, *(1,) * (average.dim() - weight.dim()))
    average.lerp_(value.to(average.dtype), step)


def laplace_smoothed_codes(counts: torch.Tensor, sums: torch.Tensor, eps: float) -> torch.Tensor:
    """Codes e = S / Ñ from EMA counts N (..., K) and sums S (..., K, d); leading dimensions are
    independent codebooks (heads, residual stages)."""
    total = counts.sum(dim=-1, keepdim=True)
    smoothed = (counts + eps) / (total + counts.shape[-1] * eps) * total
    return sums / smoothed[..., None]
