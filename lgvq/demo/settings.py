"""The demo's settings: the budget, the two shipped configs it shortens, and the settings
fingerprint (``demo_settings``) that decides whether a seed folder already done can be reused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lgvq.data import load_dataset
from lgvq.experiment.config import ExperimentConfig, config_to_dict, load_config, shipped_configs
from lgvq.experiment.splits import dataset_args
from lgvq.tasks import TaskBudget, task_names


#: The demo's budget, sized for 10 minutes on the 2-core machines of 2026-12-01; 2-core hosts have
#: since differed by 2.4-2.9x on the plain model's training (README: "Demo budget").
DEFAULT_STEPS = 700
PROBE_STEPS = 80
EVAL_SIZE = 256
#: Held-out PSNR is measured this many times during training (the training curves) ...
HELDOUT_POINTS = 5
#: ... on the first this many held-out images.
HELDOUT_IMAGES = 64
#: The tasks of the default demo: the two that read codes to understand an image.
DEMO_TASKS = ("vqa", "captioning")
PREVIEW_IMAGES = 6
#: The two runs are the shipped shapes configs (lgvq.configs); the demo only shortens them.
CONFIGS = {"VQ-VAE": "shapes-vqvae.yaml", "VQ-VAE + LG": "shapes-vqvae-lg.yaml"}
RUN_FOLDERS = {"VQ-VAE": "vq", "VQ-VAE + LG": "lg"}  # under <report>/runs/


def demo_config(label: str, out_dir: Path, steps: int, seed: int, eval_size: int) -> ExperimentConfig:
    return load_config(shipped_configs() / CONFIGS[label], [
        f"train.steps={steps}", f"train.seed={seed}", f"train.out_dir={out_dir}",
        f"train.image_every={steps}", f"train.ckpt_every={steps}", f"data.eval_size={eval_size}",
    ])


def check_seeds(seeds) -> tuple[int, ...]:
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if any(not isinstance(s, int) or isinstance(s, bool) for s in seeds):
        raise TypeError(f"seeds must be ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    return seeds


def demo_settings(steps: int, probe_steps: int, eval_size: int, task_budget, tasks) -> dict:
    """Everything besides the seed that decides a seed's numbers (a reused seed must match)."""
    for name, value in (("steps", steps), ("probe_steps", probe_steps), ("eval_size", eval_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    budget = None if task_budget is None else dataclasses.asdict(check_task_budget(task_budget))
    if tasks is not None:
        unknown = sorted(set(tasks) - set(task_names()))
        if unknown or not tasks:
            raise ValueError(f"tasks must name tasks from {', '.join(task_names())} (or be None: all), got {tasks!r}")
    configs = {label: config_settings(label, steps, eval_size) for label in CONFIGS}
    settings = {"steps": steps, "probe_steps": probe_steps, "eval_size": eval_size, "task_budget": budget,
                "tasks": None if budget is None else list(tasks or task_names()), "configs": configs}
    return json.loads(json.dumps(settings))  # as metrics.json will hold them (tuples become lists)


def config_settings(label: str, steps: int, eval_size: int) -> dict:
    """The training config of one demo model, less its folder and seed: editing a YAML config
    changes the settings, so seeds trained before the edit are not reused."""
    config = config_to_dict(demo_config(label, Path("."), steps, 0, eval_size))
    for key in ("out_dir", "seed"):
        config["train"].pop(key)
    return config


def check_task_budget(budget):
    if not isinstance(budget, TaskBudget):
        raise TypeError(f"task_budget must be a lgvq.tasks.TaskBudget or None, got {type(budget).__name__}")
    return budget


def heldout_set(config: ExperimentConfig):
    return load_dataset(**dataset_args(config, config.data.eval_split, config.data.eval_size))


def task_datasets(config: ExperimentConfig, budget: TaskBudget):
    train_set = load_dataset(**dataset_args(config, config.data.split, config.data.size))
    return train_set, load_dataset(**dataset_args(config, "test", budget.eval_items))
