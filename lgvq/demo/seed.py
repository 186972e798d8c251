"""One seed of the demo: both models trained, assessed and tasked, then its pictures, its report
and, last, its ``metrics.json`` (what a later sweep reuses)."""

from __future__ import annotations

import json
from pathlib import Path

from lgvq.demo.jobs import train_models
from lgvq.demo.pictures import save_pictures
from lgvq.demo.report import device_description, report_text
from lgvq.demo.settings import CONFIGS, demo_config, heldout_set
from lgvq.experiment.checkpoint import atomic_write_text
from lgvq.threads import LoadMeter


def run_seed(out: Path, settings: dict, seed: int, task_budget, progress: bool, parallel: bool = True) -> Path:
    """One seed's full demo report in ``out``; ``metrics.json`` is written last, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    meter = LoadMeter().start()
    reports = train_models(out, settings, seed, task_budget, progress, parallel)
    load = meter.stop()
    config = demo_config(next(iter(CONFIGS)), out, settings["steps"], seed, settings["eval_size"])
    val = heldout_set(config)
    save_pictures(reports, val, out)
    tasks = {r.label: r.tasks for r in reports} if task_budget is not None else None
    metrics = {
        "settings": settings,
        "seed": seed,
        "seconds": load.seconds,
        "load": load.as_dict(),
        "device": device_description(parallel),
        "caption": val[0]["caption"],
        "models": {r.label: {**r.result.as_dict(), "train_seconds": r.seconds} for r in reports},
        "heldout": {r.label: r.heldout for r in reports},
        "own_head": next(r.own_head.as_dict() for r in reports if r.own_head is not None),
        "tasks": tasks,
    }
    readme = out / "README.md"
    readme.write_text(report_text(reports, metrics, load.describe()))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return readme
