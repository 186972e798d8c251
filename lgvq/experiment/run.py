"""A Run: the model, loss and (optional) language guidance one config describes, on its device;
built fresh (``build_run``) or loaded back from a run folder (``load_run``: ``config.json`` +
``checkpoints/``)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lgvq.experiment.checkpoint import latest_checkpoint, load_weights
from lgvq.experiment.config import ExperimentConfig, config_from_dict
from lgvq.experiment.run_folder import saved_config
from lgvq.guidance import LanguageGuidance
from lgvq.models.registry import build_loss, build_model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per torchrun rank
    return torch.device(name)


@dataclass
class Run:
    """Everything a loop (training or evaluation) needs, built from one config."""

    config: ExperimentConfig
    device: torch.device
    model: torch.nn.Module
    loss: torch.nn.Module
    guidance: LanguageGuidance | None
    world: int = 1  # data-parallel ranks
    # DistributedDataParallel wrappers under torchrun (data_parallel), by modules() name. The
    # training step calls them; checkpoints, evaluation and the optimizers use the bare modules.
    replicas: dict[str, torch.nn.Module] = field(default_factory=dict)

    def modules(self) -> dict[str, torch.nn.Module]:
        mods = {"model": self.model, "loss": self.loss}
        if self.guidance is not None:
            mods["guidance"] = self.guidance
        return mods

    def replica(self, name: str) -> torch.nn.Module:
        """The module ``name`` as a training step calls it: its DDP wrapper when there is one."""
        return self.replicas.get(name, self.modules()[name])


def build_run(config: ExperimentConfig) -> Run:
    """Model, loss and (optional) guidance for ``config``, on its device."""
    device = resolve_device(config.train.device)
    model = build_model(config.model.name, **config.model.overrides)
    loss = build_loss(config.model.name, **config.model.loss)
    guidance = None
    if config.guidance.enabled:
        from lgvq.text import load_text_encoder

        encoder = load_text_encoder(
            config.guidance.text_encoder, max_length=config.guidance.max_length, cache=config.guidance.cache_captions
        )
        guidance = LanguageGuidance(
            model.config.embed_dim, model.config.latent_size, encoder,
            weights=tuple(config.guidance.weights), temperature=config.guidance.temperature,
            mtp_input=config.guidance.mtp_input, flavour=config.guidance.flavour, layers=config.guidance.layers,
            heads=config.guidance.heads, backend=model.config.backend,
        )
    run = Run(config, device, model, loss, guidance)
    for module in run.modules().values():
        module.to(device)
    return run


def run_config(run_dir: str | Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run folder (no config.json); pass train.out_dir of a run")
    return config_from_dict(saved_config(path))


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
