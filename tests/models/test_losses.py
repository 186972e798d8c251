"""VQ-GAN losses against hand computations: hinge / vanilla GAN losses, the adaptive weight,
the disc_start schedule, and the composition of the generator loss."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from lgvq.models import NLayerDiscriminator, VQLPIPSWithDiscriminator, adaptive_weight, hinge_d_loss, vanilla_d_loss
from lgvq.models.discriminator import ActNorm


def test_hinge_loss_by_hand():
    real = torch.tensor([[0.5, 2.0]])
    fake = torch.tensor([[-2.0, 0.5]])
    # real: relu(1 - [0.5, 2]) = [0.5, 0] → 0.25; fake: relu(1 + [-2, 0.5]) = [0, 1.5] → 0.75
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.75))


def test_vanilla_loss_by_hand():
    real, fake = torch.tensor([1.0, -1.0]), torch.tensor([0.0])
    expected = 0.5 * ((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2 + math.log(2))
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_adaptive_weight_by_hand():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    nll = (w * torch.tensor([3.0, 4.0])).sum()  # gradient (3, 4), norm 5
    g = (w * torch.tensor([0.0, 2.0])).sum()  # gradient (0, 2), norm 2
    assert adaptive_weight(nll, g, w).item() == pytest.approx(5 / (2 + 1e-4))
    flat = (w * 0.0).sum()  # zero GAN gradient: 5 / 1e-4 = 5e4, clamped to 1e4
    assert adaptive_weight(nll, flat, w).item() == pytest.approx(1e4)


class CountingDiscriminator(torch.nn.Module):
    """D(x) = mean over channels of a·x: simple enough to check g_loss by hand."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.a * x.mean(dim=1, keepdim=True)


def make_loss(**kwargs):
    loss = VQLPIPSWithDiscriminator(perceptual_weight=0.0, **kwargs)
    loss.discriminator = CountingDiscriminator()
    return loss


def test_generator_loss_composition_after_start():
    loss_fn = make_loss(disc_start=10, disc_weight=0.8, disc_factor=0.5, codebook_weight=2.0)
    last_layer = torch.tensor(1.5, requires_grad=True)
    x = torch.tensor([[[[0.2, -0.4]]]])  # (1, 1, 1, 2)
    x_rec = last_layer * torch.tensor([[[[0.1, 0.1]]]])  # 0.15 each
    codebook_loss = torch.tensor(0.3)
    loss, logs = loss_fn.generator_loss(codebook_loss, x, x_rec, global_step=10, last_layer=last_layer)

    nll = (abs(0.2 - 0.15) + abs(-0.4 - 0.15)) / 2  # 0.3
    g_loss = -0.5 * 0.15
    # d nll/d w = mean(-sign(x - x_rec) * 0.1) = (-0.1 + 0.1) / 2 = 0 → adaptive weight 0 · 0.8
    d_nll = (-0.1 * 1 + -0.1 * -1) / 2
    d_g = -0.5 * 0.1
    d_weight = abs(d_nll) / (abs(d_g) + 1e-4) * 0.8
    expected = nll + d_weight * 0.5 * g_loss + 2.0 * 0.3
    assert logs["train/nll_loss"].item() == pytest.approx(nll)
    assert logs["train/g_loss"].item() == pytest.approx(g_loss)
    assert logs["train/d_weight"].item() == pytest.approx(d_weight)
    assert logs["train/disc_factor"].item() == 0.5
    assert loss.item() == pytest.approx(expected)


def test_generator_adaptive_weight_nonzero_case():
    loss_fn = make_loss(disc_start=0, disc_weight=1.0)
    last_layer = torch.tensor(1.0, requires_grad=True)
    x = torch.tensor([[[[1.0, 1.0]]]])
    x_rec = last_layer * torch.tensor([[[[0.2, 0.4]]]])
    loss, logs = loss_fn.generator_loss(torch.tensor(0.0), x, x_rec, global_step=0, last_layer=last_layer)
    d_nll = -(0.2 + 0.4) / 2  # both residuals positive: d|x - w c|/dw = -c
    d_g = -0.5 * (0.2 + 0.4) / 2
    d_weight = abs(d_nll) / (abs(d_g) + 1e-4)
    assert logs["train/d_weight"].item() == pytest.approx(d_weight, rel=1e-6)
    assert loss.item() == pytest.approx(logs["train/nll_loss"].item() + d_weight * -0.5 * 0.3, rel=1e-6)


