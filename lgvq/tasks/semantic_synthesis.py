"""Semantic-map-conditioned synthesis: a CodeTransformer told the class layout of every cell.

A semantic map (S, S) of class ids is pooled onto the code grid: each code cell gets the
fraction of its pixels in every class, and the transformer adds that to the token that
predicts the cell's code (``CodeTransformer(cell_dim=...)``). A first version put the cells
in a prefix, like caption words, where every code must learn to find its own cell among 64
prefix tokens: on the seed-0 plain demo model, after the demo's 300 task steps, its layout
IoU was 0.19 against 0.49 for this version and 0.13 for unconditional samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lgvq.checks import check_positive, check_tensor
from lgvq.tasks.autoregressive import CodeTransformer, Sampling, fit_autoregressive
from lgvq.tasks.codes import INDEX_DTYPES, CodeDataset, code_grid, frozen_codebook, model_device
from lgvq.tasks.layers import TransformerSize
from lgvq.tasks.training import TrainSettings


def check_semantic_maps(maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, S, S) integer class ids in [0, num_classes), as int64."""
    check_tensor("maps", maps, ndim=3, dtypes=INDEX_DTYPES, finite=False)
    if maps.shape[1] != maps.shape[2]:
        raise ValueError(f"maps must be square (N, S, S), got {tuple(maps.shape)}")
    low, high = int(maps.min()), int(maps.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"maps must hold class ids in [0, {num_classes}), got values in [{low}, {high}]")
    return maps.long()


def layout_features(maps: torch.Tensor, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """(N, h*w, num_classes): the fraction of each code cell's pixels in every class, raster order."""
    maps = check_semantic_maps(maps, num_classes)
    fractions = F.adaptive_avg_pool2d(F.one_hot(maps, num_classes).permute(0, 3, 1, 2).float(), grid)
    return fractions.flatten(2).transpose(1, 2)


class SemanticSynthesis:
    """A CodeTransformer conditioned on a semantic map's layout."""

    def __init__(self, transformer: CodeTransformer, num_classes: int):
        check_positive("num_classes", num_classes)
        if transformer.cells is None or transformer.cells.in_features != num_classes:
            raise ValueError(f"transformer must take per-cell conditions with cell_dim = num_classes ({num_classes})")
        if transformer.conditional:
            raise ValueError("transformer must take no other condition (built without condition_dim)")
        self.transformer = transformer
        self.num_classes = num_classes

    @classmethod
    def build(cls, vq_model, num_classes: int, size: TransformerSize = TransformerSize()) -> SemanticSynthesis:
        transformer = CodeTransformer(frozen_codebook(vq_model), code_grid(vq_model), size, cell_dim=num_classes)
        return cls(transformer.to(model_device(vq_model)), num_classes)

    def layout(self, maps: torch.Tensor) -> torch.Tensor:
        return layout_features(maps, self.transformer.grid, self.num_classes)

    def fit(self, codes: CodeDataset, maps: torch.Tensor, settings: TrainSettings) -> list[float]:
        """Train on ``codes`` with their images' semantic maps (same rows)."""
        if len(maps) != len(codes):
            raise ValueError(f"got {len(maps)} maps for {len(codes)} code rows")
        return fit_autoregressive(self.transformer, codes, settings, cells=self.layout(maps))

    def generate(self, maps: torch.Tensor, *, sampling: Sampling = Sampling(), seed: int = 0) -> torch.Tensor:
        """One (h, w) code grid per map: (N, h, w) int64."""
        cells = self.layout(maps)
        return self.transformer.sample(len(cells), cells=cells, sampling=sampling, seed=seed)
