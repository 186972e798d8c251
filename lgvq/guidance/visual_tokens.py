"""Visual tokens: a small ViT over the quantized grid (LG-VQ's visual-token module).

z_q (B, hw, C) → prepend a learned CLS vector → + learned positions (hw + 1) → LayerNorm →
transformer (2 layers, 1 head, width C) → LayerNorm → Linear C → Dt on every output.
T[:, 0] is the global token g, T[:, 1:] the per-position tokens.
"""

from __future__ import annotations

import torch
from torch import nn


class VisualTokenizer(nn.Module):
    def __init__(self, code_dim: int, num_positions: int, text_dim: int, *, layers: int = 2, heads: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, code_dim))
        self.positions = nn.Parameter(torch.zeros(1, num_positions + 1, code_dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.positions, std=0.02)
        self.norm_in = nn.LayerNorm(code_dim)
        layer = nn.TransformerEncoderLayer(
            code_dim, heads, dim_feedforward=4 * code_dim, dropout=dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(code_dim)
        self.proj = nn.Linear(code_dim, text_dim)
        self.num_positions = num_positions

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, hw, C) → T (B, 1 + hw, Dt)."""
        if codes.shape[1] != self.num_positions:
            raise ValueError(
                f"the code grid has {codes.shape[1]} positions but the guidance was built for "
                f"{self.num_positions} (grid_size)"
            )
        x = torch.cat([self.cls.expand(codes.shape[0], -1, -1), codes], dim=1) + self.positions
        x = self.norm_out(self.transformer(self.norm_in(x)))
        return self.proj(x)
