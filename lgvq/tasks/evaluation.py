"""Metrics for the downstream tasks, on data whose ground truth is known.

Generated images are scored by an *attribute classifier*: a small CNN trained on real
ShapesDataset images to say which colours and which shapes an image contains. It gives
(1) attribute recall: did the generated image draw the prompted colours and shapes,
and (2) the attribute-classifier Fréchet distance: FID's formula in this classifier's
penultimate feature space. It is NOT FID (no Inception network, 32x32 synthetic images);
compare its values only with each other, at equal sample counts.

Caption metrics are coco-caption's scorers (pycocoevalcap): BLEU-4, ROUGE-L, CIDEr (coco's
CIDEr, i.e. the CIDEr-D formulation the paper reports) and METEOR when Java is available.
"""

from __future__ import annotations

import re
import shutil

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import check_tensor
from lgvq.data import COLOURS, SHAPES
from lgvq.data.shapes import BACKGROUND
from lgvq.experiment.evaluate import frechet_distance, psnr  # noqa: F401 (lgvq's one definition of each, re-exported)
from lgvq.extras import needs_extra
from lgvq.tasks.text_features import check_texts
from lgvq.tasks.training import TrainSettings, train_network

ATTRIBUTES = (*COLOURS, *SHAPES)  # the classifier's labels: every colour, then every shape


# --- attribute classifier -------------------------------------------------------------------


def attribute_labels(objects) -> torch.Tensor:
    """(len(ATTRIBUTES),) bool: which colours and which shapes a scene's objects have."""
    labels = torch.zeros(len(ATTRIBUTES), dtype=torch.bool)
    for obj in objects:
        labels[ATTRIBUTES.index(obj.colour)] = True
        labels[ATTRIBUTES.index(obj.shape)] = True
    return labels


def scene_labels(dataset, dataset_indices) -> torch.Tensor:
    """(N, len(ATTRIBUTES)) bool attribute labels of the given items of a ShapesDataset."""
    indices = torch.as_tensor(dataset_indices).tolist()
    return torch.stack([attribute_labels(dataset.scene(i).objects) for i in indices])


class AttributeClassifier(nn.Module):
    """Multi-label presence of every colour and every shape, robust to 1-4 objects.

    Presence labels need no object order ("the colour of the first object" would). Colour and
    shape are separate labels rather than one per (colour, shape) pair: with 13 labels instead
    of 40 the classifier learns in a few hundred CPU steps, at the cost of not checking which
    colour went with which shape. Conv features see a 17-pixel neighbourhood (a whole large
    object at 32x32); global max pooling asks "is it anywhere".
    """

    def __init__(self, width: int = 24, feature_dim: int = 64):
        super().__init__()

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Module:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU()
            )

        self.body = nn.Sequential(
            conv(3, width),
            conv(width, 2 * width, 2),
            conv(2 * width, 2 * width, 2),
            conv(2 * width, feature_dim),
        )
        self.head = nn.Linear(feature_dim, len(ATTRIBUTES))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) penultimate features: the space of the Fréchet distance."""
        return self.body(images).amax(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def embed(
        self, images: torch.Tensor, batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, F), predicted presence (B, len(ATTRIBUTES)) bool) on CPU."""
        check_tensor("images", images, ndim=4)
        self.eval()
        device = self.head.weight.device
        features = torch.cat(
            [self.features(chunk.to(device)).cpu() for chunk in images.split(batch_size)]
        )
        return features, self.head(features.to(device)).cpu() > 0


def train_attribute_classifier(
    dataset, settings: TrainSettings, *, noise: float = 0.05, device: torch.device | str = "cpu"
) -> AttributeClassifier:
    """Fit an AttributeClassifier on real images of a ShapesDataset (fresh items every step,
    so it does not overfit; light Gaussian noise so decoded, slightly noisy images are not
    out of distribution)."""
    if not callable(getattr(dataset, "scene", None)):
        raise TypeError(
            f"dataset must provide scene(index) (e.g. ShapesDataset), got {type(dataset).__name__}"
        )
    torch.manual_seed(settings.seed)
    classifier = AttributeClassifier().to(device)

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        images = torch.stack([dataset[i]["image"] for i in rows.tolist()])
        images = images + noise * torch.randn_like(images)
        labels = scene_labels(dataset, rows).float()
        return F.binary_cross_entropy_with_logits(classifier(images.to(device)), labels.to(device))

    train_network(classifier, batch_loss, len(dataset), settings)
    return classifier


