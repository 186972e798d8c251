"""Collectives that keep the quantizer's non-gradient state identical on every rank.

Each helper is a no-op outside an initialised process group, so single-process code
calls them unconditionally.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(*tensors: torch.Tensor) -> None:
    """In-place sum over ranks (EMA counts and sums, usage counts)."""
    if is_distributed():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``t`` over ranks (the global batch's entropy sums).

    Its backward sums the ranks' upstream gradients: when every rank applies the same loss to
    the sum, each receives world_size × the single-process gradient for its own rows, which
    DDP's averaging of gradients over ranks turns back into exactly that gradient.
    """
    if not is_distributed():
        return t
    from torch.distributed.nn.functional import all_reduce  # differentiable; not loaded by plain runs

    return all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_(*tensors: torch.Tensor, src: int = 0) -> None:
    """In-place copy of rank ``src``'s tensors to every rank (random draws made on one rank)."""
    if is_distributed():
        for t in tensors:
            dist.broadcast(t, src=src)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of x (N_r, d) concatenated in rank order (k-means init, restarts).

    Ranks may hold different N; rows are padded to the largest N for the collective.
    """
    if not is_distributed():
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    largest = int(max(s.item() for s in sizes))
    padded = torch.zeros((largest, *x.shape[1:]), device=x.device, dtype=x.dtype)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])
