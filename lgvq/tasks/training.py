"""One optimisation loop for every task network, driven by a fixed number of steps.

Tasks are compared across VQ models under the same budget, so the loop is deliberately
plain and fully seeded: minibatch rows come from a private generator, the schedule depends
only on the step count, and nothing stops early.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lgvq.checks import check_positive


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "lr"):
            check_positive(name, getattr(self, name))
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 10% (nanoGPT's schedule, scaled to the budget)."""
    warmup = max(1, int(settings.warmup_fraction * settings.steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def train_network(
    network: nn.Module,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    num_items: int,
    settings: TrainSettings,
) -> list[float]:
    """Run ``settings.steps`` AdamW steps on ``batch_loss(rows)`` for random rows of
    ``range(num_items)``; return each step's loss. The network is left in eval mode."""
    check_positive("num_items", num_items)
    rows_generator = torch.Generator().manual_seed(settings.seed)
    parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=settings.lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
    losses = []
    network.train()
    for _ in range(settings.steps):
        rows = torch.randint(num_items, (settings.batch_size,), generator=rows_generator)
        loss = batch_loss(rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    network.eval()
    return losses
