"""Training one demo model, with its held-out PSNR curve measured on the way."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lgvq.demo.settings import HELDOUT_IMAGES, HELDOUT_POINTS, WIDEN_AT, demo_config, heldout_set
from lgvq.experiment.config import ExperimentConfig
from lgvq.experiment.evaluate import evaluate
from lgvq.experiment.train import train
from lgvq.threads import cpu_cores


def segment_ends(steps: int, points: int) -> list[int]:
    """Steps at which training pauses for a held-out measurement (the last is ``steps``)."""
    return sorted({max(1, round(steps * (i + 1) / points)) for i in range(points)})


@dataclass(frozen=True)
class Widening:
    """A training job's thread count rises to ``threads`` at segment start ``step``, once
    ``freed`` (an Event: a ``multiprocessing.Manager``'s, to reach a pool process) is set.

    The step is fixed and the job waits there for the cores: torch's CPU kernels add up conv
    weight gradients and norms in an order that depends on the thread count, so a switch at
    whatever step the other jobs happened to finish would make the numbers depend on timing.
    """

    step: int
    threads: int
    freed: Any


def widen_step(steps: int, fraction: float) -> int | None:
    """The first segment start (a held-out point) at or after ``fraction`` of ``steps``; None if none."""
    starts = segment_ends(steps, HELDOUT_POINTS)[:-1]
    return next((s for s in starts if s >= fraction * steps), None)


def widening_plan(steps: int, threads: int) -> tuple[int, int] | None:
    """(step, threads): where the widened model's training takes every core; None where there
    is no segment start to switch at or no core to gain."""
    step = widen_step(steps, WIDEN_AT)
    return (step, cpu_cores()) if step is not None and cpu_cores() > threads else None


def train_with_heldout_curve(config: ExperimentConfig, val, progress: bool, widening: Widening | None = None):
    """Train in segments, resuming from each segment's checkpoint (bit-exact), and measure
    held-out PSNR after each; the model's training is the same as in one go."""
    steps, curve, run = config.train.steps, [], None
    heldout = torch.utils.data.Subset(val, range(min(HELDOUT_IMAGES, len(val))))
    ends = segment_ends(steps, HELDOUT_POINTS)
    for i, end in enumerate(ends):
        if widening is not None and (ends[i - 1] if i else 0) == widening.step:
            widening.freed.wait()
            torch.set_num_threads(widening.threads)
        segment = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=end, ckpt_every=end))
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


def train_job(label: str, out_dir: Path, settings: dict, seed: int, progress: bool,
              widening: Widening | None = None) -> Trained:
    """Train one demo model into ``out_dir`` (its held-out curve measured on the way)."""
    config = demo_config(label, out_dir, settings["steps"], seed, settings["eval_size"])
    start = time.perf_counter()
    _, curve = train_with_heldout_curve(config, heldout_set(config), progress, widening)
    return Trained(time.perf_counter() - start, curve)