def test_disc_factor_is_zero_before_start():
    loss_fn = make_loss(disc_start=100, disc_factor=1.0)
    assert loss_fn.disc_factor_at(99) == 0.0 and loss_fn.disc_factor_at(100) == 1.0
    x, x_rec = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4, requires_grad=True)
    loss, logs = loss_fn.generator_loss(torch.tensor(0.1), x, x_rec, global_step=99)
    assert loss_fn.discriminator.calls == 0  # the GAN term is skipped, not multiplied by 0
    assert logs["train/disc_factor"].item() == 0.0
    assert loss.item() == pytest.approx((x - x_rec).abs().mean().item() + 0.1)
    d_loss, d_logs = loss_fn.discriminator_loss(x, x_rec, global_step=99)
    assert d_loss.item() == 0.0 and d_logs["train/disc_loss"].item() == 0.0


def test_discriminator_loss_by_hand():
    loss_fn = make_loss(disc_start=0, disc_factor=2.0)
    x, x_rec = torch.full((1, 1, 1, 1), 4.0), torch.full((1, 1, 1, 1), -4.0)
    d_loss, logs = loss_fn.discriminator_loss(x, x_rec, global_step=0)
    # logits real 2, fake -2: both beyond the margin, hinge 0; with x_rec = +4: fake 2 → relu(3) = 3
    assert d_loss.item() == 0.0
    assert logs["train/logits_real"].item() == 2.0 and logs["train/logits_fake"].item() == -2.0
    d_loss, _ = loss_fn.discriminator_loss(x, -x_rec, global_step=0)
    assert d_loss.item() == pytest.approx(2.0 * 0.5 * 3.0)


def test_taming_call_dispatches_and_validation_needs_no_last_layer():
    loss_fn = make_loss(disc_start=0)
    x, x_rec = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    with torch.no_grad():  # validation: adaptive weight 0, as taming's except-branch
        _, logs = loss_fn(torch.tensor(0.0), x, x_rec, 0, global_step=5, split="val")
    assert logs["val/d_weight"].item() == 0.0
    _, logs = loss_fn(torch.tensor(0.0), x, x_rec, 1, global_step=5)
    assert "train/disc_loss" in logs
    with pytest.raises(ValueError, match="optimizer_idx"):
        loss_fn(torch.tensor(0.0), x, x_rec, 2, global_step=5)


def test_l1_l2_without_discriminator():
    loss_fn = VQLPIPSWithDiscriminator(l1_weight=1.0, l2_weight=1.0, perceptual_weight=0.0, use_discriminator=False)
    assert loss_fn.discriminator is None and loss_fn.disc_factor_at(10**9) == 0.0
    x, x_rec = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    loss, _ = loss_fn.generator_loss(torch.tensor(0.5), x, x_rec, global_step=0)
    assert loss.item() == pytest.approx(((x - x_rec).abs().mean() + F.mse_loss(x, x_rec) + 0.5).item(), rel=1e-6)
    with pytest.raises(RuntimeError, match="use_discriminator=False"):
        loss_fn.discriminator_loss(x, x_rec, 0)


def test_perceptual_off_without_weights_logs_once(caplog):
    with caplog.at_level(logging.WARNING, logger="lgvq.models.losses"):
        loss_fn = VQLPIPSWithDiscriminator(perceptual_weight=1.0)
    assert loss_fn.perceptual_loss is None and loss_fn.perceptual_weight == 0.0
    assert len(caplog.records) == 1 and "perceptual (LPIPS) loss is off" in caplog.records[0].getMessage()
    with pytest.raises(ValueError, match="needs both vgg_path"):
        VQLPIPSWithDiscriminator(vgg_path="vgg16.pth")


def test_patchgan_shapes_and_norms():
    batchnorm = NLayerDiscriminator(3, ndf=8, n_layers=3)
    assert batchnorm(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert [m.bias is None for m in batchnorm.main if isinstance(m, torch.nn.Conv2d)] == [False, True, True, True, False]
    actnorm = NLayerDiscriminator(3, ndf=8, n_layers=2, use_actnorm=True)
    assert sum(isinstance(m, ActNorm) for m in actnorm.modules()) == 2


def test_actnorm_initialises_from_first_batch():
    norm = ActNorm(2).train()
    x = torch.randn(4, 2, 3, 3) * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) + 3.0
    y = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3)), torch.ones(2), atol=1e-4)
    loc = norm.loc.detach().clone()
    norm(x * 5)  # later batches do not re-initialise
    assert torch.equal(norm.loc.detach(), loc)
