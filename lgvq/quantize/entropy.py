"""MAGVIT-2's entropy loss pieces for a batch, on this rank's rows or on the global batch.

The softmax ops (``lgvq.ops.softmax``) return additive sums over rows: ΣH (the rows' softmax
entropies) and P (K,), the column sums of the probabilities. From them

    sample entropy = ΣH / N,    codebook entropy = −Σ_k p̄_k·log(p̄_k + 1e-5),  p̄ = P / N.

Per device (the peers' behaviour) N and the sums are this rank's. With ``global_batch=True`` the
sums and N are summed over ranks first (``sum_over_ranks``, differentiable), so the codebook
entropy is that of the global batch's average probabilities — a different loss from the average
of per-rank codebook entropies — and, after DDP averages gradients over ranks, every parameter
gets the gradient a single process would compute on the global batch.
"""

from __future__ import annotations

import torch

from lgvq.ops.softmax import entropy_from_sums
from lgvq.quantize.distributed import is_distributed, sum_over_ranks


def batch_entropies(
    entropy_sum: torch.Tensor, probability_sums: torch.Tensor, rows: int, *, global_batch: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample entropy, codebook entropy) from a rank's sums over ``rows`` rows (see the module docs)."""
    if global_batch and is_distributed():
        entropy_sum, probability_sums = sum_over_ranks(entropy_sum), sum_over_ranks(probability_sums)
        rows = sum_over_ranks(torch.tensor(float(rows), device=probability_sums.device))
    return entropy_from_sums(entropy_sum, probability_sums, rows)
