"""VQ autoencoder losses: reconstruction (+ LPIPS) + codebook loss, and VQ-GAN's adversarial part.

``VQLPIPSWithDiscriminator`` follows taming's module of that name (as the LG-VQ release uses
it): generator loss = nll + d_weight·disc_factor·g_loss + codebook_weight·codebook_loss, with
nll the mean of |x − x̂| (+ perceptual_weight·LPIPS), g_loss = −mean D(x̂), d_weight taming's
adaptive weight and disc_factor 0 before ``disc_start``; discriminator loss =
disc_factor·hinge (or vanilla) loss. Differences from taming:

* an L2 pixel term is available (``l2_weight``; LG-VQ's VQ-VAE loss is L1 + L2, no GAN), and
  ``use_discriminator=False`` builds no discriminator at all;
* LPIPS is on only when local VGG16 + LPIPS weight files are given (``vgg_path``,
  ``lpips_path``); otherwise it is off and a warning says so once;
* before ``disc_start`` the generator's GAN term is skipped instead of being computed and
  multiplied by 0 (same loss and gradients, no discriminator forward, no adaptive-weight
  backward passes).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import check_choice, check_positive
from lgvq.models.discriminator import NLayerDiscriminator
from lgvq.models.lpips import LPIPS

logger = logging.getLogger(__name__)

GAN_LOSSES = ("hinge", "vanilla")


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """taming's calculate_adaptive_weight (before the disc_weight factor): the ratio of the two
    losses' gradient norms at the decoder's last layer, so the GAN term moves that layer about
    as much as the reconstruction term does. Clamped to [0, 1e4] and detached."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class VQLPIPSWithDiscriminator(nn.Module):
    """Reconstruction + codebook (+ LPIPS) (+ PatchGAN) loss of a VQ autoencoder.

    Args:
        disc_start: global step from which the GAN terms are on.
        codebook_weight: weight of the quantizer's loss.
        l1_weight, l2_weight: weights of mean |x − x̂| and mean (x − x̂)².
        perceptual_weight: LPIPS weight; needs ``vgg_path`` and ``lpips_path``.
        vgg_path, lpips_path: local torchvision ``vgg16-397923af.pth`` and LPIPS ``vgg.pth``.
        use_discriminator: build the PatchGAN and its loss terms.
        disc_in_channels, disc_ndf, disc_num_layers, use_actnorm: NLayerDiscriminator settings.
        disc_factor: weight of both GAN terms once started; disc_weight: multiplies the
            adaptive weight; disc_loss: ``"hinge"`` | ``"vanilla"``.
    """

    def __init__(
        self,
        disc_start: int = 0,
        codebook_weight: float = 1.0,
        l1_weight: float = 1.0,
        l2_weight: float = 0.0,
        perceptual_weight: float = 1.0,
        vgg_path=None,
        lpips_path=None,
        use_discriminator: bool = True,
        disc_in_channels: int = 3,
        disc_ndf: int = 64,
        disc_num_layers: int = 3,
        use_actnorm: bool = False,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        disc_loss: str = "hinge",
    ):
        super().__init__()
        for name, value in [
            ("disc_start", disc_start), ("codebook_weight", codebook_weight), ("l1_weight", l1_weight),
            ("l2_weight", l2_weight), ("perceptual_weight", perceptual_weight),
            ("disc_factor", disc_factor), ("disc_weight", disc_weight),
        ]:
            check_positive(name, value, allow_zero=True)
        check_choice("disc_loss", disc_loss, GAN_LOSSES)
        self.disc_start = disc_start
        self.codebook_weight, self.l1_weight, self.l2_weight = codebook_weight, l1_weight, l2_weight
        self.disc_factor, self.disc_weight = disc_factor, disc_weight
        self.perceptual_loss = self._build_perceptual(perceptual_weight, vgg_path, lpips_path)
        self.perceptual_weight = perceptual_weight if self.perceptual_loss is not None else 0.0
        self.discriminator = (
            NLayerDiscriminator(disc_in_channels, disc_ndf, disc_num_layers, use_actnorm) if use_discriminator else None
        )
        self.gan_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss

    @staticmethod
    def _build_perceptual(weight: float, vgg_path, lpips_path) -> LPIPS | None:
        if weight == 0:
            return None
        if vgg_path is None and lpips_path is None:
            logger.warning(
                "perceptual (LPIPS) loss is off: no local weights given "
                "(pass vgg_path=<vgg16-397923af.pth> and lpips_path=<LPIPS vgg.pth> to enable it)"
            )
            return None
        if vgg_path is None or lpips_path is None:
            raise ValueError(
                "the LPIPS loss needs both vgg_path (torchvision vgg16-397923af.pth) and lpips_path "
                f"(LPIPS vgg.pth); got vgg_path={vgg_path!r}, lpips_path={lpips_path!r}"
            )
        return LPIPS.from_files(vgg_path, lpips_path)

    def disc_factor_at(self, global_step: int) -> float:
        """taming's adopt_weight: ``disc_factor`` from ``disc_start`` on, 0 before (and always
        0 without a discriminator). Training loops can skip the discriminator step while 0."""
        if self.discriminator is None or global_step < self.disc_start:
            return 0.0
        return self.disc_factor

    def reconstruction_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-term means and their weighted sum ``nll``."""
        diff = (inputs - reconstructions).float()
        terms = {"l1_loss": diff.abs().mean(), "l2_loss": diff.pow(2).mean()}
        nll = self.l1_weight * terms["l1_loss"] + self.l2_weight * terms["l2_loss"]
        if self.perceptual_loss is not None:
            terms["p_loss"] = self.perceptual_loss(inputs.float(), reconstructions.float()).mean()
            nll = nll + self.perceptual_weight * terms["p_loss"]
        terms["nll_loss"] = nll
        return terms

    def generator_loss(
        self,
        codebook_loss: torch.Tensor,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        global_step: int,
        last_layer: torch.Tensor | None = None,
        split: str = "train",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Autoencoder objective. ``last_layer`` (the decoder's last weight, ``model.get_last_layer()``)
        is needed once the GAN term is on and gradients are enabled; without gradients (validation)
        the adaptive weight is 0, as in taming."""
        terms = self.reconstruction_loss(inputs, reconstructions)
        nll = terms["nll_loss"]
        disc_factor = self.disc_factor_at(global_step)
        g_loss = d_weight = torch.zeros((), device=nll.device)
        if disc_factor > 0:
            g_loss = -self.discriminator(reconstructions).mean()
            if torch.is_grad_enabled():
                if last_layer is None:
                    raise ValueError("generator_loss needs last_layer (model.get_last_layer()) once the GAN is on")
                d_weight = adaptive_weight(nll, g_loss, last_layer) * self.disc_weight
        loss = nll + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
        logs = {**terms, "quant_loss": codebook_loss.mean(), "g_loss": g_loss, "d_weight": d_weight,
                "disc_factor": torch.tensor(disc_factor), "total_loss": loss}
        return loss, {f"{split}/{k}": v.detach() for k, v in logs.items()}

    def discriminator_loss(
        self, inputs: torch.Tensor, reconstructions: torch.Tensor, global_step: int, split: str = "train"
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """disc_factor · GAN loss of the discriminator on real inputs vs detached reconstructions."""
        if self.discriminator is None:
            raise RuntimeError("this loss was built with use_discriminator=False: there is no discriminator to train")
        logits_real = self.discriminator(inputs.detach())
        logits_fake = self.discriminator(reconstructions.detach())
        d_loss = self.disc_factor_at(global_step) * self.gan_loss(logits_real, logits_fake)
        logs = {"disc_loss": d_loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return d_loss, {f"{split}/{k}": v.detach() for k, v in logs.items()}

    def forward(self, codebook_loss, inputs, reconstructions, optimizer_idx: int, global_step: int,
                last_layer=None, split: str = "train"):
        """taming's call: ``optimizer_idx`` 0 = generator loss, 1 = discriminator loss."""
        if optimizer_idx == 0:
            return self.generator_loss(codebook_loss, inputs, reconstructions, global_step, last_layer, split)
        if optimizer_idx == 1:
            return self.discriminator_loss(inputs, reconstructions, global_step, split)
        raise ValueError(f"optimizer_idx must be 0 (generator) or 1 (discriminator), got {optimizer_idx}")
