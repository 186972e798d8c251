"""Training one demo model, with its held-out PSNR curve measured on the way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lgvq.demo.settings import HELDOUT_IMAGES, HELDOUT_POINTS, demo_config, heldout_set
from lgvq.experiment.config import ExperimentConfig, config_with
from lgvq.experiment.evaluate import evaluate
from lgvq.experiment.lr_schedule import schedule_horizon
from lgvq.experiment.train import train


def segment_ends(steps: int, points: int) -> list[int]:
    """Steps at which training pauses for a held-out measurement (the last is ``steps``)."""
    return sorted({max(1, round(steps * (i + 1) / points)) for i in range(points)})


def train_with_heldout_curve(config: ExperimentConfig, val, progress: bool):
    """Train in segments, resuming from each segment's checkpoint (bit-exact), and measure
    held-out PSNR after each; the model's training is the same as in one go (the lr schedule
    spans the whole run, not each segment)."""
    steps, curve, run = config.train.steps, [], None
    heldout = torch.utils.data.Subset(val, range(min(HELDOUT_IMAGES, len(val))))
    ends = segment_ends(steps, HELDOUT_POINTS)
    whole = config_with(config, optim={"schedule_steps": schedule_horizon(config)})
    for i, end in enumerate(ends):
        segment = config_with(whole, train={"steps": end, "ckpt_every": end})
        # the first segment starts afresh (a seed is rerun only when its settings changed)
        run = train(segment, resume=i > 0, progress=progress, existing="refuse" if i else "overwrite")
        psnr = evaluate(run.model, heldout, None, device=run.device, progress=False).psnr
        curve.append({"step": end, "psnr": psnr})
    return run, curve


@dataclass
class Trained:
    """What a training job sends back."""

    seconds: float  # training only
    heldout: list[dict]  # [{"step", "psnr"}] during training


def train_job(label: str, out_dir: Path, settings: dict, seed: int, progress: bool) -> Trained:
    """Train one demo model into ``out_dir`` (its held-out curve measured on the way)."""
    config = demo_config(label, out_dir, settings["steps"], seed, settings["eval_size"])
    start = time.perf_counter()
    _, curve = train_with_heldout_curve(config, heldout_set(config), progress)
    return Trained(time.perf_counter() - start, curve)
