"""``lgvq demo``: plain VQ vs LG-VQ on the embedded captioned shapes, with a report.

Both models share everything (architecture, data order, seed, step budget); the LG model
adds LanguageGuidance. They train at the same time as two processes (the cores split
between them, ``lgvq.threads``), which then take each model's later jobs as it is trained
(``_train_models``). Both are evaluated on held-out images, an alignment
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
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lgvq.experiment.comparison import Spread, comparison_table, direction, flatten_tasks, format_signed, unanimous_summary
from lgvq.experiment.config import ExperimentConfig, config_to_dict, load_config, shipped_configs
from lgvq.data import load_dataset
from lgvq.experiment.evaluate import EvalResult, evaluate, fit_alignment_probe
from lgvq.experiment.logger import read_log
from lgvq.experiment.run import load_run
from lgvq.tasks import TaskBudget, prepare_task_data, run_task, task_names
from lgvq.threads import LoadMeter, threads_per_process
from lgvq.experiment.train import dataset_args, train
from lgvq.experiment.visualize import (
    save_reconstruction_figure,
    save_similarity_heatmaps,
    save_training_curves,
    save_usage_histogram,
)

#: The demo's budget, sized for at most 10 minutes on 2 CPU cores (README: "Demo budget").
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
TASKS_HEADING = "## Downstream tasks (same budget and seed for both codebooks)"
#: The verdict's scores: (label, where in a seed's flat metrics, digits).
VERDICT_SCORES = (
    ("VQA accuracy", "vqa / accuracy", 3),
    ("captioning CIDEr", "captioning / cider", 1),
    ("captioning BLEU-4", "captioning / bleu4", 1),
    ("word–code MSE (probe)", "word_code_mse", 4),
    ("masked-word recall@1 (probe, %)", "recall@1_1word", 1),
    ("codebook usage (%)", "usage_percent", 1),
    ("held-out PSNR (dB)", "psnr", 2),
)
MULTI_SEED_RESULTS = "results/"


@dataclass
class ModelReport:
    """Everything the report needs of one model: its training, assessment and tasks."""

    label: str
    out_dir: str
    result: EvalResult  # its own evaluation, with the alignment probe's metrics
    own_head: EvalResult | None  # LG model only: metrics of the guidance head it trained with
    seconds: float  # training only
    tasks: dict[str, dict[str, float]] | None
    heldout: list[dict]  # [{"step", "psnr"}] during training
    reconstructions: torch.Tensor  # (PREVIEW_IMAGES, 3, H, W)
    similarities: dict[str, object] = field(default_factory=dict)  # word_sim, code_sim, labels (numpy)


def demo_config(label: str, out_dir: Path, steps: int, seed: int, eval_size: int) -> ExperimentConfig:
    return load_config(shipped_configs() / CONFIGS[label], [
        f"train.steps={steps}", f"train.seed={seed}", f"train.out_dir={out_dir}",
        f"train.image_every={steps}", f"train.ckpt_every={steps}", f"data.eval_size={eval_size}",
    ])


def _segment_ends(steps: int, points: int) -> list[int]:
    """Steps at which training pauses for a held-out measurement (the last is ``steps``)."""
    return sorted({max(1, round(steps * (i + 1) / points)) for i in range(points)})


def _train_with_heldout_curve(config: ExperimentConfig, val, progress: bool):
    """Train in segments, resuming from each segment's checkpoint (bit-exact), and measure
    held-out PSNR after each; the model's training is the same as in one go."""
    steps, curve, run = config.train.steps, [], None
    heldout = torch.utils.data.Subset(val, range(min(HELDOUT_IMAGES, len(val))))
    for i, end in enumerate(_segment_ends(steps, HELDOUT_POINTS)):
        segment = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=end, ckpt_every=end))
        # the first segment starts afresh (a seed is rerun only when its settings changed)
        run = train(segment, resume=i > 0, progress=progress, existing="refuse" if i else "overwrite")
        psnr = evaluate(run.model, heldout, None, device=run.device, progress=False).psnr
        curve.append({"step": end, "psnr": psnr})
    return run, curve


