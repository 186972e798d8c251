"""``lgvq demo``: plain VQ vs LG-VQ on the embedded captioned shapes, with a report.

Both models share everything (architecture, data order, seed, step budget); the LG model
adds LanguageGuidance. Both are then evaluated on held-out images, and an alignment
probe (a fresh guidance head trained on each *frozen* codebook with the same budget and
seed) measures how well language aligns with each codebook, so the model trained without
language is measured the same way. The report folder holds ``README.md`` (metrics table,
settings, timings), reconstruction grids, a codebook-usage plot, a word–code similarity
heatmap and the training curves.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lgvq.config import ExperimentConfig, load_config
from lgvq.data import load_dataset
from lgvq.evaluate import EvalResult, evaluate, fit_alignment_probe
from lgvq.logger import read_log
from lgvq.train import Run, dataset_args, train
from lgvq.guidance import LanguageGuidance
from lgvq.visualize import save_image_grid, save_similarity_heatmaps, save_training_curves, save_usage_histogram

#: The demo's budget, sized for about 10 minutes on 2 CPU cores (README: "Demo budget").
DEFAULT_STEPS = 400
PROBE_STEPS = 80
EVAL_SIZE = 256
#: The two runs are the repository's shapes configs; the demo only shortens them.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = {"VQ-VAE": "shapes-vqvae.yaml", "VQ-VAE + LG": "shapes-vqvae-lg.yaml"}


@dataclass
class ModelReport:
    label: str
    run: Run
    result: EvalResult  # its own evaluation, with the alignment probe's metrics
    probe: LanguageGuidance  # the alignment probe fitted on its frozen codes
    own_head: EvalResult | None  # LG model only: metrics of the guidance head it trained with
    seconds: float


def demo_config(label: str, out_dir: Path, steps: int, seed: int, eval_size: int) -> ExperimentConfig:
    path = CONFIG_DIR / CONFIGS[label]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `lgvq demo` from a clone of the repository (pip install -e .)")
    return load_config(path, [
        f"train.steps={steps}", f"train.seed={seed}", f"train.out_dir={out_dir}",
        f"train.image_every={steps}", f"train.ckpt_every={steps}", f"data.eval_size={eval_size}",
    ])


def _train_and_evaluate(label: str, out_dir: Path, steps: int, probe_steps: int, seed: int, eval_size: int,
                        progress: bool) -> ModelReport:
    config = demo_config(label, out_dir, steps, seed, eval_size)
    start = time.perf_counter()
    run = train(config, progress=progress)
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


def run_demo(out: Path, steps: int | None = None, seed: int = 0, tasks: bool = False, progress: bool = True,
             probe_steps: int = PROBE_STEPS, eval_size: int = EVAL_SIZE) -> Path:
    """Train, evaluate and compare; returns the path of the report's README.md."""
    steps = steps or DEFAULT_STEPS
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    reports = [
        _train_and_evaluate(label, out / "runs" / name, steps, probe_steps, seed, eval_size, progress)
        for label, name in zip(CONFIGS, ("vq", "lg"))
    ]
    config = reports[0].run.config
    val = load_dataset(**dataset_args(config, config.data.eval_split, config.data.eval_size))
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
    task_table = _run_tasks(reports, seed, progress) if tasks else ""
    total = time.perf_counter() - start
    metrics = {r.label: r.result.as_dict() for r in reports}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    readme = out / "README.md"
    readme.write_text(_report_text(reports, steps, probe_steps, seed, total, val[0]["caption"], task_table))
    return readme


def _run_tasks(reports: list[ModelReport], seed: int, progress: bool) -> str:
    """Every downstream task on each frozen codebook, same budget, seed and shared scorers."""
    from lgvq.tasks import TaskBudget, prepare_task_data, run_all_tasks

    config = reports[0].run.config
    budget = TaskBudget()
    train_set = load_dataset(**dataset_args(config, config.data.split, config.data.size))
    test_set = load_dataset(**dataset_args(config, "test", budget.eval_items))
    data = prepare_task_data(train_set, test_set, _text_encoder(), budget, seed)
    results = {
        r.label: run_all_tasks(r.run.model, train_set, test_set, _text_encoder(), budget, seed, data=data)
        for r in reports
    }
    rows = sorted({(task, metric) for res in results.values() for task, ms in res.items() for metric in ms})
    lines = ["| task | metric | " + " | ".join(results) + " |", "|---|---|" + "---:|" * len(results)]
    for task, metric in rows:
        values = " | ".join(_fmt(results[label].get(task, {}).get(metric), 3) for label in results)
        lines.append(f"| {task} | {metric} | {values} |")
    return "\n".join(lines)


def _report_text(reports, steps: int, probe_steps: int, seed: int, seconds: float, caption: str,
                 task_table: str) -> str:
    device = reports[0].run.device
    config, lg_config = reports[0].run.config, reports[1].run.config
    lr = config.optim.base_lr * (config.data.batch_size if config.optim.scale_lr else 1)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads, {platform.machine()})"
    parts = [
        "# lgvq demo: plain VQ vs LG-VQ on the embedded captioned shapes",
        "",
        f"Command: `lgvq demo` · {steps} training steps per model · seed {seed} · {where} · "
        f"torch {torch.__version__} · total {seconds / 60:.1f} min.",
        "",
        f"Both models: `configs/{CONFIGS[reports[0].label]}` and `configs/{CONFIGS[reports[1].label]}` "
        f"shortened to {steps} steps: `vqvae-tiny` (32×32 images → 8×8 codes, K = 256, d = 64), batch "
        f"{config.data.batch_size}, Adam (lr {lr:g}, β = {tuple(config.optim.betas)}), the same data order. "
        "The LG model adds LanguageGuidance (embedded all-MiniLM-L6-v2 text encoder, weights λ = "
        f"{lg_config.guidance.weights} for gsa/mtp/ras, leak-free masked text prediction).",
        "",
        f"## Results ({config.data.eval_size} held-out images)",
        "",
        metrics_table(reports),
        "",
        f"Alignment columns come from a probe: a fresh guidance head trained for {probe_steps} steps on each "
        "frozen codebook with the same seed, so both codebooks are measured the same way. "
        "Masked-word recall is leak-free (the encoder never sees the masked words). "
        + _own_head_line(reports),
        "",
        "One seed at a small budget: differences of a few tenths of a dB or a few percent are within "
        "seed-to-seed spread; rerun with `--seed` to see it.",
        "",
        "## Pictures",
        "",
        "Reconstructions (top: originals; then " + ", ".join(r.label for r in reports) + "):",
        "",
        "![reconstructions](reconstructions.png)",
        "",
        "Codebook usage on the held-out images:",
        "",
        "![codebook usage](codebook_usage.png)",
        "",
        f"Word–word similarity of the caption “{caption}” and the similarity of the codes its words match:",
        "",
        "![word-code similarity](word_code_similarity.png)",
        "",
        "![training curves](training_curves.png)",
    ]
    if task_table:
        parts += ["", "## Downstream tasks (same budget and seed for both codebooks)", "", task_table]
    return "\n".join(parts) + "\n"
