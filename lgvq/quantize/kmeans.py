"""k-means codebook initialisation on the fused search and segment-sum ops.

Memory stays O(N + K): assignment is ``nearest_code`` (never an N×K matrix) and the
centroid update is ``code_counts_and_sums``.
"""

from __future__ import annotations

import torch

from lgvq.ops import code_counts_and_sums, nearest_code


def sample_rows(x: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` rows of x, without replacement when there are enough rows."""
    n = x.shape[0]
    if n >= count:
        pick = torch.randperm(n, generator=generator, device="cpu")[:count]
    else:
        pick = torch.randint(0, n, (count,), generator=generator, device="cpu")
    return x[pick.to(x.device, non_blocking=True)]  # pageable source: safe, and no stream sync


def kmeans_plus_plus(x: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding: each next seed is drawn with probability ∝ squared distance to the
    nearest seed so far. ``count`` sequential O(N·d) steps, no N×K matrix."""
    first = torch.randint(0, x.shape[0], (1,), generator=generator).item()
    seeds = [x[first]]
    nearest = (x - x[first]).pow(2).sum(1)
    for _ in range(count - 1):
        if float(nearest.sum()) <= 0:  # fewer distinct points than seeds: repeat points
            pick = torch.randint(0, x.shape[0], (1,), generator=generator).item()
        else:
            pick = torch.multinomial(nearest.cpu(), 1, generator=generator).item()
        seeds.append(x[pick])
        nearest = torch.minimum(nearest, (x - x[pick]).pow(2).sum(1))
    return torch.stack(seeds)


#: Above this many codes k-means++ seeding (K sequential steps) costs more than it helps;
#: large codebooks are seeded from random rows and rely on dead-code restarts.
MAX_PLUS_PLUS_CODES = 4096


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    num_codes: int,
    iters: int = 10,
    metric: str = "l2",
    *,
    backend: str = "auto",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on x (N, d). Returns (centroids (K, d) fp32, counts (K,) of the last step).

    Seeds with k-means++ for up to ``MAX_PLUS_PLUS_CODES`` codes, else K random rows. A centroid that loses all its points keeps its previous
    position (it will be handled by dead-code restarts during training). For ``"cos"``
    the centroids are renormalised each step (spherical k-means).
    """
    x = x.float()
    if num_codes <= MAX_PLUS_PLUS_CODES:
        centroids = kmeans_plus_plus(x, num_codes, generator)
    else:
        centroids = sample_rows(x, num_codes, generator).clone()
    counts = torch.zeros(num_codes, device=x.device)
    for _ in range(iters):
        idx, _ = nearest_code(x, centroids, metric, backend=backend)
        counts, sums = code_counts_and_sums(x, idx, num_codes, backend=backend)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        if metric == "cos":
            centroids = torch.nn.functional.normalize(centroids, dim=-1)
    return centroids, counts
