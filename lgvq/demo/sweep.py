"""``run_demo``: the demo over one seed or several (each in its own ``seed-N`` folder, reused when
its settings match), with the report on top."""

from __future__ import annotations

import time
from pathlib import Path

from lgvq.demo.multi_seed import sweep_text
from lgvq.demo.reuse import reuse_or_run
from lgvq.demo.seed import run_seed
from lgvq.demo.settings import DEFAULT_STEPS, DEMO_TASKS, EVAL_SIZE, PROBE_STEPS, check_seeds, demo_settings
from lgvq.experiment.checkpoint import atomic_write_text
from lgvq.tasks import TaskBudget


def run_demo(out: Path, steps: int | None = None, seeds: tuple[int, ...] | list[int] = (0,),
             task_budget=TaskBudget(), tasks: tuple[str, ...] | None = DEMO_TASKS, progress: bool = True,
             probe_steps: int = PROBE_STEPS, eval_size: int = EVAL_SIZE, parallel: bool = True) -> Path:
    """Train, evaluate and compare; returns the path of the report's README.md.

    task_budget: the ``lgvq.tasks.TaskBudget`` of the downstream tasks run on both frozen
    codebooks (None: no tasks); tasks: their names (None: every task). parallel: train the
    two models as two processes, each on half of the cores (False: one after the other, in
    this process).
    """
    seeds = check_seeds(seeds)
    settings = demo_settings(DEFAULT_STEPS if steps is None else steps, probe_steps, eval_size, task_budget, tasks)
    if len(seeds) == 1:
        return run_seed(out, settings, seeds[0], task_budget, progress, parallel)
    start = time.perf_counter()
    results = [reuse_or_run(out / f"seed-{seed}", settings, seed, task_budget, progress, parallel) for seed in seeds]
    readme = out / "README.md"
    atomic_write_text(readme, sweep_text(results, settings, time.perf_counter() - start))
    return readme
