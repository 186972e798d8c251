"""Named model configurations: ``build_model(name)`` and ``build_loss(name)``.

Tiny entries train on CPU on the embedded 32×32 data (f = 4, 8×8 codes). Paper entries are
the LG-VQ release's settings: 256×256 images, f = 16 (16×16 codes), K = 1024 codes of d = 256,
taming's VQ-GAN architecture and loss (disc_start 10000, disc_weight 0.8). Its VQ-GAN uses
taming's VectorQuantizer2 with the default ``legacy=True`` weighting; its CVQ uses CVQ-VAE's
quantiser with ``distance='l2'``, ``anchor='probrandom'`` and the contrastive loss on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lgvq.models.losses import VQLPIPSWithDiscriminator
from lgvq.models.vqmodel import VQModel, VQModelConfig


@dataclass(frozen=True)
class ModelSpec:
    description: str
    model: VQModelConfig
    loss: dict = field(default_factory=dict)  # VQLPIPSWithDiscriminator keyword arguments


_TINY = VQModelConfig(
    image_size=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
    z_channels=64, embed_dim=64, n_embed=256,
)
_TINY_GAN_LOSS = dict(disc_start=500, disc_weight=0.8, disc_ndf=32, disc_num_layers=2)
# LG-VQ's VQ-VAE objective (its VQLPIPS): L1 + L2 reconstruction, no perceptual or GAN term.
_VQVAE_LOSS = dict(l1_weight=1.0, l2_weight=1.0, perceptual_weight=0.0, use_discriminator=False)
_PAPER_GAN_LOSS = dict(disc_start=10000, disc_weight=0.8, codebook_weight=1.0)

MODELS: dict[str, ModelSpec] = {
    "vqvae-tiny": ModelSpec(
        "CPU VQ-VAE, 32x32 -> 8x8 codes, K=256, d=64; residual conv nets without attention, L1+L2 loss",
        _TINY.replace(attn_resolutions=(), mid_attention=False),
        _VQVAE_LOSS,
    ),
    "vqgan-tiny": ModelSpec(
        "CPU VQ-GAN, 32x32 -> 8x8 codes, K=256, d=64; attention at 8x8, PatchGAN from step 500",
        _TINY,
        _TINY_GAN_LOSS,
    ),
    "cvq-tiny": ModelSpec(
        "vqgan-tiny with CVQ-VAE's online clustered codebook (probrandom anchors, contrastive loss)",
        _TINY.replace(quantizer="cvq", cvq_contrastive=True),
        _TINY_GAN_LOSS,
    ),
    "ibq-tiny": ModelSpec(
        "vqvae-tiny with Open-MAGVIT2's IBQ quantizer (softmax over all 1024 codes, entropy loss 0.05)",
        _TINY.replace(attn_resolutions=(), mid_attention=False, quantizer="ibq", n_embed=1024),
        _VQVAE_LOSS,
    ),
    "lfq-tiny": ModelSpec(
        "vqvae-tiny with Open-MAGVIT2's LFQ: 10 sign bits (1024 codes), exact entropy loss 0.1, commitment 0.25",
        _TINY.replace(attn_resolutions=(), mid_attention=False, quantizer="lfq", embed_dim=10, n_embed=1024,
                      entropy_loss_weight=0.1),
        _VQVAE_LOSS,
    ),
    "rqvae-tiny": ModelSpec(
        "vqvae-tiny with RQ-VAE's residual codes: 4 stages of K=256 EMA codes (d=64) per 8x8 position",
        _TINY.replace(attn_resolutions=(), mid_attention=False, quantizer="rvq", num_stages=4),
        _VQVAE_LOSS,
    ),
    "vqgan-f16-paper": ModelSpec(
        "LG-VQ paper VQ-GAN: 256x256 -> 16x16 codes, K=1024, d=256, taming architecture and loss",
        VQModelConfig(legacy=True),
        _PAPER_GAN_LOSS,
    ),
    "cvq-f16-paper": ModelSpec(
        "LG-VQ paper CVQ: vqgan-f16-paper with CVQ-VAE's quantiser (l2, probrandom, contrastive loss)",
        VQModelConfig(quantizer="cvq", cvq_anchor="probrandom", cvq_contrastive=True),
        _PAPER_GAN_LOSS,
    ),
}


def model_names() -> list[str]:
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")
    return MODELS[name]


def build_model(name_or_config: str | VQModelConfig, **overrides) -> VQModel:
    """A VQModel from a registry name or a VQModelConfig, with VQModelConfig fields overridden."""
    config = get_spec(name_or_config).model if isinstance(name_or_config, str) else name_or_config
    if not isinstance(config, VQModelConfig):
        raise TypeError(f"name_or_config must be a model name or a VQModelConfig, got {type(config).__name__}")
    return VQModel(config.replace(**overrides))


def build_loss(name: str, **overrides) -> VQLPIPSWithDiscriminator:
    """The named entry's loss, with VQLPIPSWithDiscriminator arguments overridden (e.g.
    ``vgg_path=..., lpips_path=...`` to switch the perceptual loss on)."""
    spec = get_spec(name)
    return VQLPIPSWithDiscriminator(**{**spec.loss, "disc_in_channels": spec.model.in_channels, **overrides})
