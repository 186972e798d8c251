"""The demo's jobs and how they are scheduled: one process per model, the cores split between
them (``lgvq.threads``), each model's later jobs started as soon as it is trained, and the LG
model's training widened onto the cores the plain model's jobs free, at a fixed step."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from lgvq.demo.assessment import Assessment, assess_job
from lgvq.demo.report import ModelReport
from lgvq.demo.settings import CONFIGS, RUN_FOLDERS, WIDENED
from lgvq.demo.tasks import tasks_job
from lgvq.demo.training import Trained, Widening, train_job, widening_plan
from lgvq.threads import threads_per_process, torch_threads


def train_models(out: Path, settings: dict, seed: int, task_budget, progress: bool,
                 parallel: bool) -> list[ModelReport]:
    """Train both models, then assess each and run its tasks.

    In parallel, a pool of one process per model (the cores split between them) runs the
    jobs as they become ready: the plain model trains faster, so its assessment and tasks
    run while the LG model still trains, and once that finishes its assessment and its
    tasks run side by side. From a fixed step (``widening_plan``) the LG model's training
    takes every core, once the plain model's jobs are done. Otherwise every job runs in turn
    in this process. Each job seeds what it draws, so both schedules give the same numbers
    (to float rounding: the thread counts differ).
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
    plan = widening_plan(settings["steps"], threads)
    if progress:
        wide = f"; {WIDENED} on {plan[1]} threads from step {plan[0]}" if plan else ""
        print(f"training {' and '.join(CONFIGS)} in parallel ({threads} torch thread(s) each{wide}); each model's "
              "assessment and tasks start when it is trained", flush=True)
    with multiprocessing.Manager() as manager, \
            ProcessPoolExecutor(len(CONFIGS), mp_context=multiprocessing.get_context("spawn")) as pool:
        freed = manager.Event()  # set when every job but the widened training is done
        widening = Widening(*plan, freed) if plan else None
        try:
            training = {pool.submit(in_job, threads, train_job, label, *common(label), False,
                                    widening if label == WIDENED else None): label for label in CONFIGS}
            trained, later = {}, {}
            for future in as_completed(training):
                label = training[future]
                trained[label] = future.result()
                later[label] = (
                    pool.submit(in_job, threads, assess_job, *common(label), False),
                    pool.submit(in_job, threads, tasks_job, *common(label), task_budget, settings["tasks"], False)
                    if task_budget is not None else None,
                )
                if label != WIDENED:
                    set_when_done([f for f in later[label] if f is not None], freed)
                if progress:
                    print(f"{label} trained in {trained[label].seconds:.0f} s", flush=True)
            return [model_report(label, folders[label], trained[label], later[label][0].result(),
                                 later[label][1].result() if later[label][1] is not None else None)
                    for label in CONFIGS]
        finally:
            freed.set()  # a failed job must not leave the widened training waiting


def set_when_done(futures, event) -> None:
    """Set ``event`` once every one of ``futures`` has finished (or failed), without blocking
    (the pool's own thread runs the callbacks, so they are done before the pool shuts down)."""
    remaining, lock = set(futures), threading.Lock()

    def done(future):
        with lock:
            remaining.discard(future)
            last = not remaining
        if last:
            event.set()

    for future in futures:
        future.add_done_callback(done)


def in_job(threads: int, job, *args):
    """``job(*args)`` in a pool process, on its share of the cores."""
    with torch_threads(threads):
        return job(*args)


def model_report(label: str, folder: Path, trained: Trained, assessed: Assessment, tasks) -> ModelReport:
    return ModelReport(label, str(folder), assessed.result, assessed.own_head, trained.seconds, tasks,
                       trained.heldout, assessed.reconstructions, assessed.similarities)
