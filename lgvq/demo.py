"""``lgvq demo``: plain VQ vs LG-VQ on the embedded captioned shapes, with a report.

Both models share everything (architecture, data order, seed, step budget); the LG model
adds LanguageGuidance. Both are then evaluated on held-out images, and an alignment
probe (a fresh guidance head trained on each *frozen* codebook with the same budget and
seed) measures how well language aligns with each codebook, so the model trained without
language is measured the same way. The report folder holds ``README.md`` (metrics table,
settings, timings), reconstruction grids, a codebook-usage plot, a word–code similarity
heatmap and the training curves.

With several seeds (``lgvq demo --seeds 0 1 2``) each seed gets that report in its own
``seed-N`` folder, and the top ``README.md`` gives every metric's mean ± standard deviation
and the paired LG − plain difference (``lgvq.comparison``). A seed folder whose
``metrics.json`` was written with the same settings is reused, so an interrupted sweep
resumes, and seeds can be run by separate processes into one folder.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lgvq.comparison import Spread, comparison_table, flatten_tasks, unanimous_summary
from lgvq.config import ExperimentConfig, config_to_dict, load_config, shipped_configs
from lgvq.data import load_dataset
from lgvq.evaluate import EvalResult, evaluate, fit_alignment_probe
from lgvq.logger import read_log
from lgvq.runs import load_run
from lgvq.tasks import TaskBudget, prepare_task_data, run_all_tasks, run_task, task_names
from lgvq.train import Run, dataset_args, train
from lgvq.guidance import LanguageGuidance
from lgvq.visualize import save_image_grid, save_similarity_heatmaps, save_training_curves, save_usage_histogram

#: The demo's budget, sized for about 10 minutes on 2 CPU cores (README: "Demo budget").
DEFAULT_STEPS = 400
PROBE_STEPS = 80
EVAL_SIZE = 256
#: The two runs are the shipped shapes configs (lgvq.configs); the demo only shortens them.
CONFIGS = {"VQ-VAE": "shapes-vqvae.yaml", "VQ-VAE + LG": "shapes-vqvae-lg.yaml"}
RUN_FOLDERS = {"VQ-VAE": "vq", "VQ-VAE + LG": "lg"}  # under <report>/runs/
TASKS_HEADING = "## Downstream tasks (same budget and seed for both codebooks)"


@dataclass
class ModelReport:
    label: str
    run: Run
    result: EvalResult  # its own evaluation, with the alignment probe's metrics
    probe: LanguageGuidance  # the alignment probe fitted on its frozen codes
    own_head: EvalResult | None  # LG model only: metrics of the guidance head it trained with
    seconds: float


def demo_config(label: str, out_dir: Path, steps: int, seed: int, eval_size: int) -> ExperimentConfig:
    return load_config(shipped_configs() / CONFIGS[label], [
        f"train.steps={steps}", f"train.seed={seed}", f"train.out_dir={out_dir}",
        f"train.image_every={steps}", f"train.ckpt_every={steps}", f"data.eval_size={eval_size}",
    ])


def _train_and_evaluate(label: str, out_dir: Path, steps: int, probe_steps: int, seed: int, eval_size: int,
                        progress: bool) -> ModelReport:
    config = demo_config(label, out_dir, steps, seed, eval_size)
    start = time.perf_counter()
    run = train(config, progress=progress, existing="overwrite")  # a seed is rerun only when its settings changed
    seconds = time.perf_counter() - start
    val = load_dataset(**dataset_args(config, config.data.eval_split, config.data.eval_size))
    encoder = run.guidance.text_encoder if run.guidance is not None else _text_encoder()
    probe = fit_alignment_probe(run.model, val, encoder, steps=probe_steps, seed=seed, device=run.device,
                                progress=progress)
    result = evaluate(run.model, val, probe, seed=seed, device=run.device, progress=progress)
    own = None
    if run.guidance is not None:
        own = evaluate(run.model, val, run.guidance, seed=seed, device=run.device, progress=progress)
    return ModelReport(label, run, result, probe, own, seconds)


_ENCODER = None


def _text_encoder():
    global _ENCODER
    if _ENCODER is None:
        from lgvq.text import load_text_encoder

        _ENCODER = load_text_encoder(cache=True)
    return _ENCODER


def _fmt(value, digits=2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def metrics_table(reports: list[ModelReport]) -> str:
    lines = [
        "| model | PSNR ↑ | SSIM ↑ | codebook usage % ↑ | perplexity ↑ | recall@1, 1 word ↑ | recall@1, 3 words ↑ | word–code MSE ↓ | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        m = r.result
        lines.append(
            f"| {r.label} | {m.psnr:.2f} | {m.ssim:.4f} | {m.usage_percent:.1f} | {m.perplexity:.1f} | "
            f"{_fmt(m.recall_at_1.get(1))} | {_fmt(m.recall_at_1.get(3))} | {_fmt(m.word_code_mse, 4)} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def _own_head_line(reports: list[ModelReport]) -> str:
    lg = next(r for r in reports if r.own_head is not None)
    m = lg.own_head
    return (
        f"The LG model's own guidance head (trained jointly, not a probe): recall@1 "
        f"{_fmt(m.recall_at_1.get(1))} % (1 word) / {_fmt(m.recall_at_1.get(3))} % (3 words), "
        f"word–code MSE {_fmt(m.word_code_mse, 4)}."
    )


@torch.no_grad()
def _heatmap(reports: list[ModelReport], caption: str, image: torch.Tensor, path: Path) -> Path:
    """Word–word similarity of one caption next to the similarity of the codes each word matches."""
    encoder = _text_encoder()
    text = encoder([caption])
    words = ~text.tokens.special_mask[0]
    labels = encoder.tokenizer.convert_ids_to_tokens(text.tokens.ids[0][words].tolist())
    panels = {}
    for report in reports:
        z_q = report.run.model(image[None].to(report.run.device)).z_q
        word_sim, code_sim, _ = report.probe.word_code_similarities(z_q, text)
        if not panels:
            panels["words (text encoder)"] = word_sim[0][words][:, words].cpu().numpy()
        panels[f"matched codes: {report.label}"] = code_sim[0][words][:, words].cpu().numpy()
    return save_similarity_heatmaps(panels, labels, path)


def run_demo(out: Path, steps: int | None = None, seeds: tuple[int, ...] | list[int] = (0,),
             task_budget=None, progress: bool = True, probe_steps: int = PROBE_STEPS,
             eval_size: int = EVAL_SIZE) -> Path:
    """Train, evaluate and compare; returns the path of the report's README.md.

    task_budget: a ``lgvq.tasks.TaskBudget`` to also run every downstream task on both frozen
    codebooks (None: no tasks).
    """
    seeds = _check_seeds(seeds)
    settings = _settings(steps or DEFAULT_STEPS, probe_steps, eval_size, task_budget)
    if len(seeds) == 1:
        return run_seed(out, settings, seeds[0], task_budget, progress)
    start = time.perf_counter()
    results = [_reuse_or_run(out / f"seed-{seed}", settings, seed, task_budget, progress) for seed in seeds]
    readme = out / "README.md"
    _write_atomic(readme, _sweep_text(results, settings, time.perf_counter() - start))
    return readme


def _check_seeds(seeds) -> tuple[int, ...]:
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if any(not isinstance(s, int) or isinstance(s, bool) for s in seeds):
        raise TypeError(f"seeds must be ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    return seeds


def _settings(steps: int, probe_steps: int, eval_size: int, task_budget) -> dict:
    """Everything besides the seed that decides a seed's numbers (a reused seed must match)."""
    for name, value in (("steps", steps), ("probe_steps", probe_steps), ("eval_size", eval_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    budget = None if task_budget is None else dataclasses.asdict(_check_task_budget(task_budget))
    configs = {label: _config_settings(label, steps, eval_size) for label in CONFIGS}
    settings = {"steps": steps, "probe_steps": probe_steps, "eval_size": eval_size, "task_budget": budget,
                "configs": configs}
    return json.loads(json.dumps(settings))  # as metrics.json will hold them (tuples become lists)


def _config_settings(label: str, steps: int, eval_size: int) -> dict:
    """The training config of one demo model, less its folder and seed: editing a YAML config
    changes the settings, so seeds trained before the edit are not reused."""
    config = config_to_dict(demo_config(label, Path("."), steps, 0, eval_size))
    for key in ("out_dir", "seed"):
        config["train"].pop(key)
    return config


def _check_task_budget(budget):
    if not isinstance(budget, TaskBudget):
        raise TypeError(f"task_budget must be a lgvq.tasks.TaskBudget or None, got {type(budget).__name__}")
    return budget


def run_seed(out: Path, settings: dict, seed: int, task_budget, progress: bool) -> Path:
    """One seed's full demo report in ``out``; ``metrics.json`` is written last, atomically."""
    steps, probe_steps, eval_size = settings["steps"], settings["probe_steps"], settings["eval_size"]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    reports = [
        _train_and_evaluate(label, out / "runs" / name, steps, probe_steps, seed, eval_size, progress)
        for label, name in RUN_FOLDERS.items()
    ]
    config = reports[0].run.config
    val = load_dataset(**dataset_args(config, config.data.eval_split, config.data.eval_size))
    _save_pictures(reports, val, out)
    tasks = _run_tasks(reports, seed, task_budget) if task_budget is not None else None
    total = time.perf_counter() - start
    readme = out / "README.md"
    readme.write_text(_report_text(reports, steps, probe_steps, seed, total, val[0]["caption"],
                                   _task_table(tasks) if tasks else ""))
    metrics = {
        "settings": settings,
        "seed": seed,
        "seconds": total,
        "device": _where(reports[0].run.device),
        "caption": val[0]["caption"],
        "models": {r.label: {**r.result.as_dict(), "train_seconds": r.seconds} for r in reports},
        "own_head": next(r.own_head.as_dict() for r in reports if r.own_head is not None),
        "tasks": tasks,
    }
    _write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    return readme


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _reuse_or_run(folder: Path, settings: dict, seed: int, task_budget, progress: bool) -> dict:
    path = folder / "metrics.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings and saved.get("seed") == seed:
            print(f"seed {seed}: reusing {folder} (same settings; delete it to rerun)")
            if task_budget is not None:
                _add_missing_tasks(folder, saved, task_budget)
            return saved
    run_seed(folder, settings, seed, task_budget, progress)
    return json.loads(path.read_text())


def _save_pictures(reports: list[ModelReport], val, out: Path) -> None:
    preview = torch.stack([val[i]["image"] for i in range(8)])
    with torch.no_grad():
        rows = [preview] + [r.run.model(preview.to(r.run.device)).x_rec.cpu() for r in reports]
    save_image_grid(rows, out / "reconstructions.png")
    save_usage_histogram({r.label: r.result.code_counts for r in reports}, out / "codebook_usage.png")
    _heatmap(reports, val[0]["caption"], val[0]["image"], out / "word_code_similarity.png")
    save_training_curves(
        {r.label: read_log(Path(r.run.config.train.out_dir) / "metrics.jsonl") for r in reports},
        out / "training_curves.png",
    )


def _run_tasks(reports: list[ModelReport], seed: int, budget) -> dict[str, dict[str, dict[str, float]]]:
    """Every downstream task on each frozen codebook, same budget, seed and shared scorers."""
    train_set, test_set = _task_datasets(reports[0].run.config, budget)
    data = prepare_task_data(train_set, test_set, _text_encoder(), budget, seed)
    return {
        r.label: run_all_tasks(r.run.model, train_set, test_set, _text_encoder(), budget, seed, data=data)
        for r in reports
    }


def _task_datasets(config: ExperimentConfig, budget: TaskBudget):
    train_set = load_dataset(**dataset_args(config, config.data.split, config.data.size))
    return train_set, load_dataset(**dataset_args(config, "test", budget.eval_items))


def _add_missing_tasks(folder: Path, saved: dict, budget: TaskBudget) -> None:
    """Run the tasks a reused seed lacks (added to lgvq after it ran) on its saved models, and
    save them into its metrics.json and README, so a new task never forces retraining."""
    missing = [t for t in task_names() if any(t not in saved["tasks"][label] for label in CONFIGS)]
    if not missing:
        return
    print(f"seed {saved['seed']}: running {', '.join(missing)} on its saved models")
    runs = {label: load_run(folder / "runs" / name) for label, name in RUN_FOLDERS.items()}
    train_set, test_set = _task_datasets(runs[next(iter(CONFIGS))].config, budget)
    data = prepare_task_data(train_set, test_set, _text_encoder(), budget, saved["seed"])
    for label, run in runs.items():
        for task in missing:
            saved["tasks"][label][task] = run_task(
                task, run.model, train_set, test_set, _text_encoder(), budget, saved["seed"], data=data
            )
    readme = folder / "README.md"
    head = readme.read_text().split("\n" + TASKS_HEADING)[0].rstrip("\n")
    _write_atomic(readme, f"{head}\n\n{TASKS_HEADING}\n\n{_task_table(saved['tasks'])}\n")
    _write_atomic(folder / "metrics.json", json.dumps(saved, indent=2))


def _task_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = sorted({(task, metric) for res in results.values() for task, ms in res.items() for metric in ms})
    lines = ["| task | metric | " + " | ".join(results) + " |", "|---|---|" + "---:|" * len(results)]
    for task, metric in rows:
        values = " | ".join(_fmt(results[label].get(task, {}).get(metric), 3) for label in results)
        lines.append(f"| {task} | {metric} | {values} |")
    return "\n".join(lines)


def _where(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads > 1 else ''}, {platform.machine()})"


def _command(seeds: list[int], steps: int, tasks: bool) -> str:
    """The ``lgvq demo`` command line that reproduces a report (probe and eval sizes are the defaults)."""
    parts = ["lgvq demo"]
    if steps != DEFAULT_STEPS:
        parts.append(f"--steps {steps}")
    if list(seeds) != [0]:
        parts.append("--seeds " + " ".join(map(str, seeds)))
    if tasks:
        parts.append("--tasks")
    return " ".join(parts)


def _setup_text(steps: int) -> str:
    """What both models are: the same configs, shortened, the LG one adding guidance."""
    config, lg_config = (demo_config(label, Path("unused"), steps, 0, 1) for label in CONFIGS)
    lr = config.optim.base_lr * (config.data.batch_size if config.optim.scale_lr else 1)
    plain, guided = CONFIGS.values()
    return (
        f"Both models: `configs/{plain}` and `configs/{guided}` shortened to {steps} steps: `vqvae-tiny` "
        f"(32×32 images → 8×8 codes, K = 256, d = 64, quantizer options {config.model.overrides or 'default'}), "
        f"batch {config.data.batch_size}, Adam (lr {lr:g}, "
        f"β = {tuple(config.optim.betas)}), the same data order. The LG model adds LanguageGuidance "
        f"(embedded all-MiniLM-L6-v2 text encoder, weights λ = {lg_config.guidance.weights} for gsa/mtp/ras, "
        "leak-free masked text prediction)."
    )


def _probe_text(probe_steps: int) -> str:
    return (
        f"Alignment columns come from a probe: a fresh guidance head trained for {probe_steps} steps on each "
        "frozen codebook with the same seed, so both codebooks are measured the same way. "
        "Masked-word recall is leak-free (the encoder never sees the masked words)."
    )


def _pictures_text(folder: str, caption: str) -> list[str]:
    labels = ", ".join(CONFIGS)
    return [
        f"Reconstructions (top: originals; then {labels}):",
        "",
        f"![reconstructions]({folder}reconstructions.png)",
        "",
        "Codebook usage on the held-out images:",
        "",
        f"![codebook usage]({folder}codebook_usage.png)",
        "",
        f"Word–word similarity of the caption “{caption}” and the similarity of the codes its words match:",
        "",
        f"![word-code similarity]({folder}word_code_similarity.png)",
        "",
        f"![training curves]({folder}training_curves.png)",
    ]


def _report_text(reports, steps: int, probe_steps: int, seed: int, seconds: float, caption: str,
                 task_table: str) -> str:
    config = reports[0].run.config
    parts = [
        "# lgvq demo: plain VQ vs LG-VQ on the embedded captioned shapes",
        "",
        f"Command: `{_command([seed], steps, bool(task_table))}` · {steps} training steps per model · seed {seed} · "
        f"{_where(reports[0].run.device)} · "
        f"torch {torch.__version__} · total {seconds / 60:.1f} min.",
        "",
        _setup_text(steps),
        "",
        f"## Results ({config.data.eval_size} held-out images)",
        "",
        metrics_table(reports),
        "",
        _probe_text(probe_steps) + " " + _own_head_line(reports),
        "",
        "One seed at a small budget: differences of a few tenths of a dB or a few percent are within "
        "seed-to-seed spread; `lgvq demo --seeds 0 1 2 3 4` gives mean ± standard deviation.",
        "",
        "## Pictures",
        "",
        *_pictures_text("", caption),
    ]
    if task_table:
        parts += ["", TASKS_HEADING, "", task_table]
    return "\n".join(parts) + "\n"


def _sweep_text(results: list[dict], settings: dict, seconds: float) -> str:
    """The several-seed report: every metric's mean ± sd per model and the paired difference."""
    plain, guided = CONFIGS
    seeds = [r["seed"] for r in results]
    n = len(seeds)
    seed_list = " ".join(map(str, seeds))
    tasks = settings["task_budget"] is not None
    own = [r["own_head"] for r in results]
    parts = [
        f"# lgvq demo: plain VQ vs LG-VQ on the embedded captioned shapes, {n} seeds",
        "",
        f"Command: `{_command(seeds, settings['steps'], tasks)}` · {settings['steps']} training "
        f"steps per model · {results[0]['device']} · "
        f"torch {torch.__version__} · this invocation {seconds / 60:.1f} min; per seed "
        + ", ".join(f"{r['seconds'] / 60:.1f}" for r in results) + " min.",
        "",
        _setup_text(settings["steps"]),
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
        _probe_text(settings["probe_steps"]) + " The LG model's own guidance head (trained jointly, not a probe): "
        + _spread_line(own, "recall@1_1word", "recall@1, 1 word") + ", "
        + _spread_line(own, "word_code_mse", "word–code MSE", 4) + ".",
    ]
    if tasks:
        budget = settings["task_budget"]
        per_seed = [{label: flatten_tasks(r["tasks"][label]) for label in CONFIGS} for r in results]
        parts += [
            "",
            "## Downstream tasks on the frozen codebooks",
            "",
            f"Every task network trains {budget['steps']} steps (batch {budget['batch_size']}, width "
            f"{budget['width']}, depth {budget['depth']}) on the codes of {budget['train_items']} training images "
            f"and is scored on {budget['eval_items']} test images; an attribute classifier trained on real images "
            f"({budget['classifier_steps']} steps) scores generated images (colour/shape recall, and the Fréchet "
            "distance in its feature space — not FID). `reconstruction` is the decoder's ceiling: the test images' "
            "own codes, decoded. Semantic synthesis generates from each test image's semantic map (the shape "
            "class of every pixel) pooled onto the code grid and is scored by layout IoU (where it draws "
            "objects vs where the map has them). Unconditional recall and layout IoU, scored against test "
            "scenes it was never told about, are the chance levels that text-to-image and semantic synthesis "
            "should beat.",
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
        *_pictures_text(f"seed-{seeds[0]}/", results[0]["caption"]),
    ]
    return "\n".join(parts) + "\n"


def _spread_line(results: list[dict], metric: str, name: str, digits: int = 2) -> str:
    values = [r[metric] for r in results if metric in r]
    return f"{name} {Spread.of(values).format(digits)}" if values else f"{name} —"
