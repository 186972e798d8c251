"""Visual tokens: a small ViT over the quantized grid (LG-VQ's visual-token module).

z_q (B, hw, C) → prepend a learned CLS vector → + learned positions (hw + 1) → LayerNorm →
pre-LN transformer (2 layers, 1 head, width C, FFN 4C) → LayerNorm → projection C → Dt on
every output. T[:, 0] is the global token g, T[:, 1:] the per-position tokens.

The ``lgvq`` flavour uses exact GELU, a biased projection and trunc-normal(0.02) CLS and
positions; the ``release`` flavour is the release's quantTransformer (a CLIP ViT without the
patch convolution): QuickGELU, a projection without bias, std 0.01 for CLS, positions and
projection, and CLIP's initialisation of the blocks.
"""

from __future__ import annotations

import torch
from torch import nn


def redraw_linear_bias(linear: nn.Linear) -> None:
    """A fresh draw of nn.Linear's default bias, U(±1/√fan_in)."""
    bound = linear.in_features ** -0.5
    nn.init.uniform_(linear.bias, -bound, bound)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's GELU approximation x·σ(1.702x), which the release's ViT blocks use."""
    return x * torch.sigmoid(1.702 * x)


class VisualTokenizer(nn.Module):
    def __init__(self, code_dim: int, num_positions: int, text_dim: int, *, layers: int = 2, heads: int = 1,
                 dropout: float = 0.0, release: bool = False):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, code_dim))
        self.positions = nn.Parameter(torch.zeros(1, num_positions + 1, code_dim))
        self.norm_in = nn.LayerNorm(code_dim)
        layer = nn.TransformerEncoderLayer(
            code_dim, heads, dim_feedforward=4 * code_dim, dropout=dropout,
            activation=quick_gelu if release else "gelu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(code_dim)
        self.proj = nn.Linear(code_dim, text_dim, bias=not release)
        self.num_positions = num_positions
        if release:
            self._init_like_clip()
        else:
            nn.init.trunc_normal_(self.cls, std=0.02)
            nn.init.trunc_normal_(self.positions, std=0.02)

    def _init_like_clip(self) -> None:
        """The release's quantTransformer.initialize_parameters: std 0.01 for CLS, positions and
        projection; CLIP's std for each block's attention and MLP weights (biases as torch leaves them)."""
        for p in (self.cls, self.positions, self.proj.weight):
            nn.init.normal_(p, std=0.01)
        width, depth = self.cls.shape[-1], len(self.transformer.layers)
        attn_std, fc_std = width ** -0.5, (2 * width) ** -0.5
        proj_std = attn_std * (2 * depth) ** -0.5
        for block in self.transformer.layers:
            nn.init.normal_(block.self_attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.self_attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.linear1.weight, std=fc_std)
            nn.init.normal_(block.linear2.weight, std=proj_std)
            for linear in (block.linear1, block.linear2):
                redraw_linear_bias(linear)  # torch's clones share one draw; the release's blocks do not

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
