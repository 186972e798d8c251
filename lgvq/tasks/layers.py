"""Building blocks shared by every task network.

``CodeEmbedding`` is where the codebook under test enters a task: a code's input vector is
its frozen codebook entry (through a learned linear map), not a freely learned embedding,
so a codebook whose geometry carries meaning (LG-VQ's claim) gives the task model a head
start that a plain codebook does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lgvq.checks import check_positive, check_tensor


@dataclass(frozen=True)
class TransformerSize:
    """Width, depth and heads of a task transformer (pre-LayerNorm, GELU, FFN 4x width)."""

    width: int = 128
    depth: int = 2
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("width", "depth", "heads"):
            check_positive(name, getattr(self, name))
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def init_vector(width: int) -> nn.Parameter:
    """A learned (1, 1, width) token (start, class), GPT-2's N(0, 0.02) init."""
    return nn.Parameter(torch.randn(1, 1, width) * 0.02)


class CodeEmbedding(nn.Module):
    """Code indices (B, m) -> frozen codebook entries -> learned linear -> + learned position.

    The codebook is standardised by one global mean and standard deviation: that keeps every
    direction and relative distance between codes (the information being compared) while
    removing the scale, which differs by orders of magnitude between VQ models (taming's init
    is U(-1/K, 1/K)) and would otherwise change how fast the linear map learns.
    """

    def __init__(self, codebook: torch.Tensor, num_positions: int, width: int):
        super().__init__()
        check_tensor("codebook", codebook, ndim=2)
        codebook = codebook.detach().float()
        std = codebook.std().clamp(min=1e-8)
        self.register_buffer("codebook", (codebook - codebook.mean()) / std)
        self.project = nn.Linear(codebook.shape[1], width)
        self.position = nn.Parameter(torch.randn(1, num_positions, width) * 0.02)

    @property
    def n_embed(self) -> int:
        return self.codebook.shape[0]

    def forward(self, indices: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Embed (B, m) indices sitting at sequence positions offset .. offset + m - 1."""
        m = indices.shape[1]
        return self.project(self.codebook[indices]) + self.position[:, offset : offset + m]


def _block_options(size: TransformerSize) -> dict:
    """The layer options every task transformer shares (see TransformerSize)."""
    return dict(
        d_model=size.width,
        nhead=size.heads,
        dim_feedforward=4 * size.width,
        dropout=size.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )


def encoder_stack(size: TransformerSize) -> nn.TransformerEncoder:
    """Self-attention blocks (used causally by the AR model, bidirectionally elsewhere)."""
    layer = nn.TransformerEncoderLayer(**_block_options(size))
    # nested tensors need post-norm layers; asking for them would only warn
    return nn.TransformerEncoder(layer, size.depth, enable_nested_tensor=False)


def decoder_stack(size: TransformerSize) -> nn.TransformerDecoder:
    """Causal self-attention + cross-attention blocks (the caption decoder)."""
    return nn.TransformerDecoder(nn.TransformerDecoderLayer(**_block_options(size)), size.depth)


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(length, length) bool, True where attention is forbidden (a later position)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
