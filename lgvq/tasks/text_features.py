"""Frozen text features of prompts, captions and questions, encoded once per distinct string.

The text encoder is the slow part of preparing a task (about 8 ms per string on 2 CPU
cores), and datasets repeat strings (VQA questions are templated), so strings are
de-duplicated before encoding. Features are trimmed to the longest real token sequence:
the encoder pads every string to its fixed length, and downstream transformers should not
spend attention on columns that are padding in every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgvq.checks import check_positive


@dataclass(frozen=True)
class TextFeatures:
    """words: (N, L, Dt) float32 contextual word features; mask: (N, L) bool, True = real token."""

    words: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.words)

    @property
    def dim(self) -> int:
        return self.words.shape[-1]

    def rows(self, index: torch.Tensor) -> TextFeatures:
        index = index.to(self.words.device)
        return TextFeatures(self.words[index], self.mask[index])

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(self.words.to(device), self.mask.to(device))


def check_texts(name: str, texts, *, allow_blank: bool = False) -> list[str]:
    """A non-empty list of strings, non-blank unless ``allow_blank`` (a generated caption may
    be empty: a bad result, not an error). A bare string is refused: it would iterate by
    character."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name} must be a non-empty list of str, got an empty list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}")
        if not allow_blank and not text.strip():
            raise ValueError(f"{name}[{i}] is empty or whitespace-only: {text!r}")
    return list(texts)


def encode_text_table(
    text_encoder, texts, *, name: str = "texts", batch_size: int = 256
) -> tuple[TextFeatures, torch.Tensor]:
    """(features of each distinct string, on CPU; (N,) int64 row of each text in them).

    Callers with many repeated strings (VQA questions) keep the table and index it per
    batch instead of materialising one feature row per text.
    """
    texts = check_texts(name, texts)
    check_positive("batch_size", batch_size)
    unique = list(dict.fromkeys(texts))
    words, masks = [], []
    for start in range(0, len(unique), batch_size):
        encoded = text_encoder(unique[start : start + batch_size])
        words.append(encoded.words.cpu())
        masks.append(encoded.tokens.attention_mask.bool().cpu())
    words, mask = torch.cat(words), torch.cat(masks)
    length = int(mask.sum(1).max())
    row = {text: i for i, text in enumerate(unique)}
    index = torch.tensor([row[text] for text in texts], dtype=torch.int64)
    return TextFeatures(words[:, :length].contiguous(), mask[:, :length].contiguous()), index


def encode_texts(
    text_encoder, texts, *, name: str = "texts", batch_size: int = 256
) -> TextFeatures:
    """Word features of ``texts`` in order (on CPU), encoding each distinct string once."""
    table, index = encode_text_table(text_encoder, texts, name=name, batch_size=batch_size)
    return table.rows(index)
