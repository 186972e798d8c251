"""How generated images are scored against the real test images, for each kind of data.

* ``AttributeScorer`` — data with ground-truth scenes (the embedded shapes): an attribute
  classifier trained on real images gives colour/shape recall against the prompted scenes
  and the Fréchet distance in its own feature space (``lgvq.tasks.evaluation``).
* ``FIDScorer`` — any data, when the user supplies Inception weights (or another feature
  network): FID against the real test images, whose statistics are computed once.

Both score generated images aligned with the test items (row i was generated for test item
i) and report what they give on the real images themselves, the ceiling to compare with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from lgvq.checks import check_tensor
from lgvq.experiment.evaluate import fid_metric, unit_range
from lgvq.tasks.evaluation import AttributeClassifier, frechet_distance, presence_recall


class ImageScorer(Protocol):
    def scores(self, images: torch.Tensor) -> dict[str, float]:
        """Metrics of generated images (M, 3, S, S) in [-1, 1], row i for test item i."""

    def real_scores(self) -> dict[str, float]:
        """The scorer's verdict on the real test images (empty if it has none)."""


class AttributeScorer:
    """Attribute recall against the test scenes and the classifier-feature Fréchet distance."""

    def __init__(self, classifier: AttributeClassifier, real_images: torch.Tensor, real_labels: torch.Tensor):
        self.classifier = classifier
        self.real_labels = real_labels
        self.real_features, predicted = classifier.embed(real_images)
        self._real_recall = presence_recall(predicted, real_labels)

    def scores(self, images: torch.Tensor) -> dict[str, float]:
        features, predicted = self.classifier.embed(images)
        return {
            **presence_recall(predicted, self.real_labels),
            "attribute_frechet_distance": frechet_distance(features, self.real_features),
        }

    def real_scores(self) -> dict[str, float]:
        return {f"real_{name}": value for name, value in self._real_recall.items()}


class FIDScorer:
    """FID of generated images against the real test images.

    feature_extractor: a local Inception weights file (torch-fidelity's
    ``pt_inception-2015-12-05-6726825d.pth``, as ``lgvq eval --fid-weights`` takes) or any
    ``nn.Module`` mapping images in [0, 1] to (B, F) features. With as few test images as a
    CPU budget allows, FID is biased upwards: compare values only at equal sample counts.
    """

    def __init__(self, real_images: torch.Tensor, feature_extractor: str | Path | nn.Module,
                 device: torch.device | str = "cpu", batch_size: int = 64):
        check_tensor("real_images", real_images, ndim=4)
        self.batch_size = batch_size
        self.metric = fid_metric(feature_extractor, torch.device(device), keep_real=True)
        self._update(real_images, real=True)

    @torch.no_grad()
    def _update(self, images: torch.Tensor, real: bool) -> None:
        device = self.metric.device
        for chunk in images.split(self.batch_size):
            self.metric.update(unit_range(chunk).to(device), real=real)

    def scores(self, images: torch.Tensor) -> dict[str, float]:
        check_tensor("images", images, ndim=4)
        self.metric.reset()  # drops the previous generated set, keeps the real statistics
        self._update(images, real=False)
        return {"fid": float(self.metric.compute())}

    def real_scores(self) -> dict[str, float]:
        return {}
