"""Text-to-image generation: a caption-prefixed CodeTransformer, decoded by the frozen VQ decoder."""

from __future__ import annotations

import torch

from lgvq.tasks.autoregressive import CodeTransformer, Sampling, fit_autoregressive
from lgvq.tasks.codes import CodeDataset, code_grid, frozen_codebook, model_device
from lgvq.tasks.layers import TransformerSize
from lgvq.tasks.text_features import TextFeatures, encode_texts
from lgvq.tasks.training import TrainSettings


class TextToImage:
    """A conditional CodeTransformer and the frozen text encoder that reads its prompts."""

    def __init__(self, transformer: CodeTransformer, text_encoder):
        if not transformer.conditional:
            raise ValueError("transformer must be conditional (built with condition_dim)")
        self.transformer = transformer
        self.text_encoder = text_encoder

    @classmethod
    def build(
        cls, vq_model, text_encoder, size: TransformerSize = TransformerSize()
    ) -> TextToImage:
        transformer = CodeTransformer(
            frozen_codebook(vq_model), code_grid(vq_model), size, condition_dim=text_encoder.dim
        )
        return cls(transformer.to(model_device(vq_model)), text_encoder)

    def encode_prompts(self, prompts) -> TextFeatures:
        return encode_texts(self.text_encoder, prompts, name="prompts")

    def fit(
        self, codes: CodeDataset, settings: TrainSettings, captions: TextFeatures | None = None
    ) -> list[float]:
        """Train on ``codes`` with their captions (``captions``: their precomputed features)."""
        if captions is None:
            captions = encode_texts(self.text_encoder, codes.captions, name="codes.captions")
        return fit_autoregressive(self.transformer, codes, settings, condition=captions)

    def generate(self, prompts, *, sampling: Sampling = Sampling(), seed: int = 0) -> torch.Tensor:
        """One (h, w) code grid per prompt: (B, h, w) int64."""
        condition = self.encode_prompts(prompts)
        return self.transformer.sample(
            len(condition), condition=condition, sampling=sampling, seed=seed
        )