def presence_recall(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean over images of the fraction of target colours, and of target shapes, detected.

    predicted, target: (B, len(ATTRIBUTES)) bool, e.g. the classifier's verdict on images
    generated from prompts and the prompted scenes' labels.
    """
    for name, t in (("predicted", predicted), ("target", target)):
        check_tensor(name, t, ndim=2, dtypes=(torch.bool,))
        if t.shape[1] != len(ATTRIBUTES):
            raise ValueError(f"{name} must have shape (B, {len(ATTRIBUTES)}), got {tuple(t.shape)}")
    if predicted.shape != target.shape:
        raise ValueError(
            f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} differ in shape"
        )
    scores = {}
    for name, columns in (
        ("colour_recall", slice(0, len(COLOURS))),
        ("shape_recall", slice(len(COLOURS), None)),
    ):
        pred, true = predicted[:, columns], target[:, columns]
        if not bool(true.any(1).all()):
            raise ValueError(f"every target row must name at least one {name.split('_')[0]}")
        scores[name] = float(((pred & true).sum(1) / true.sum(1)).mean())
    return scores


# --- distances between image sets --------------------------------------------------------


def foreground_iou(images: torch.Tensor, maps: torch.Tensor, *, threshold: float = 0.25) -> float:
    """Mean per-image IoU between where an image departs from the shapes background colour (by
    more than ``threshold`` in [-1, 1] units in any channel) and where its semantic map has an
    object (class > 0): did a generated image put objects where its layout asked for them?"""
    check_tensor("images", images, ndim=4)
    check_tensor("maps", maps, ndim=3, dtypes=(torch.int64,), finite=False)
    if images.shape[0] != maps.shape[0] or images.shape[2:] != maps.shape[1:]:
        raise ValueError(f"images {tuple(images.shape)} and maps {tuple(maps.shape)} must match in N, H, W")
    background = torch.tensor(BACKGROUND, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) / 127.5 - 1
    drawn = (images - background).abs().amax(dim=1) > threshold
    wanted = maps.to(images.device) > 0
    intersection = (drawn & wanted).flatten(1).sum(1)
    union = (drawn | wanted).flatten(1).sum(1)
    iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union, dtype=torch.float))
    return float(iou.float().mean())


# --- captions ---------------------------------------------------------------------------------

_EMPTY = "<empty>"  # stands in for an empty candidate; normalised references never contain it


def normalise_caption(text: str) -> str:
    """Lower-case words and numbers joined by spaces: the pre-tokenisation coco-caption's
    Java PTB tokenizer would do (punctuation dropped), without needing Java."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def java_available() -> bool:
    return shutil.which("java") is not None


def caption_metrics(candidates, references, *, meteor: bool = False) -> dict[str, float]:
    """Corpus BLEU-4, ROUGE-L, CIDEr (and METEOR) of one candidate per image against that
    image's references, in percent as the paper reports them (CIDEr x 100 too)."""
    candidates = check_texts("candidates", candidates, allow_blank=True)
    if not isinstance(references, (list, tuple)) or len(references) != len(candidates):
        raise ValueError(
            f"references must be a list with one list of str per candidate ({len(candidates)})"
        )
    refs = {
        i: [normalise_caption(r) for r in check_texts(f"references[{i}]", rs)]
        for i, rs in enumerate(references)
    }
    for i, rs in refs.items():
        if not all(rs):
            raise ValueError(f"references[{i}] has a caption without any word: {references[i]!r}")
    cands = {i: [normalise_caption(c) or _EMPTY] for i, c in enumerate(candidates)}
    with needs_extra("tasks"):
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    scores = {
        "bleu4": Bleu(4).compute_score(refs, cands, verbose=0)[0][3],
        "rouge_l": Rouge().compute_score(refs, cands)[0],
        "cider": Cider().compute_score(refs, cands)[0],
    }
    if meteor:
        scores["meteor"] = _meteor(refs, cands)
    return {name: 100.0 * float(value) for name, value in scores.items()}


def _meteor(refs: dict, cands: dict) -> float:
    if not java_available():
        raise RuntimeError(
            "METEOR needs Java (the meteor-1.5 jar); install a JRE or pass meteor=False"
        )
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor().compute_score(refs, cands)[0]  # the scorer's destructor stops Java