@dataclass
class Trained:
    """What a training job sends back."""

    seconds: float  # training only
    heldout: list[dict]  # [{"step", "psnr"}] during training


@dataclass
class Assessment:
    """What an assessment job sends back: the scores and everything the pictures need."""

    result: EvalResult
    own_head: EvalResult | None
    reconstructions: torch.Tensor
    similarities: dict[str, object]


def _job_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def _heldout_set(config: ExperimentConfig):
    return load_dataset(**dataset_args(config, config.data.eval_split, config.data.eval_size))


def train_job(label: str, out_dir: Path, settings: dict, seed: int, threads: int | None, progress: bool) -> Trained:
    """Train one demo model into ``out_dir`` (its held-out curve measured on the way)."""
    _job_threads(threads)
    config = demo_config(label, out_dir, settings["steps"], seed, settings["eval_size"])
    start = time.perf_counter()
    _, curve = _train_with_heldout_curve(config, _heldout_set(config), progress)
    return Trained(time.perf_counter() - start, curve)


def assess_job(out_dir: Path, settings: dict, seed: int, threads: int | None, progress: bool) -> Assessment:
    """Evaluate a trained demo model, probe its frozen codebook and render its pictures' data."""
    _job_threads(threads)
    run = load_run(out_dir)
    val = _heldout_set(run.config)
    encoder = run.guidance.text_encoder if run.guidance is not None else _text_encoder()
    probe = fit_alignment_probe(run.model, val, encoder, steps=settings["probe_steps"], seed=seed,
                                device=run.device, progress=progress)
    result = evaluate(run.model, val, probe, seed=seed, device=run.device, progress=progress)
    own = None
    if run.guidance is not None:
        own = evaluate(run.model, val, run.guidance, seed=seed, device=run.device, progress=progress)
    preview = torch.stack([val[i]["image"] for i in range(PREVIEW_IMAGES)])
    with torch.no_grad():
        reconstructions = run.model(preview.to(run.device)).x_rec.cpu()
    return Assessment(result, own, reconstructions, _similarities(run.model, probe, val[0]))


def tasks_job(out_dir: Path, settings: dict, seed: int, task_budget, tasks, threads: int | None,
              progress: bool) -> dict[str, dict[str, float]]:
    """Train and score the downstream tasks on a trained demo model's frozen codebook."""
    _job_threads(threads)
    run = load_run(out_dir)
    train_set, test_set = _task_datasets(run.config, task_budget)
    data = prepare_task_data(train_set, test_set, _text_encoder(), task_budget, seed)
    return {t: run_task(t, run.model, train_set, test_set, _text_encoder(), task_budget, seed, data=data)
            for t in (tasks or task_names())}


_ENCODER = None


def _text_encoder():
    global _ENCODER
    if _ENCODER is None:
        from lgvq.text import load_text_encoder

        _ENCODER = load_text_encoder(cache=True)
    return _ENCODER


@torch.no_grad()
def _similarities(model, probe, item) -> dict:
    """Word–word similarity of one caption and the similarity of the codes its words match."""
    encoder = _text_encoder()
    text = encoder([item["caption"]])
    words = ~text.tokens.special_mask[0]
    labels = encoder.tokenizer.convert_ids_to_tokens(text.tokens.ids[0][words].tolist())
    z_q = model(item["image"][None].to(next(model.parameters()).device)).z_q
    word_sim, code_sim, _ = probe.word_code_similarities(z_q, text)
    return {"labels": labels, "word_sim": word_sim[0][words][:, words].cpu().numpy(),
            "code_sim": code_sim[0][words][:, words].cpu().numpy()}


