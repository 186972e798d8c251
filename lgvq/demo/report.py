"""One seed's report (``README.md``) and the text blocks the several-seed report shares with it."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lgvq.demo.settings import CONFIGS, DEFAULT_STEPS, HELDOUT_IMAGES, demo_config
from lgvq.demo.verdict import verdict
from lgvq.experiment.evaluate import EvalResult
from lgvq.tasks import task_names
from lgvq.threads import threads_per_process


TASKS_HEADING = "## Downstream tasks (same budget and seed for both codebooks)"


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


def fmt(value, digits=2) -> str:
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
            f"{fmt(m.recall_at_1.get(1))} | {fmt(m.recall_at_1.get(3))} | {fmt(m.word_code_mse, 4)} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def own_head_line(reports: list[ModelReport]) -> str:
    lg = next(r for r in reports if r.own_head is not None)
    m = lg.own_head
    return (
        f"The LG model's own guidance head (trained jointly, not a probe): recall@1 "
        f"{fmt(m.recall_at_1.get(1))} % (1 word) / {fmt(m.recall_at_1.get(3))} % (3 words), "
        f"word–code MSE {fmt(m.word_code_mse, 4)}."
    )


def task_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = sorted({(task, metric) for res in results.values() for task, ms in res.items() for metric in ms})
    lines = ["| task | metric | " + " | ".join(results) + " |", "|---|---|" + "---:|" * len(results)]
    for task, metric in rows:
        values = " | ".join(fmt(results[label].get(task, {}).get(metric), 3) for label in results)
        lines.append(f"| {task} | {metric} | {values} |")
    return "\n".join(lines)


def device_description(parallel: bool) -> str:
    """The device, and on the CPU the thread layout (it decides the numbers' float rounding)."""
    if torch.cuda.is_available() and demo_config(next(iter(CONFIGS)), Path("."), 1, 0, 1).train.device != "cpu":
        return torch.cuda.get_device_name()
    threads = threads_per_process(len(CONFIGS)) if parallel else torch.get_num_threads()
    layout = f"{len(CONFIGS)} processes × {threads} thread{'s' if threads > 1 else ''}" if parallel else \
        f"{threads} thread{'s' if threads > 1 else ''}"
    return f"CPU ({layout}, {platform.machine()})"


def command(seeds: list[int], steps: int, all_tasks: bool) -> str:
    """The ``lgvq demo`` command line that reproduces a report (probe and eval sizes are the defaults)."""
    parts = ["lgvq demo"]
    if steps != DEFAULT_STEPS:
        parts.append(f"--steps {steps}")
    if list(seeds) != [0]:
        parts.append("--seeds " + " ".join(map(str, seeds)))
    if all_tasks:
        parts.append("--tasks")
    return " ".join(parts)


def all_tasks(settings: dict) -> bool:
    return settings["tasks"] is not None and sorted(settings["tasks"]) == sorted(task_names())


def setup_text(steps: int) -> str:
    """What both models are: the same configs, shortened, the LG one adding guidance."""
    config, lg_config = (demo_config(label, Path("unused"), steps, 0, 1) for label in CONFIGS)
    lr = config.optim.base_lr * (config.data.batch_size if config.optim.scale_lr else 1)
    plain, guided = CONFIGS.values()
    return (
        f"Both models: `configs/{plain}` and `configs/{guided}` shortened to {steps} steps: `vqvae-tiny` "
        f"(32×32 images → 8×8 codes, K = 256, d = 64, quantizer options {config.model.overrides or 'default'}), "
        f"batch {config.data.batch_size}, Adam (lr {lr:g}{schedule_text(config.optim)}, "
        f"β = {tuple(config.optim.betas)}), the same data order. The LG model adds LanguageGuidance "
        f"(embedded all-MiniLM-L6-v2 text encoder, weights λ = {lg_config.guidance.weights} for gsa/mtp/ras, "
        "leak-free masked text prediction)."
    )


def schedule_text(optim) -> str:
    if optim.lr_schedule == "constant":
        return ""
    return f", {optim.lr_schedule} decay to {optim.final_lr_ratio:g}× of it over the run"


def probe_text(probe_steps: int) -> str:
    return (
        f"Alignment columns come from a probe: a fresh guidance head trained for {probe_steps} steps on each "
        "frozen codebook with the same seed, so both codebooks are measured the same way. "
        "Masked-word recall is leak-free (the encoder never sees the masked words)."
    )


def pictures_text(folder: str, caption: str) -> list[str]:
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


def report_text(reports: list[ModelReport], metrics: dict, load: str) -> str:
    settings, seed = metrics["settings"], metrics["seed"]
    steps = settings["steps"]
    parts = [
        "# lgvq demo: plain VQ vs LG-VQ on the embedded captioned shapes",
        "",
        *verdict([metrics]),
        "",
        f"Command: `{command([seed], steps, all_tasks(settings))}` · {steps} training steps per model · "
        f"seed {seed} · {metrics['device']} · torch {torch.__version__} · total {metrics['seconds'] / 60:.1f} min "
        f"while {load}.",
        "",
        setup_text(steps),
        "",
        f"## Results ({settings['eval_size']} held-out images)",
        "",
        metrics_table(reports, load),
        "",
        probe_text(settings["probe_steps"]) + " " + own_head_line(reports),
    ]
    if metrics["tasks"]:
        parts += ["", TASKS_HEADING, "", task_table(metrics["tasks"])]
    parts += ["", "## Pictures", "", *pictures_text("", metrics["caption"])]
    return "\n".join(parts) + "\n"
