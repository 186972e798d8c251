"""lgvq.experiment.evaluate: reconstruction metrics against torchmetrics, and FID through a feature network."""

import pytest
import torch
from torch import nn

from lgvq.data import ShapesDataset, collate
from lgvq.experiment.evaluate import evaluate, psnr
from lgvq.models import build_model
from lgvq.tasks import frechet_distance


def test_fid_of_reconstructions_is_the_frechet_distance_of_their_features():
    torch.manual_seed(0)
    model = build_model("vqvae-tiny").eval()
    dataset = ShapesDataset(12, 32, 0, split="test")
    features = nn.Sequential(nn.Conv2d(3, 6, 3, 2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    features.num_features = 6
    result = evaluate(model, dataset, inception_weights=features, batch_size=5, progress=False)
    images = collate([dataset[i] for i in range(len(dataset))])["image"]
    with torch.no_grad():
        out = model(images)
        unit = lambda x: ((x + 1) / 2).clamp(0, 1)  # noqa: E731
        expected = frechet_distance(features(unit(out.x_rec)), features(unit(images)))
    assert result.fid == pytest.approx(expected, rel=1e-3, abs=1e-5)
    # the mean of per-image PSNRs (data range 1) and the share of codes the set uses, by hand
    # from the same reconstructions and indices
    per_image = (unit(out.x_rec) - unit(images)).pow(2).mean(dim=(1, 2, 3))
    assert result.psnr == pytest.approx((10 * torch.log10(1 / per_image)).mean().item(), rel=1e-4)
    assert result.usage_percent == pytest.approx(100 * out.indices.unique().numel() / model.config.n_embed)


def test_evaluate_reports_lgvq_psnr_of_the_reconstructions():
    """evaluate's PSNR is lgvq.experiment.evaluate.psnr (per-image mean) over the whole set, however batched."""
    torch.manual_seed(0)
    model = build_model("vqvae-tiny").eval()
    dataset = ShapesDataset(7, 32, 0, split="test")
    result = evaluate(model, dataset, batch_size=3, progress=False)
    images = collate([dataset[i] for i in range(len(dataset))])["image"]
    with torch.no_grad():
        expected = psnr(model(images).x_rec, images)
    assert result.psnr == pytest.approx(expected, rel=1e-6)