def _fmt(value, digits=2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def metrics_table(reports: list[ModelReport], load: str) -> str:
    lines = [
        "| model | PSNR ↑ | SSIM ↑ | codebook usage % ↑ | perplexity ↑ | recall@1, 1 word ↑ | recall@1, 3 words ↑ "
        f"| word–code MSE ↓ | train s ({load}) |",
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


def run_demo(out: Path, steps: int | None = None, seeds: tuple[int, ...] | list[int] = (0,),
             task_budget=TaskBudget(), tasks: tuple[str, ...] | None = DEMO_TASKS, progress: bool = True,
             probe_steps: int = PROBE_STEPS, eval_size: int = EVAL_SIZE, parallel: bool = True) -> Path:
    """Train, evaluate and compare; returns the path of the report's README.md.

    task_budget: the ``lgvq.tasks.TaskBudget`` of the downstream tasks run on both frozen
    codebooks (None: no tasks); tasks: their names (None: every task). parallel: train the
    two models as two processes, each on half of the cores (False: one after the other, in
    this process).
    """
    seeds = _check_seeds(seeds)
    settings = _settings(steps or DEFAULT_STEPS, probe_steps, eval_size, task_budget, tasks)
    if len(seeds) == 1:
        return run_seed(out, settings, seeds[0], task_budget, progress, parallel)
    start = time.perf_counter()
    results = [_reuse_or_run(out / f"seed-{seed}", settings, seed, task_budget, progress, parallel) for seed in seeds]
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


def _settings(steps: int, probe_steps: int, eval_size: int, task_budget, tasks) -> dict:
    """Everything besides the seed that decides a seed's numbers (a reused seed must match)."""
    for name, value in (("steps", steps), ("probe_steps", probe_steps), ("eval_size", eval_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    budget = None if task_budget is None else dataclasses.asdict(_check_task_budget(task_budget))
    if tasks is not None:
        unknown = sorted(set(tasks) - set(task_names()))
        if unknown or not tasks:
            raise ValueError(f"tasks must name tasks from {', '.join(task_names())} (or be None: all), got {tasks!r}")
    configs = {label: _config_settings(label, steps, eval_size) for label in CONFIGS}
    settings = {"steps": steps, "probe_steps": probe_steps, "eval_size": eval_size, "task_budget": budget,
                "tasks": None if budget is None else list(tasks or task_names()), "configs": configs}
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


def _train_models(out: Path, settings: dict, seed: int, task_budget, progress: bool,
                  parallel: bool) -> list[ModelReport]:
    """Train both models, then assess each and run its tasks.

    In parallel, a pool of one process per model (the cores split between them) runs the
    jobs as they become ready: the plain model trains faster, so its assessment and tasks
    run while the LG model still trains, and once that finishes its assessment and its
    tasks run side by side. Otherwise every job runs in turn in this process. Each job
    seeds what it draws, so both schedules give the same numbers.
    """
    folders = {label: out / "runs" / name for label, name in RUN_FOLDERS.items()}
    common = lambda label: (folders[label], settings, seed)  # noqa: E731
    if not parallel:
        trained = {label: train_job(label, *common(label), None, progress) for label in CONFIGS}
        assessed = {label: assess_job(*common(label), None, progress) for label in CONFIGS}
        tasks = {label: tasks_job(*common(label), task_budget, settings["tasks"], None, progress)
                 if task_budget is not None else None for label in CONFIGS}
        return [_model_report(label, folders[label], trained[label], assessed[label], tasks[label]) for label in CONFIGS]
    threads = threads_per_process(len(CONFIGS))
    if progress:
        print(f"training {' and '.join(CONFIGS)} in parallel ({threads} torch thread(s) each); each model's "
              "assessment and tasks start when it is trained", flush=True)
    with ProcessPoolExecutor(len(CONFIGS), mp_context=multiprocessing.get_context("spawn")) as pool:
        training = {pool.submit(train_job, label, *common(label), threads, False): label for label in CONFIGS}
        trained, later = {}, {}
        for future in as_completed(training):
            label = training[future]
            trained[label] = future.result()
            later[label] = (
                pool.submit(assess_job, *common(label), threads, False),
                pool.submit(tasks_job, *common(label), task_budget, settings["tasks"], threads, False)
                if task_budget is not None else None,
            )
            if progress:
                print(f"{label} trained in {trained[label].seconds:.0f} s", flush=True)
        return [_model_report(label, folders[label], trained[label], later[label][0].result(),
                              later[label][1].result() if later[label][1] is not None else None)
                for label in CONFIGS]


def _model_report(label: str, folder: Path, trained: Trained, assessed: Assessment, tasks) -> ModelReport:
    return ModelReport(label, str(folder), assessed.result, assessed.own_head, trained.seconds, tasks,
                       trained.heldout, assessed.reconstructions, assessed.similarities)


def run_seed(out: Path, settings: dict, seed: int, task_budget, progress: bool, parallel: bool = True) -> Path:
    """One seed's full demo report in ``out``; ``metrics.json`` is written last, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    meter = LoadMeter().start()
    reports = _train_models(out, settings, seed, task_budget, progress, parallel)
    load = meter.stop()
    config = demo_config(next(iter(CONFIGS)), out, settings["steps"], seed, settings["eval_size"])
    val = load_dataset(**dataset_args(config, config.data.eval_split, config.data.eval_size))
    _save_pictures(reports, val, out)
    tasks = {r.label: r.tasks for r in reports} if task_budget is not None else None
    where = _where(parallel)
    metrics = {
        "settings": settings,
        "seed": seed,
        "seconds": load.seconds,
        "load": load.as_dict(),
        "device": where,
        "caption": val[0]["caption"],
        "models": {r.label: {**r.result.as_dict(), "train_seconds": r.seconds} for r in reports},
        "heldout": {r.label: r.heldout for r in reports},
        "own_head": next(r.own_head.as_dict() for r in reports if r.own_head is not None),
        "tasks": tasks,
    }
    readme = out / "README.md"
    readme.write_text(_report_text(reports, metrics, load.describe()))
    _write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    return readme


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _reuse_or_run(folder: Path, settings: dict, seed: int, task_budget, progress: bool, parallel: bool) -> dict:
    path = folder / "metrics.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings and saved.get("seed") == seed:
            print(f"seed {seed}: reusing {folder} (same settings; delete it to rerun)")
            if task_budget is not None:
                _add_missing_tasks(folder, saved, task_budget, settings["tasks"])
            return saved
    run_seed(folder, settings, seed, task_budget, progress, parallel)
    return json.loads(path.read_text())


def _save_pictures(reports: list[ModelReport], val, out: Path) -> None:
    preview = torch.stack([val[i]["image"] for i in range(PREVIEW_IMAGES)])
    rows = {"original": preview, **{r.label: r.reconstructions for r in reports}}
    save_reconstruction_figure(rows, [val[i]["caption"] for i in range(PREVIEW_IMAGES)], out / "reconstructions.png")
    save_usage_histogram({r.label: r.result.code_counts for r in reports}, out / "codebook_usage.png")
    first = reports[0].similarities
    panels = {"words (text encoder)": first["word_sim"]}
    panels.update({f"matched codes: {r.label}": r.similarities["code_sim"] for r in reports})
    save_similarity_heatmaps(panels, first["labels"], out / "word_code_similarity.png")
    save_training_curves(
        {r.label: read_log(Path(r.out_dir) / "metrics.jsonl") for r in reports},
        {r.label: r.heldout for r in reports},
        out / "training_curves.png",
    )


def _task_datasets(config: ExperimentConfig, budget: TaskBudget):
    train_set = load_dataset(**dataset_args(config, config.data.split, config.data.size))
    return train_set, load_dataset(**dataset_args(config, "test", budget.eval_items))


def _add_missing_tasks(folder: Path, saved: dict, budget: TaskBudget, tasks: list[str]) -> None:
    """Run the tasks a reused seed lacks (added to lgvq after it ran) on its saved models, and
    save them into its metrics.json and README, so a new task never forces retraining."""
    missing = [t for t in tasks if any(t not in saved["tasks"][label] for label in CONFIGS)]
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


def _where(parallel: bool) -> str:
    if torch.cuda.is_available() and demo_config(next(iter(CONFIGS)), Path("."), 1, 0, 1).train.device != "cpu":
        return torch.cuda.get_device_name()
    threads = threads_per_process(len(CONFIGS)) if parallel else torch.get_num_threads()
    layout = f"{len(CONFIGS)} processes × {threads} thread{'s' if threads > 1 else ''}" if parallel else \
        f"{threads} thread{'s' if threads > 1 else ''}"
    return f"CPU ({layout}, {platform.machine()})"


def _command(seeds: list[int], steps: int, all_tasks: bool) -> str:
    """The ``lgvq demo`` command line that reproduces a report (probe and eval sizes are the defaults)."""
    parts = ["lgvq demo"]
    if steps != DEFAULT_STEPS:
        parts.append(f"--steps {steps}")
    if list(seeds) != [0]:
        parts.append("--seeds " + " ".join(map(str, seeds)))
    if all_tasks:
        parts.append("--tasks")
    return " ".join(parts)


def _all_tasks(settings: dict) -> bool:
    return settings["tasks"] is not None and sorted(settings["tasks"]) == sorted(task_names())


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
        f"Reconstructions of held-out images (rows: original, {labels}; each column's caption below it):",
        "",
        f"![reconstructions]({folder}reconstructions.png)",
        "",
        "Codebook usage on the held-out images:",
        "",
        f"![codebook usage]({folder}codebook_usage.png)",
        "",
        f"How language is reflected in the codes, for the caption “{caption}”. Left: how similar the text "
        "encoder finds each pair of its words. Other panels: how similar the codes are that each word matches "
        "in the image (through each model's alignment probe). LG-VQ trains the codes to relate as the words "
        "do, so the closer a panel's pattern is to the left one, the better (the diagonal, always 1, is left "
        "blank; all panels share one colour scale).",
        "",
        f"![word-code similarity]({folder}word_code_similarity.png)",
        "",
        "Training curves: reconstruction loss and code perplexity per training batch, PSNR on "
        f"{HELDOUT_IMAGES} held-out images during training, and the LG model's three guidance losses:",
        "",
        f"![training curves]({folder}training_curves.png)",
    ]


def _flat_scores(seed_metrics: dict, label: str) -> dict[str, float]:
    """A seed's model scores and task scores ("task / metric") as one flat dict."""
    scores = dict(seed_metrics["models"][label])
    scores.update(flatten_tasks((seed_metrics.get("tasks") or {}).get(label, {})))
    return scores


def _verdict_lines(per_seed: list[dict]) -> list[str]:
    """One line per verdict score: both models and LG − plain (mean ± sd and wins over seeds)."""
    plain, guided = CONFIGS
    flat = [{label: _flat_scores(m, label) for label in CONFIGS} for m in per_seed]
    n = len(flat)
    lines = []
    for name, key, digits in VERDICT_SCORES:
        if not all(key in seed[label] for seed in flat for label in CONFIGS):
            continue
        sign = direction(key)
        a = [seed[plain][key] for seed in flat]
        b = [seed[guided][key] for seed in flat]
        diff = Spread.of([y - x for x, y in zip(a, b)])
        wins = sum(sign * (y - x) > 0 for x, y in zip(a, b))
        better = "higher" if sign > 0 else "lower"
        line = (f"- **{name}** ({better} is better): {guided} {Spread.of(b).format(digits)} vs {plain} "
                f"{Spread.of(a).format(digits)}, difference {format_signed(diff, digits)}")
        lines.append(line + (f"; LG-VQ better in {wins}/{n} seeds" if n > 1 else ""))
    return lines


def _winners(per_seed: list[dict]) -> tuple[list[str], list[str]]:
    """Verdict scores on which LG-VQ is better / worse in every seed."""
    plain, guided = CONFIGS
    flat = [{label: _flat_scores(m, label) for label in CONFIGS} for m in per_seed]
    ahead, behind = [], []
    for name, key, _ in VERDICT_SCORES:
        if not all(key in seed[label] for seed in flat for label in CONFIGS):
            continue
        diffs = [direction(key) * (seed[guided][key] - seed[plain][key]) for seed in flat]
        if all(d > 0 for d in diffs):
            ahead.append(name)
        elif all(d < 0 for d in diffs):
            behind.append(name)
    return ahead, behind


def _verdict(per_seed: list[dict]) -> list[str]:
    ahead, behind = _winners(per_seed)
    n = len(per_seed)
    scope = "in this seed" if n == 1 else f"in all {n} seeds"
    head = (f"LG-VQ is ahead of plain VQ {scope} on {', '.join(ahead) or 'none of the scores below'}"
            f"{'; behind on ' + ', '.join(behind) if behind else ''}.")
    if n == 1:
        sure = ("One seed cannot separate a real difference from seed-to-seed noise: compare with the paired "
                f"differences over 5 seeds committed in the repository's `{MULTI_SEED_RESULTS}` folder (README: "
                "“Downstream tasks”), or run `lgvq demo --seeds 0 1 2 3 4`.")
    else:
        sure = (f"A score better in all {n} paired seeds has probability {2 * 0.5 ** n:.2f} under no real "
                "difference (sign test); the ± is the seed-to-seed standard deviation.")
    return ["## Verdict", "", head + " " + sure, "", *_verdict_lines(per_seed)]


def _report_text(reports: list[ModelReport], metrics: dict, load: str) -> str:
    settings, seed = metrics["settings"], metrics["seed"]
    steps = settings["steps"]
    parts = [
        "# lgvq demo: plain VQ vs LG-VQ on the embedded captioned shapes",
        "",
        *_verdict([metrics]),
        "",
        f"Command: `{_command([seed], steps, _all_tasks(settings))}` · {steps} training steps per model · "
        f"seed {seed} · {metrics['device']} · torch {torch.__version__} · total {metrics['seconds'] / 60:.1f} min "
        f"while {load}.",
        "",
        _setup_text(steps),
        "",
        f"## Results ({settings['eval_size']} held-out images)",
        "",
        metrics_table(reports, load),
        "",
        _probe_text(settings["probe_steps"]) + " " + _own_head_line(reports),
    ]
    if metrics["tasks"]:
        parts += ["", TASKS_HEADING, "", _task_table(metrics["tasks"])]
    parts += ["", "## Pictures", "", *_pictures_text("", metrics["caption"])]
    return "\n".join(parts) + "\n"


def _load_line(results: list[dict]) -> str:
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


def _sweep_text(results: list[dict], settings: dict, seconds: float) -> str:
    """The several-seed report: every metric's mean ± sd per model and the paired difference."""
    plain, guided = CONFIGS
    seeds = [r["seed"] for r in results]
    n = len(seeds)
    seed_list = " ".join(map(str, seeds))
    own = [r["own_head"] for r in results]
    parts = [
        f"# lgvq demo: plain VQ vs LG-VQ on the embedded captioned shapes, {n} seeds",
        "",
        *_verdict(results),
        "",
        f"Command: `{_command(seeds, settings['steps'], _all_tasks(settings))}` · {settings['steps']} training "
        f"steps per model · {results[0]['device']} · "
        f"torch {torch.__version__} · this invocation {seconds / 60:.1f} min; per seed "
        + ", ".join(f"{r['seconds'] / 60:.1f}" for r in results) + f" min, while {_load_line(results)}.",
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
        *_pictures_text(f"seed-{seeds[0]}/", results[0]["caption"]),
    ]
    return "\n".join(parts) + "\n"


def _spread_line(results: list[dict], metric: str, name: str, digits: int = 2) -> str:
    values = [r[metric] for r in results if metric in r]
    return f"{name} {Spread.of(values).format(digits)}" if values else f"{name} —"
