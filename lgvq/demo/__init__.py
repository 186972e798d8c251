"""``lgvq demo``: plain VQ vs LG-VQ on the embedded captioned shapes, with a report.

Both models share everything (architecture, data order, seed, step budget); the LG model
adds LanguageGuidance. They train at the same time as two processes (the cores split
between them, ``lgvq.threads``), which then take each model's later jobs as it is trained
(``lgvq.demo.jobs``). Both are evaluated on held-out images, an alignment
probe (a fresh guidance head trained on each *frozen* codebook with the same budget and
seed) measures how well language aligns with each codebook, so the model trained without
language is measured the same way, and the two tasks that read codes to understand an
image, VQA and captioning, train on each frozen codebook (``--tasks``: every task). The
report folder holds ``README.md`` (verdict, metrics, settings, timings with the machine
load), labelled reconstructions, a codebook-usage plot, a word–code similarity heatmap
and the training curves (train losses, LG losses, held-out PSNR).

With several seeds (``lgvq demo --seeds 0 1 2``) each seed gets that report in its own
``seed-N`` folder, and the top ``README.md`` gives every metric's mean ± standard deviation
and the paired LG − plain difference (``lgvq.experiment.comparison``). A seed folder whose
``metrics.json`` was written with the same settings is reused, so an interrupted sweep
resumes, and seeds can be run by separate processes into one folder.

Modules, in the order a seed runs: ``settings`` (budget, configs, the settings fingerprint),
``training``, ``assessment`` and ``tasks`` (the three jobs of a model), ``jobs`` (process pool
and thread split), ``pictures``, ``report`` and ``verdict`` (one seed's README), ``seed`` (one
seed end to end), ``reuse`` (seed folders already done), ``multi_seed`` (the several-seed
README) and ``sweep`` (``run_demo``). The names below were ``lgvq.demo``'s when it was one
module and stay importable from it.
"""

from lgvq.demo.assessment import Assessment, assess_job
from lgvq.demo.report import TASKS_HEADING, ModelReport, metrics_table
from lgvq.demo.seed import run_seed
from lgvq.demo.settings import (
    CONFIGS,
    DEFAULT_STEPS,
    DEMO_TASKS,
    EVAL_SIZE,
    HELDOUT_IMAGES,
    HELDOUT_POINTS,
    PREVIEW_IMAGES,
    PROBE_STEPS,
    RUN_FOLDERS,
    demo_config,
)
from lgvq.demo.sweep import run_demo
from lgvq.demo.tasks import tasks_job
from lgvq.demo.training import Trained, train_job
from lgvq.demo.verdict import MULTI_SEED_RESULTS, VERDICT_SCORES

__all__ = [
    "CONFIGS", "DEFAULT_STEPS", "DEMO_TASKS", "EVAL_SIZE", "HELDOUT_IMAGES", "HELDOUT_POINTS", "MULTI_SEED_RESULTS",
    "PREVIEW_IMAGES", "PROBE_STEPS", "RUN_FOLDERS", "TASKS_HEADING", "VERDICT_SCORES", "Assessment", "ModelReport",
    "Trained", "assess_job", "demo_config", "metrics_table", "run_demo", "run_seed", "tasks_job", "train_job",
]
