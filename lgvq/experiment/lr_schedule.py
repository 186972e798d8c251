"""The learning-rate schedule of a training run: constant, or a cosine decay.

    lr(t) = lr₀ · (r + (1 − r) · ½ (1 + cos(π · min(t, T) / T)))

with lr₀ the optimizer's starting lr, r = ``optim.final_lr_ratio`` and T = ``optim.schedule_steps``
(the run's ``train.steps`` when unset). The lr is a function of the step alone and is set before
every step, so a resumed run follows the same schedule bit for bit; a run trained in segments
(``lgvq.demo.training``) pins T to the whole run's steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module (through the config's SCHEDULES) before torch
    import torch

SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, horizon: int, final_ratio: float) -> float:
    """lr(step) / lr₀: 1 throughout for "constant"; for "cosine" from 1 at step 0 down to
    ``final_ratio`` at ``horizon``, and ``final_ratio`` after it."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    progress = min(step, horizon) / horizon
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_horizon(config) -> int:
    """T of an ExperimentConfig (the config module imports this one, so it is not named here)."""
    return config.optim.schedule_steps or config.train.steps


def set_lr(optimizers: dict[str, torch.optim.Optimizer], config, step: int) -> None:
    """Set every optimizer's lr for ``step`` from its starting lr (``initial_lr``, saved with its state)."""
    factor = lr_factor(config.optim.lr_schedule, step, schedule_horizon(config), config.optim.final_lr_ratio)
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            # checkpoints from before the schedule existed hold no initial_lr: their lr was constant
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
