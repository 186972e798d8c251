"""Seed reuse: a seed folder whose ``metrics.json`` holds the same settings is not trained again;
tasks it lacks run on its saved models."""

from __future__ import annotations

import json
from pathlib import Path

from lgvq.demo.assessment import text_encoder
from lgvq.demo.report import TASKS_HEADING, task_table
from lgvq.demo.seed import run_seed
from lgvq.demo.settings import CONFIGS, RUN_FOLDERS, task_datasets
from lgvq.demo.tasks import score_tasks
from lgvq.experiment.checkpoint import atomic_write_text
from lgvq.experiment.run import load_run
from lgvq.tasks import TaskBudget, prepare_task_data


def reuse_or_run(folder: Path, settings: dict, seed: int, task_budget, progress: bool, parallel: bool) -> dict:
    path = folder / "metrics.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings and saved.get("seed") == seed:
            print(f"seed {seed}: reusing {folder} (same settings; delete it to rerun)")
            if task_budget is not None:
                add_missing_tasks(folder, saved, task_budget, settings["tasks"])
            return saved
    run_seed(folder, settings, seed, task_budget, progress, parallel)
    return json.loads(path.read_text())


def add_missing_tasks(folder: Path, saved: dict, budget: TaskBudget, tasks: list[str]) -> None:
    """Run the tasks a reused seed lacks (added to lgvq after it ran) on its saved models, and
    save them into its metrics.json and README, so a new task never forces retraining."""
    missing = [t for t in tasks if any(t not in saved["tasks"][label] for label in CONFIGS)]
    if not missing:
        return
    print(f"seed {saved['seed']}: running {', '.join(missing)} on its saved models")
    runs = {label: load_run(folder / "runs" / name) for label, name in RUN_FOLDERS.items()}
    train_set, test_set = task_datasets(runs[next(iter(CONFIGS))].config, budget)
    data = prepare_task_data(train_set, test_set, text_encoder(), budget, saved["seed"])
    for label, run in runs.items():
        saved["tasks"][label].update(score_tasks(run.model, missing, train_set, test_set, data, budget, saved["seed"]))
    readme = folder / "README.md"
    head = readme.read_text().split("\n" + TASKS_HEADING)[0].rstrip("\n")
    atomic_write_text(readme, f"{head}\n\n{TASKS_HEADING}\n\n{task_table(saved['tasks'])}\n")
    atomic_write_text(folder / "metrics.json", json.dumps(saved, indent=2))
