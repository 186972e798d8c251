"""The demo's jobs and how they are scheduled: one process per model, the cores split between
them (``lgvq.threads``), each model's later jobs started as soon as it is trained."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from lgvq.demo.assessment import Assessment, assess_job
from lgvq.demo.report import ModelReport
from lgvq.demo.settings import CONFIGS, RUN_FOLDERS
from lgvq.demo.tasks import tasks_job
from lgvq.demo.training import Trained, train_job
from lgvq.threads import threads_per_process, torch_threads


def train_models(out: Path, settings: dict, seed: int, task_budget, progress: bool,
                 parallel: bool) -> list[ModelReport]:
    """Train both models, then assess each and run its tasks.

    In parallel, a pool of one process per model (the cores split between them) runs the
    jobs as they become ready: the plain model trains faster, so its assessment and tasks
    run while the LG model still trains, and once that finishes its assessment and its
    tasks run side by side. Every job keeps its process's share of the cores from start to
    end: a job that took the cores another one freed would have to switch at a fixed step
    (torch's CPU kernels add up in a thread-count-dependent order, so a timing-dependent
    switch would make the numbers depend on timing), and beside a busy process a model on two
    threads trains far slower than on one (``bench.training``). Otherwise every job runs in
    turn in this process. Each job seeds what it draws, so both schedules give the same
    numbers (to float rounding where the thread counts differ).
    """
    folders = {label: out / "runs" / name for label, name in RUN_FOLDERS.items()}
    common = lambda label: (folders[label], settings, seed)  # noqa: E731
    if not parallel:
        trained = {label: train_job(label, *common(label), progress) for label in CONFIGS}
        assessed = {label: assess_job(*common(label), progress) for label in CONFIGS}
        tasks = {label: tasks_job(*common(label), task_budget, settings["tasks"], progress)
                 if task_budget is not None else None for label in CONFIGS}
        return [model_report(label, folders[label], trained[label], assessed[label], tasks[label]) for label in CONFIGS]
    threads = threads_per_process(len(CONFIGS))
    if progress:
        print(f"training {' and '.join(CONFIGS)} in parallel ({threads} torch thread(s) each); each model's "
              "assessment and tasks start when it is trained", flush=True)
    with ProcessPoolExecutor(len(CONFIGS), mp_context=multiprocessing.get_context("spawn")) as pool:
        training = {pool.submit(in_job, threads, train_job, label, *common(label), False): label for label in CONFIGS}
        trained, later = {}, {}
        for future in as_completed(training):
            label = training[future]
            trained[label] = future.result()
            later[label] = (
                pool.submit(in_job, threads, assess_job, *common(label), False),
                pool.submit(in_job, threads, tasks_job, *common(label), task_budget, settings["tasks"], False)
                if task_budget is not None else None,
            )
            if progress:
                print(f"{label} trained in {trained[label].seconds:.0f} s", flush=True)
        return [model_report(label, folders[label], trained[label], later[label][0].result(),
                             later[label][1].result() if later[label][1] is not None else None)
                for label in CONFIGS]


def in_job(threads: int, job, *args):
    """``job(*args)`` in a pool process, on its share of the cores."""
    with torch_threads(threads):
        return job(*args)


def model_report(label: str, folder: Path, trained: Trained, assessed: Assessment, tasks) -> ModelReport:
    return ModelReport(label, str(folder), assessed.result, assessed.own_head, trained.seconds, tasks,
                       trained.heldout, assessed.reconstructions, assessed.similarities)
