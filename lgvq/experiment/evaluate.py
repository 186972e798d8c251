"""Evaluation of a trained VQ model: reconstruction, codebook and language-alignment metrics.

* PSNR (``psnr``: the mean of per-image PSNRs) and SSIM (torchmetrics) of reconstructions;
* codebook usage (% of codes used on the evaluation set) and perplexity of its histogram;
* with a LanguageGuidance head: masked-word recall@1 (1 and 3 words masked per caption,
  leak-free) and word–code similarity MSE (the paper's Tables 3 and 4);
* FID when the user gives local Inception weights (torchmetrics + torch-fidelity's
  feature extractor, nothing downloaded). ``frechet_distance`` of precomputed features goes
  through the same torchmetrics metric, so lgvq has one Fréchet-distance implementation.

``fit_alignment_probe`` trains a fresh guidance head on a *frozen* model's codes, so models
trained without language (which have no head) are measured the same way as LG-VQ models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lgvq.checks import check_tensor
from lgvq.data import collate
from lgvq.extras import needs_extra
from lgvq.guidance import LanguageGuidance
from lgvq.quantize import perplexity_from_counts

with needs_extra("train"):
    from tqdm import tqdm


@dataclass
class EvalResult:
    psnr: float
    ssim: float
    usage_percent: float
    perplexity: float
    code_counts: torch.Tensor = field(repr=False)
    recall_at_1: dict[int, float] = field(default_factory=dict)  # words masked → recall %
    word_code_mse: float | None = None
    fid: float | None = None

    def as_dict(self) -> dict:
        out = {"psnr": self.psnr, "ssim": self.ssim, "usage_percent": self.usage_percent, "perplexity": self.perplexity}
        for k, v in self.recall_at_1.items():
            out[f"recall@1_{k}word"] = v
        if self.word_code_mse is not None:
            out["word_code_mse"] = self.word_code_mse
        if self.fid is not None:
            out["fid"] = self.fid
        return out


def _loader(dataset, batch_size: int):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (the models' range) → [0, 1] (what torchmetrics' image metrics take)."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def fid_metric(feature_extractor, device: torch.device, keep_real: bool = False):
    """torchmetrics FID on images in [0, 1].

    feature_extractor: a local file of torch-fidelity's InceptionV3 weights
    (``pt_inception-2015-12-05-6726825d.pth``; torch-fidelity declares torchvision as a
    dependency but its Inception does not use it: ``pip install --no-deps torch-fidelity``),
    or an ``nn.Module`` mapping (B, 3, H, W) images in [0, 1] to (B, F) features.
    keep_real: ``reset()`` keeps the real images' statistics (score several fake sets against one real set).
    """
    from pathlib import Path

    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:  # pragma: no cover - depends on optional packages
        raise ImportError("FID needs torchmetrics and torch-fidelity: pip install 'lgvq[train,fid]'") from err
    if isinstance(feature_extractor, torch.nn.Module):
        metric = FrechetInceptionDistance(feature=feature_extractor.eval(), normalize=True,
                                          reset_real_features=not keep_real)
        return metric.to(device)
    if not Path(feature_extractor).is_file():
        raise FileNotFoundError(
            f"Inception weights not found: {feature_extractor} (download pt_inception-2015-12-05-6726825d.pth "
            "elsewhere and pass its local path)"
        )
    metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(feature_extractor),
                                      reset_real_features=not keep_real)
    return metric.to(device)


class _PrecomputedFeatures(nn.Module):
    """The identity as torchmetrics' feature network: FID's statistics of given features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussians fitted to two feature sets.

    Computed (in float64) by the torchmetrics metric that ``fid_metric`` builds, fed with
    the features themselves, so FID and this distance cannot drift apart.
    """
    for name, t in (("features_a", features_a), ("features_b", features_b)):
        check_tensor(name, t, ndim=2)
        if len(t) < 2:
            raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got {len(t)}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            "features_a and features_b must have the same width, got "
            f"{features_a.shape[1]} and {features_b.shape[1]}"
        )
    metric = fid_metric(_PrecomputedFeatures(features_a.shape[1]), features_a.device)
    metric.update(features_a.double(), real=True)
    metric.update(features_b.to(features_a.device, torch.float64), real=False)
    return float(metric.compute())


def psnr_per_image(images: torch.Tensor, reference: torch.Tensor, *, from_row: int = 0) -> torch.Tensor:
    """(N,) float64 PSNR in dB of each image in [-1, 1] against its reference, over pixel
    rows ``from_row`` onwards (e.g. a completed lower half).

    Images are scored as they would be saved: clamped to [-1, 1] (peak-to-peak 2, the same
    value as PSNR on [0, 1] with peak 1). A perfect match scores about 126 dB (the MSE is floored
    at 1e-12) rather than infinity, so that means stay finite.
    """
    check_tensor("images", images, ndim=4)
    check_tensor("reference", reference, ndim=4)
    if images.shape != reference.shape:
        raise ValueError(
            f"images {tuple(images.shape)} and reference {tuple(reference.shape)} differ in shape"
        )
    if not 0 <= from_row < images.shape[2]:
        raise ValueError(f"from_row must be in [0, {images.shape[2]}), got {from_row}")
    a, b = (x[:, :, from_row:].double().clamp(-1, 1) for x in (images, reference.to(images.device)))
    mse = (a - b).square().mean(dim=(1, 2, 3)).clamp(min=1e-12)
    return 10 * torch.log10(4.0 / mse)


def psnr(images: torch.Tensor, reference: torch.Tensor, *, from_row: int = 0) -> float:
    """lgvq's one PSNR: the mean over images of each image's PSNR (``psnr_per_image``).

    Per image rather than over the pooled set (10·log10(1 / set MSE), torchmetrics' default):
    each image counts once whatever its error, the value does not depend on how the set is
    batched, and it is the average PSNR that reconstruction tables report.
    """
    return float(psnr_per_image(images, reference, from_row=from_row).mean())


@torch.no_grad()
def evaluate(
    model,
    dataset,
    guidance: LanguageGuidance | None = None,
    *,
    batch_size: int = 32,
    masked_words: tuple[int, ...] = (1, 3),
    seed: int = 0,
    inception_weights=None,  # a local Inception weights file or a feature nn.Module (fid_metric); None: no FID
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> EvalResult:
    """Metrics of ``model`` on ``dataset`` (and of ``guidance``'s alignment, when given)."""
    with needs_extra("train"):
        from torchmetrics.image import StructuralSimilarityIndexMeasure

    device = torch.device(device)
    model.eval()
    psnr_sum, images_seen = 0.0, 0
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
    fid = fid_metric(inception_weights, device) if inception_weights else None
    counts = torch.zeros(model.config.n_embed, dtype=torch.long, device=device)
    recall = {k: [0, 0] for k in masked_words}
    mse_sum, mse_pairs = 0.0, 0
    gen = torch.Generator().manual_seed(seed)
    if guidance is not None:
        guidance.eval()
    for batch in tqdm(_loader(dataset, batch_size), desc="eval", disable=not progress, leave=False):
        images = batch["image"].to(device)
        out = model(images)
        real, fake = unit_range(images), unit_range(out.x_rec)
        psnr_sum += float(psnr_per_image(out.x_rec, images).sum())
        images_seen += len(images)
        ssim.update(fake, real)
        if fid is not None:
            fid.update(real, real=True)
            fid.update(fake, real=False)
        counts += torch.bincount(out.indices.reshape(-1), minlength=counts.numel())
        if guidance is not None:
            text = guidance.encode_text(batch["caption"])
            for k in masked_words:
                correct, total = guidance.masked_word_recall(out.z_q, text, k, generator=gen)
                recall[k][0] += correct
                recall[k][1] += total
            sse, pairs = guidance.word_code_similarity_mse(out.z_q, text)
            mse_sum, mse_pairs = mse_sum + sse, mse_pairs + pairs
    return EvalResult(
        psnr=psnr_sum / max(images_seen, 1),
        ssim=float(ssim.compute()),
        usage_percent=100.0 * float((counts > 0).float().mean()),
        perplexity=float(perplexity_from_counts(counts)),
        code_counts=counts.cpu(),
        recall_at_1={k: 100.0 * c / max(t, 1) for k, (c, t) in recall.items()} if guidance is not None else {},
        word_code_mse=mse_sum / max(mse_pairs, 1) if guidance is not None else None,
        fid=float(fid.compute()) if fid is not None else None,
    )


def fit_alignment_probe(
    model,
    dataset,
    text_encoder,
    *,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> LanguageGuidance:
    """Train a fresh LanguageGuidance head (unit loss weights) on the frozen model's codes.

    The VQ model is not updated: what the probe reaches measures how well language can be
    aligned with the model's codebook, the same way for models trained with or without it.
    """
    if len(dataset) == 0:
        raise ValueError("fit_alignment_probe needs a non-empty dataset")
    device = torch.device(device)
    torch.manual_seed(seed)
    probe = LanguageGuidance(
        model.config.embed_dim, model.config.latent_size, text_encoder, weights=(1.0, 1.0, 1.0),
        backend=model.config.backend,
    ).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(dataset))  # a full batch every step, however small the set
    done = 0
    bar = tqdm(total=steps, desc="alignment probe", disable=not progress, leave=False)
    while done < steps:
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                                 generator=gen, drop_last=True):
            with torch.no_grad():
                z_q = model(batch["image"].to(device)).z_q
            loss = probe(z_q, batch["caption"]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            bar.update(1)
            if done == steps:
                break
    bar.close()
    return probe.eval()
