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


def save_similarity_heatmaps(panels: dict[str, np.ndarray], labels: list[str], path: str | Path) -> Path:
    """Side-by-side heatmaps of square similarity matrices over the same word labels."""
    plt = _figure()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    axes = np.atleast_1d(axes)
    for ax, (title, matrix) in zip(axes, panels.items()):
        im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return _save(fig, path, bbox_inches="tight")


def save_training_curves(logs: dict[str, list[dict]], path: str | Path) -> Path:
    """Reconstruction loss and batch perplexity against step, one line per run (from metrics.jsonl)."""
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, log in logs.items():
        steps = [e["step"] for e in log]
        axes[0].plot(steps, [e["nll_loss"] for e in log], label=label)
        axes[1].plot(steps, [e["perplexity"] for e in log], label=label)
    axes[0].set_title("reconstruction loss (train)")
    axes[1].set_title("code perplexity per batch (train)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)
