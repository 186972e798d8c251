"""The running codebook-usage statistic: which codes were picked within the last W training steps.

Two buffers on the owning quantizer: ``step`` (training steps taken) and ``last_used`` (K,), the
step at which each code was last picked (−1: never). Updates are masked writes, so a step makes
no host sync; the counts passed in are already summed over ranks, so every rank agrees.
"""

from __future__ import annotations

import torch


def mark_used_(last_used: torch.Tensor, step: torch.Tensor, counts: torch.Tensor) -> None:
    """Advance ``step`` by one and stamp it on every code with a positive count, in place."""
    step += 1
    last_used.copy_(torch.where(counts > 0, step, last_used))


def recent_usage(last_used: torch.Tensor, step: torch.Tensor, window: int) -> torch.Tensor:
    """Fraction of codes picked at least once in the last ``window`` steps (a 0-dim tensor)."""
    recent = (last_used >= 0) & (step - last_used < window)
    return recent.float().mean()
