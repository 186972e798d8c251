"""Semantic-map-conditioned synthesis: a CodeTransformer prefixed by a class layout.

A semantic map (S, S) of class ids is pooled onto the code grid: each code cell becomes one
prefix token holding the fraction of its pixels in every class, followed by a one-hot of the
cell's position. The position is spelled out because CodeTransformer gives prefix tokens
no positions of its own (caption word features carry their order; layout cells do not).
The prefix travels in a ``TextFeatures``, the transformer's container for any condition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lgvq.checks import check_positive, check_tensor
from lgvq.tasks.autoregressive import CodeTransformer, Sampling, fit_autoregressive
from lgvq.tasks.codes import INDEX_DTYPES, CodeDataset, code_grid, frozen_codebook, model_device
from lgvq.tasks.layers import TransformerSize
from lgvq.tasks.text_features import TextFeatures
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


def layout_features(maps: torch.Tensor, grid: tuple[int, int], num_classes: int) -> TextFeatures:
    """(N, h*w, num_classes + h*w) prefix: class fractions per code cell, then its position."""
    maps = check_semantic_maps(maps, num_classes)
    cells = grid[0] * grid[1]
    fractions = F.adaptive_avg_pool2d(F.one_hot(maps, num_classes).permute(0, 3, 1, 2).float(), grid)
    position = torch.eye(cells, device=maps.device).expand(len(maps), -1, -1)
    words = torch.cat([fractions.flatten(2).transpose(1, 2), position], dim=2)
    return TextFeatures(words, torch.ones(len(maps), cells, dtype=torch.bool, device=maps.device))


class SemanticSynthesis:
    """A CodeTransformer conditioned on a semantic map's layout."""

    def __init__(self, transformer: CodeTransformer, num_classes: int):
        check_positive("num_classes", num_classes)
        cells = transformer.num_codes
        if transformer.condition is None or transformer.condition.in_features != num_classes + cells:
            raise ValueError(f"transformer must be conditional with condition_dim = num_classes + {cells}")
        self.transformer = transformer
        self.num_classes = num_classes

    @classmethod
    def build(cls, vq_model, num_classes: int, size: TransformerSize = TransformerSize()) -> SemanticSynthesis:
        grid = code_grid(vq_model)
        transformer = CodeTransformer(
            frozen_codebook(vq_model), grid, size, condition_dim=num_classes + grid[0] * grid[1]
        )
        return cls(transformer.to(model_device(vq_model)), num_classes)

    def layout(self, maps: torch.Tensor) -> TextFeatures:
        return layout_features(maps, self.transformer.grid, self.num_classes)

    def fit(self, codes: CodeDataset, maps: torch.Tensor, settings: TrainSettings) -> list[float]:
        """Train on ``codes`` with their images' semantic maps (same rows)."""
        if len(maps) != len(codes):
            raise ValueError(f"got {len(maps)} maps for {len(codes)} code rows")
        return fit_autoregressive(self.transformer, codes, settings, condition=self.layout(maps))

    def generate(self, maps: torch.Tensor, *, sampling: Sampling = Sampling(), seed: int = 0) -> torch.Tensor:
        """One (h, w) code grid per map: (N, h, w) int64."""
        condition = self.layout(maps)
        return self.transformer.sample(len(condition), condition=condition, sampling=sampling, seed=seed)
