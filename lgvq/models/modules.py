"""Convolutional encoder and decoder of VQ-VAE / VQ-GAN, as taming-transformers builds them.

Module and parameter names follow taming's ``diffusionmodules/model.py`` (``conv_in``,
``down[i].block[j]``, ``mid.attn_1``, ``up[i].upsample``, ``norm_out`` ...), so the encoder and
decoder of a released taming / LG-VQ checkpoint load into these classes unchanged.
Differences: no timestep embedding (taming's VQ models pass none), attention computed by
``scaled_dot_product_attention`` (same maths), and ``mid_attention=False`` drops the middle
attention block for attention-free VQ-VAE models.

Spatial sizes: the encoder downsamples by ``f = 2 ** (len(ch_mult) - 1)``; a level whose
resolution is in ``attn_resolutions`` follows each of its residual blocks with attention.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

#: GroupNorm groups, fixed as in taming; channel widths must be multiples of it.
NORM_GROUPS = 32


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice (dropout before the second conv), plus a skip that
    is a 1×1 conv when the width changes."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # Identity has no parameters, so the state dict matches taming's (no key when widths agree)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)

        def tokens(conv):  # (B, C, H, W) → (B, 1 head, HW, C)
            return conv(normed).reshape(b, 1, c, h * w).transpose(2, 3)

        attended = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        return x + self.proj_out(attended.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3×3 conv; taming pads right/bottom only, so the output is exactly half size."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: residual blocks, each followed by attention when the level has any.
    The owner attaches the resampling layer as ``downsample`` / ``upsample`` (taming's names;
    ``nn.Identity`` at the end of the chain)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool, dropout: float):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(i, o, dropout) for i, o in pairwise(widths))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks if attention else 0))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class Middle(nn.Module):
    """ResnetBlock → attention (unless disabled) → ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, attention: bool, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def level_resolutions(resolution: int, ch_mult) -> list[int]:
    """Spatial size at each level, validating the shared architecture arguments."""
    ch_mult = tuple(ch_mult)
    if not ch_mult or any(int(m) != m or m <= 0 for m in ch_mult):
        raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult}")
    factor = 2 ** (len(ch_mult) - 1)
    if resolution <= 0 or resolution % factor:
        raise ValueError(
            f"resolution {resolution} must be a positive multiple of the downsampling factor "
            f"2**(len(ch_mult)-1) = {factor}"
        )
    return [resolution // 2**i for i in range(len(ch_mult))]


def check_architecture(ch: int, ch_mult, num_res_blocks: int, attn_resolutions, resolutions: list[int]) -> None:
    if ch <= 0 or ch % NORM_GROUPS:
        raise ValueError(f"ch must be a positive multiple of {NORM_GROUPS} (GroupNorm groups), got {ch}")
    if num_res_blocks <= 0:
        raise ValueError(f"num_res_blocks must be > 0, got {num_res_blocks}")
    unreached = sorted(set(attn_resolutions) - set(resolutions))
    if unreached:
        raise ValueError(f"attn_resolutions {unreached} never occur; the levels' resolutions are {resolutions}")


class Encoder(nn.Module):
    """Image (B, in_channels, R, R) → latent (B, z_channels, R/f, R/f), f = 2**(len(ch_mult)-1)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult=(1, 1, 2, 2, 4),
        num_res_blocks: int,
        attn_resolutions=(),
        in_channels: int,
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        mid_attention: bool = True,
    ):
        super().__init__()
        resolutions = level_resolutions(resolution, ch_mult)
        check_architecture(ch, ch_mult, num_res_blocks, attn_resolutions, resolutions)
        self.in_channels = in_channels
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths = [ch] + [ch * m for m in ch_mult]
        self.down = nn.ModuleList()
        for i, res in enumerate(resolutions):
            level = Level(widths[i], widths[i + 1], num_res_blocks, res in attn_resolutions, dropout)
            level.downsample = Downsample(widths[i + 1]) if i < len(resolutions) - 1 else nn.Identity()
            self.down.append(level)
        self.mid = Middle(widths[-1], mid_attention, dropout)
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.downsample(level(h))
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, R/f, R/f) → image (B, out_channels, R, R); mirrors ``Encoder``
    with one more residual block per level (as taming)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult=(1, 1, 2, 2, 4),
        num_res_blocks: int,
        attn_resolutions=(),
        out_channels: int,
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        mid_attention: bool = True,
    ):
        super().__init__()
        resolutions = level_resolutions(resolution, ch_mult)
        check_architecture(ch, ch_mult, num_res_blocks, attn_resolutions, resolutions)
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = Middle(widths[-1], mid_attention, dropout)
        # up[i] works at resolutions[i] (up[0] is the full-resolution level, run last), the
        # index order of taming's checkpoints.
        self.up = nn.ModuleList()
        for i, res in enumerate(resolutions):
            block_in = widths[i + 1] if i + 1 < len(widths) else widths[-1]
            level = Level(block_in, widths[i], num_res_blocks + 1, res in attn_resolutions, dropout)
            level.upsample = Upsample(widths[i]) if i > 0 else nn.Identity()
            self.up.append(level)
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.upsample(level(h))
        return self.conv_out(F.silu(self.norm_out(h)))
