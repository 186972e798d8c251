"""The pictures of a seed's report: reconstructions, codebook usage, word–code similarity and the
training curves."""

from __future__ import annotations

from pathlib import Path

import torch

from lgvq.demo.report import ModelReport
from lgvq.demo.settings import PREVIEW_IMAGES
from lgvq.experiment.logger import read_log
from lgvq.experiment.visualize import (
    save_reconstruction_figure,
    save_similarity_heatmaps,
    save_training_curves,
    save_usage_histogram,
)


def save_pictures(reports: list[ModelReport], val, out: Path) -> None:
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
