"""``VQModel``: encoder → quant_conv → quantizer → post_quant_conv → decoder.

One skeleton for VQ-VAE (no attention, L1/L2 loss) and VQ-GAN (attention + the GAN/perceptual
loss of ``lgvq.models.losses``); the quantizer is lgvq's ``VectorQuantizer`` (``"vq"``, ``"ema"``),
``ClusteredVectorQuantizer`` (``"cvq"``), ``ResidualQuantizer`` (``"rvq"``: indices (B, h, w, L)),
or Open-MAGVIT2's IBQ (``"ibq"``) or LFQ (``"lfq"``: 2^embed_dim sign codes, so n_embed = 2^embed_dim)
from ``lgvq.compat``. Submodule names are taming's (``encoder``,
``quant_conv``, ``quantize``, ``post_quant_conv``, ``decoder``), so the autoencoder part of a
taming / LG-VQ checkpoint loads with ``load_state_dict``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import torch
from torch import nn

from lgvq.checks import check_choice, check_tensor
from lgvq.models.modules import Decoder, Encoder
from lgvq.compat import LFQ, IndexPropagationQuantize
from lgvq.quantize import ClusteredVectorQuantizer, ResidualQuantizer, VectorQuantizer

QUANTIZERS = ("vq", "ema", "cvq", "rvq", "ibq", "lfq")
#: The codebook options of the nearest-code quantizers, which IBQ and LFQ do not have.
_NEAREST_CODE_OPTIONS = ("kmeans_init", "dead_code_threshold")


@dataclass
class VQModelConfig:
    """Architecture and quantizer of a VQModel. Defaults: the LG-VQ paper's architecture
    (256², f=16, K=1024, d=256, attention at 16²); see ``lgvq.models.registry`` for named entries."""

    image_size: int = 256
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    mid_attention: bool = True
    dropout: float = 0.0
    z_channels: int = 256
    embed_dim: int = 256  # code dimension d
    n_embed: int = 1024  # codebook size K
    quantizer: str = "vq"  # "vq" | "ema" | "cvq" | "rvq" | "ibq" | "lfq"
    beta: float = 0.25
    # lgvq's models use the fixed weighting (beta on the commitment term) unless an entry says
    # legacy=True (taming's VectorQuantizer2 default, and VectorQuantizer's: beta on the codebook term)
    legacy: bool = False
    metric: str = "l2"
    kmeans_init: bool = False
    dead_code_threshold: float = 0.0
    ema_decay: float = 0.99
    cvq_anchor: str = "probrandom"
    cvq_decay: float = 0.99
    cvq_contrastive: bool = False
    # IBQ / LFQ: weight of MAGVIT-2's entropy loss in the quantizer's loss (0: off; Open-MAGVIT2's
    # configs: IBQ 0.05, LFQ 0.1); LFQ weighs its commitment loss by beta. global_entropy: under
    # DDP, the entropy of the global batch instead of each rank's (lgvq.quantize.entropy).
    entropy_loss_weight: float = 0.05
    global_entropy: bool = False
    num_stages: int = 4  # rvq: residual stages L
    codebook_dim: int = 0  # rvq: factorised codes of this dimension (0: embed_dim, no projection)
    backend: str = "auto"

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        check_choice("quantizer", self.quantizer, QUANTIZERS)
        if self.quantizer in ("ibq", "lfq"):
            given = [name for name in _NEAREST_CODE_OPTIONS if getattr(self, name)]
            if given or self.metric != "l2":
                raise ValueError(
                    f"quantizer={self.quantizer!r} takes none of kmeans_init, dead_code_threshold, metric; "
                    f"got {', '.join(given + (['metric'] if self.metric != 'l2' else []))}"
                )
        if self.quantizer == "rvq" and self.kmeans_init:
            raise ValueError("kmeans_init is not supported by quantizer='rvq' (its stages start from dead-code restarts)")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the code grid h = w = image_size / f."""
        return self.image_size // self.downsample_factor

    def replace(self, **overrides) -> VQModelConfig:
        """A copy with ``overrides`` applied; unknown names raise a TypeError listing the fields."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown VQModelConfig fields {unknown}; valid fields: {sorted(names)}")
        return dataclasses.replace(self, **overrides)


def build_quantizer(config: VQModelConfig) -> VectorQuantizer | ResidualQuantizer | LFQ:
    softmax = dict(entropy_loss_weight=config.entropy_loss_weight, global_entropy=config.global_entropy,
                   track_usage=True, backend=config.backend)
    if config.quantizer == "ibq":
        return IndexPropagationQuantize(
            config.n_embed, config.embed_dim, config.beta, use_entropy_loss=config.entropy_loss_weight > 0, **softmax
        )
    if config.quantizer == "lfq":
        return LFQ(dim=config.embed_dim, codebook_size=config.n_embed, commit_weight=config.beta, **softmax)
    common = dict(
        metric=config.metric, kmeans_init=config.kmeans_init, dead_code_threshold=config.dead_code_threshold,
        sane_index_shape=True, track_usage=True, backend=config.backend,
    )
    if config.quantizer == "rvq":
        return ResidualQuantizer(
            config.n_embed, config.embed_dim, config.num_stages, config.beta, codebook_dim=config.codebook_dim or None,
            metric=config.metric, decay=config.ema_decay, dead_code_threshold=config.dead_code_threshold,
            track_usage=True, backend=config.backend,
        )
    if config.quantizer == "cvq":
        return ClusteredVectorQuantizer(
            config.n_embed, config.embed_dim, config.beta, anchor=config.cvq_anchor, cvq_decay=config.cvq_decay,
            contrastive=config.cvq_contrastive, **common,
        )
    return VectorQuantizer(
        config.n_embed, config.embed_dim, config.beta, legacy=config.legacy, ema=config.quantizer == "ema",
        decay=config.ema_decay, **common,
    )


@dataclass
class VQOutput:
    x_rec: torch.Tensor  # (B, in_channels, H, W)
    z_q: torch.Tensor  # (B, embed_dim, h, w), straight-through
    indices: torch.Tensor  # int64 (B, h, w); (B, h, w, L) for residual codes
    vq_loss: torch.Tensor  # fp32 scalar from the quantizer
    perplexity: torch.Tensor  # of this batch's code histogram
    usage: torch.Tensor  # fraction of codes used within the quantizer's usage window


class VQModel(nn.Module):
    def __init__(self, config: VQModelConfig):
        super().__init__()
        self.config = config
        arch = dict(
            ch=config.ch, ch_mult=config.ch_mult, num_res_blocks=config.num_res_blocks,
            attn_resolutions=config.attn_resolutions, resolution=config.image_size, z_channels=config.z_channels,
            dropout=config.dropout, mid_attention=config.mid_attention,
        )
        self.encoder = Encoder(in_channels=config.in_channels, **arch)
        self.decoder = Decoder(out_channels=config.in_channels, **arch)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = build_quantizer(config)  # taming's attribute name, for checkpoint keys
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def _check_images(self, x: torch.Tensor) -> None:
        check_tensor("x", x, ndim=4, finite=False)
        expected = (self.config.in_channels, self.config.image_size, self.config.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")

    def _quantize(self, x: torch.Tensor):
        self._check_images(x)
        z = self.quant_conv(self.encoder(x))
        out = self.quantize.quantize(z.permute(0, 2, 3, 1))  # channels-last (B, h, w, d)
        return out.z_q.permute(0, 3, 1, 2), out

    def forward(self, x: torch.Tensor) -> VQOutput:
        z_q, out = self._quantize(x)
        return VQOutput(
            x_rec=self.decode(z_q), z_q=z_q, indices=out.indices, vq_loss=out.loss,
            perplexity=out.perplexity, usage=out.usage,
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images → (z_q (B, embed_dim, h, w), indices (B, h, w)). In training mode this also
        updates the quantizer's statistics, as ``forward`` does."""
        z_q, out = self._quantize(x)
        return z_q, out.indices

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w), or (B, h, w, L) for residual codes → images."""
        ndim = 4 if self.config.quantizer == "rvq" else 3
        check_tensor("indices", indices, ndim=ndim, dtypes=(torch.int64, torch.int32), finite=False)
        codes = self.quantize.get_codebook_entry(indices)  # (B, h, w, d)
        return self.decode(codes.permute(0, 3, 1, 2))

    def get_last_layer(self) -> torch.Tensor:
        """The decoder's last weight, where the GAN loss's adaptive weight is measured."""
        return self.decoder.conv_out.weight
