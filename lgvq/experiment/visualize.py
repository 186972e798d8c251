"""Pictures for people: reconstruction grids, codebook-usage histograms, similarity heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lgvq.extras import needs_extra

with needs_extra("train"):
    from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(rows: list[torch.Tensor], pad: int = 2) -> Image.Image:
    """Stack batches as grid rows (e.g. [originals, reconstructions]); all (B, 3, H, W)."""
    arrays = [to_uint8(r) for r in rows]
    b, h, w, _ = arrays[0].shape
    canvas = np.full((len(rows) * (h + pad) + pad, b * (w + pad) + pad, 3), 255, np.uint8)
    for i, arr in enumerate(arrays):
        for j in range(arr.shape[0]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = arr[j]
    return Image.fromarray(canvas)


def save_image_grid(rows: list[torch.Tensor], path: str | Path, scale: int = 2) -> Path:
    img = image_grid(rows)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _figure():
    with needs_extra("train"):
        import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, **options) -> Path:
    """Write a matplotlib figure at the pictures' resolution and free it."""
    fig.savefig(path, dpi=120, **options)
    _figure().close(fig)
    return Path(path)


def save_usage_histogram(counts: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Sorted per-code usage of several models on one plot (the paper's usage figure style)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, c in counts.items():
        c = c.float().cpu()
        share = (c / c.sum().clamp_min(1)).sort(descending=True).values.numpy()
        used = int((c > 0).sum())
        ax.plot(np.arange(len(share)), share, label=f"{label} ({used}/{len(share)} codes used)")
    ax.set_xlabel("code (sorted by use)")
    ax.set_ylabel("share of assignments")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def save_reconstruction_figure(rows: dict[str, torch.Tensor], captions: list[str], path: str | Path) -> Path:
    """A grid with one labelled row per batch (originals, then each model's reconstructions) of
    the same images, each column's caption beneath it; batches are (B, 3, H, W) in [-1, 1]."""
    import textwrap

    plt = _figure()
    images = {label: to_uint8(batch) for label, batch in rows.items()}
    count = len(captions)
    fig, axes = plt.subplots(len(rows), count, figsize=(1.55 * count + 1.2, 1.55 * len(rows) + 0.9), squeeze=False)
    for i, (label, batch) in enumerate(images.items()):
        for j in range(count):
            ax = axes[i, j]
            ax.imshow(batch[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    for j, caption in enumerate(captions):
        axes[-1, j].set_xlabel(textwrap.fill(caption, 22), fontsize=6)
    fig.tight_layout()
    return _save(fig, path, bbox_inches="tight")


def similarity_scale(panels: dict[str, np.ndarray]) -> tuple[float, float]:
    """(low, high) of one colour scale for every panel: the range of the off-diagonal entries
    (the diagonal is always 1), widened to at least 0.1 so that noise is not magnified."""
    values = np.concatenate([m[~np.eye(len(m), dtype=bool)] for m in panels.values()]) if panels else np.zeros(0)
    if values.size == 0:
        return -1.0, 1.0
    low, high = float(values.min()), float(values.max())
    if high - low < 0.1:
        middle = (high + low) / 2
        low, high = middle - 0.05, middle + 0.05
    return low, high


def save_similarity_heatmaps(panels: dict[str, np.ndarray], labels: list[str], path: str | Path) -> Path:
    """Side-by-side heatmaps of square similarity matrices over the same word labels, on one
    colour scale fitted to the off-diagonal entries; the diagonal is left blank."""
    plt = _figure()
    size = max(3.2, 0.32 * len(labels) + 1.2)  # room for every label at a readable size
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) + 1.0, size + 0.6))
    axes = np.atleast_1d(axes)
    low, high = similarity_scale(panels)
    for ax, (title, matrix) in zip(axes, panels.items()):
        shown = np.ma.masked_where(np.eye(len(matrix), dtype=bool), matrix)
        im = ax.imshow(shown, vmin=low, vmax=high, cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="cosine similarity")
    fig.suptitle("Each cell: similarity of two words (left) or of the codes they match (others); "
                 "closer to the left pattern = better aligned", fontsize=8)
    return _save(fig, path, bbox_inches="tight")


#: Guidance losses logged by an LG run, plotted when present.
GUIDANCE_LOSSES = ("gsa", "mtp", "ras")


def save_training_curves(logs: dict[str, list[dict]], heldout: dict[str, list[dict]], path: str | Path) -> Path:
    """Per run: reconstruction loss and batch perplexity (metrics.jsonl), held-out PSNR
    (``heldout``: [{"step", "psnr"}]) and, for runs that log them, the three guidance losses."""
    plt = _figure()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    (rec, held), (ppl, guide) = axes
    for label, log in logs.items():
        steps = [e["step"] for e in log]
        rec.plot(steps, [e["nll_loss"] for e in log], label=label)
        ppl.plot(steps, [e["perplexity"] for e in log], label=label)
        for name in GUIDANCE_LOSSES:
            if all(name in e for e in log) and log:
                guide.plot(steps, [e[name] for e in log], label=f"{label}: {name}")
    for label, points in heldout.items():
        held.plot([p["step"] for p in points], [p["psnr"] for p in points], marker="o", label=label)
    rec.set_title("reconstruction loss (train batches)")
    held.set_title("PSNR on held-out images (dB)")
    ppl.set_title("code perplexity per batch (train)")
    guide.set_title("guidance losses (train, log scale): gsa, mtp, ras")
    if guide.get_legend_handles_labels()[0]:
        guide.set_yscale("log")  # Lras is ~100x smaller than the other two
    for ax in axes.flat:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
