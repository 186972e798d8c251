"""The downstream tasks on a trained demo model's frozen codebook."""

from __future__ import annotations

from pathlib import Path

from lgvq.demo.assessment import text_encoder
from lgvq.demo.settings import task_datasets
from lgvq.experiment.run import load_run
from lgvq.tasks import TaskBudget, prepare_task_data, run_task, task_names


def tasks_job(out_dir: Path, settings: dict, seed: int, task_budget: TaskBudget, tasks,
              progress: bool) -> dict[str, dict[str, float]]:
    """Train and score the downstream tasks on a trained demo model's frozen codebook."""
    run = load_run(out_dir)
    train_set, test_set = task_datasets(run.config, task_budget)
    data = prepare_task_data(train_set, test_set, text_encoder(), task_budget, seed)
    return score_tasks(run.model, tasks or task_names(), train_set, test_set, data, task_budget, seed)


def score_tasks(model, tasks, train_set, test_set, data, budget: TaskBudget, seed: int) -> dict[str, dict[str, float]]:
    """Each task's scores on ``model``'s frozen codes; ``data`` is the tasks' shared ``prepare_task_data``."""
    return {t: run_task(t, model, train_set, test_set, text_encoder(), budget, seed, data=data) for t in tasks}
