"""The several-seed report: every metric's mean ± sd per model and the paired LG − plain
difference (``lgvq.experiment.comparison``)."""

from __future__ import annotations

import torch

from lgvq.demo.report import all_tasks, command, pictures_text, probe_text, setup_text
from lgvq.demo.settings import CONFIGS
from lgvq.demo.verdict import verdict
from lgvq.experiment.comparison import Spread, comparison_table, flatten_tasks, unanimous_summary


def load_line(results: list[dict]) -> str:
    loads = [r["load"] for r in results if r.get("load")]
    cores = [x["other_cores"] for x in loads if x.get("other_cores") is not None]
    averages = [x["load_average"] for x in loads if x.get("load_average") is not None]
    if not cores and not averages:
        return "machine load not recorded"
    parts = []
    if cores:
        parts.append(f"other processes used {min(cores):.1f}–{max(cores):.1f} cores")
    if averages:
        parts.append(f"load average {min(averages):.1f}–{max(averages):.1f}")
    return ", ".join(parts)


def sweep_text(results: list[dict], settings: dict, seconds: float) -> str:
    """The several-seed report: every metric's mean ± sd per model and the paired difference."""
    plain, guided = CONFIGS
    seeds = [r["seed"] for r in results]
    n = len(seeds)
    seed_list = " ".join(map(str, seeds))
    own = [r["own_head"] for r in results]
    parts = [
        f"# lgvq demo: plain VQ vs LG-VQ on the embedded captioned shapes, {n} seeds",
        "",
        *verdict(results),
        "",
        f"Command: `{command(seeds, settings['steps'], all_tasks(settings))}` · {settings['steps']} training "
        f"steps per model · {results[0]['device']} · "
        f"torch {torch.__version__} · this invocation {seconds / 60:.1f} min; per seed "
        + ", ".join(f"{r['seconds'] / 60:.1f}" for r in results) + f" min, while {load_line(results)}.",
        "",
        setup_text(settings["steps"]),
        "",
        f"Each cell is the mean ± sample standard deviation over seeds {seed_list}. A seed fixes the initial "
        f"weights, the data order and, for the tasks, the task networks and sampling, for both models alike, so "
        f"**{guided} − {plain}** is the mean ± sd of the per-seed (paired) difference and the last column counts "
        "the seeds where LG-VQ is strictly better in the metric's direction (↑ higher is better, ↓ lower).",
        "",
        f"## Tokenizers ({settings['eval_size']} held-out images)",
        "",
        comparison_table([r["models"] for r in results], plain, guided),
        "",
        unanimous_summary([r["models"] for r in results], plain, guided),
        "",
        probe_text(settings["probe_steps"]) + " The LG model's own guidance head (trained jointly, not a probe): "
        + spread_line(own, "recall@1_1word", "recall@1, 1 word") + ", "
        + spread_line(own, "word_code_mse", "word–code MSE", 4) + ".",
    ]
    if settings["task_budget"] is not None:
        budget = settings["task_budget"]
        per_seed = [{label: flatten_tasks(r["tasks"][label]) for label in CONFIGS} for r in results]
        parts += [
            "",
            "## Downstream tasks on the frozen codebooks",
            "",
            f"Every task network trains {budget['steps']} steps (batch {budget['batch_size']}, width "
            f"{budget['width']}, depth {budget['depth']}) on the codes of {budget['train_items']} training images "
            f"and is scored on {budget['eval_items']} test images ({', '.join(settings['tasks'])}). Image-generating "
            f"tasks are scored by an attribute classifier trained on real images ({budget['classifier_steps']} "
            "steps): colour/shape recall, and the Fréchet distance in its feature space — not FID. "
            "`reconstruction` is the decoder's ceiling: the test images' own codes, decoded. Semantic synthesis "
            "generates from each test image's semantic map (the shape class of every pixel) pooled onto the code "
            "grid and is scored by layout IoU (where it draws objects vs where the map has them). Unconditional "
            "recall and layout IoU, scored against test scenes it was never told about, are the chance levels "
            "that text-to-image and semantic synthesis should beat.",
            "",
            comparison_table(per_seed, plain, guided),
            "",
            unanimous_summary(per_seed, plain, guided),
        ]
    parts += [
        "",
        "## Per seed",
        "",
        " · ".join(f"[seed {s}](seed-{s}/README.md)" for s in seeds),
        "",
        f"Pictures of seed {seeds[0]}:",
        "",
        *pictures_text(f"seed-{seeds[0]}/", results[0]["caption"]),
    ]
    return "\n".join(parts) + "\n"


def spread_line(results: list[dict], metric: str, name: str, digits: int = 2) -> str:
    values = [r[metric] for r in results if metric in r]
    return f"{name} {Spread.of(values).format(digits)}" if values else f"{name} —"
