"""Loading trained runs back: a run folder (``config.json`` + ``checkpoints/``) → a Run."""

from __future__ import annotations

import json
from pathlib import Path

from lgvq.experiment.checkpoint import latest_checkpoint, load_weights
from lgvq.experiment.config import ExperimentConfig, config_from_dict
from lgvq.experiment.train import Run, build_run


def run_config(run_dir: str | Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run folder (no config.json); pass train.out_dir of a run")
    return config_from_dict(json.loads(path.read_text()))


def load_run(run_dir: str | Path, device: str | None = None) -> Run:
    """The run's model, loss and guidance with the weights of its latest checkpoint, in eval mode."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    if device is not None:
        config.train.device = device
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}")
    run = build_run(config)
    load_weights(ckpt, run.modules())
    for module in run.modules().values():
        module.eval()
    return run
