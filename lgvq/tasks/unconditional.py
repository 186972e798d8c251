"""Unconditional generation: the same CodeTransformer as text-to-image, with no prefix."""

from __future__ import annotations

import torch

from lgvq.tasks.autoregressive import CodeTransformer, Sampling, fit_autoregressive
from lgvq.tasks.codes import CodeDataset, code_grid, frozen_codebook, model_device
from lgvq.tasks.layers import TransformerSize
from lgvq.tasks.training import TrainSettings


class UnconditionalGenerator:
    """An unconditional CodeTransformer over one VQ model's codes."""

    def __init__(self, transformer: CodeTransformer):
        if transformer.conditional:
            raise ValueError("transformer must be unconditional (built without condition_dim)")
        self.transformer = transformer

    @classmethod
    def build(cls, vq_model, size: TransformerSize = TransformerSize()) -> UnconditionalGenerator:
        transformer = CodeTransformer(frozen_codebook(vq_model), code_grid(vq_model), size)
        return cls(transformer.to(model_device(vq_model)))

    def fit(self, codes: CodeDataset, settings: TrainSettings) -> list[float]:
        return fit_autoregressive(self.transformer, codes, settings)

    def generate(
        self, num_images: int, *, sampling: Sampling = Sampling(), seed: int = 0
    ) -> torch.Tensor:
        """(num_images, h, w) int64 code grids."""
        return self.transformer.sample(num_images, sampling=sampling, seed=seed)
