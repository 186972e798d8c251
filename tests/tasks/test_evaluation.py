"""Metrics against hand-made examples with known values."""

import math

import pytest
import torch

from lgvq.data import COLOURS, SHAPES, ShapeObject
from lgvq.tasks import (
    ATTRIBUTES,
    AttributeClassifier,
    TrainSettings,
    attribute_labels,
    caption_metrics,
    frechet_distance,
    normalise_caption,
    presence_recall,
    psnr,
    train_attribute_classifier,
)
from lgvq.tasks.evaluation import java_available

CAPTIONS = [
    "a large red circle at the top left",
    "two objects: a small blue square and a green cross",
    "there is a yellow triangle in the center",
]


def test_identical_captions_score_perfectly():
    scores = caption_metrics(CAPTIONS, [[c] for c in CAPTIONS])
    assert scores["bleu4"] == pytest.approx(100.0, abs=1e-4)
    assert scores["rouge_l"] == pytest.approx(100.0, abs=1e-4)
    # coco CIDEr-D of a candidate equal to its only reference: 10 (x 100 here)
    assert scores["cider"] == pytest.approx(1000.0, rel=1e-6)


def test_captions_sharing_no_words_score_zero():
    scores = caption_metrics(["zebra zebra zebra zebra"], [["a red circle in the center"]])
    assert scores["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert scores["rouge_l"] == 0.0 and scores["cider"] == 0.0


def test_empty_candidates_score_zero_rather_than_fail():
    scores = caption_metrics(["", CAPTIONS[1]], [[CAPTIONS[0]], [CAPTIONS[1]]])
    assert 0.0 < scores["rouge_l"] < 100.0


def test_punctuation_and_case_are_normalised():
    assert (
        normalise_caption("Two objects: a Blue square, and a cross.")
        == "two objects a blue square and a cross"
    )
    assert caption_metrics(["A LARGE red circle, at the top left!"], [[CAPTIONS[0]]])[
        "bleu4"
    ] == pytest.approx(100.0, abs=1e-4)


@pytest.mark.slow  # starts a JVM: several seconds
@pytest.mark.skipif(not java_available(), reason="METEOR needs Java")
def test_meteor_of_identical_captions_is_100():
    assert caption_metrics(CAPTIONS, [[c] for c in CAPTIONS], meteor=True)[
        "meteor"
    ] == pytest.approx(100.0, abs=1e-3)


@pytest.mark.parametrize(
    "candidates, references, error, message",
    [
        ([], [], ValueError, "candidates must be a non-empty list"),
        ("a red circle", [["a red circle"]], TypeError, "candidates must be a list of str"),
        (["a red circle"], [], ValueError, "one list of str per candidate"),
        (["a red circle"], [[]], ValueError, r"references\[0\] must be a non-empty list"),
        (["a red circle"], [["  "]], ValueError, r"references\[0\]\[0\] is empty"),
        (["a red circle"], [["..."]], ValueError, "without any word"),
    ],
)
def test_caption_metrics_reject_bad_inputs(candidates, references, error, message):
    with pytest.raises(error, match=message):
        caption_metrics(candidates, references)


def test_frechet_distance_of_identical_sets_is_zero():
    features = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(features, features.clone()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_shifted_sets_is_the_squared_shift():
    features = torch.randn(200, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shift = torch.linspace(-1.0, 2.0, 8, dtype=torch.float64)
    expected = float(shift.square().sum())
    assert frechet_distance(features, features + shift) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_scaled_sets_matches_the_closed_form():
    """b = 2a: mean 2μ, covariance 4Σ, so the distance is ‖μ‖² + tr(Σ + 4Σ − 2·2Σ) = ‖μ‖² + tr Σ."""
    a = torch.randn(300, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    expected = float(a.mean(0).square().sum() + torch.cov(a.T).trace())
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same width"):
        frechet_distance(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(torch.randn(1, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        frechet_distance(torch.full((4, 3), float("nan")), torch.randn(4, 3))


def test_psnr_known_values():
    images = torch.zeros(2, 3, 8, 8)
    assert psnr(images + 0.2, images) == pytest.approx(10 * math.log10(4 / 0.04))
    lower_only = images.clone()
    lower_only[:, :, 4:] = 0.2
    assert psnr(lower_only, images, from_row=4) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(images, torch.zeros(2, 3, 8, 4))
    with pytest.raises(ValueError, match="from_row"):
        psnr(images, images, from_row=8)


def test_psnr_is_the_mean_of_per_image_psnrs_on_clamped_images():
    """MSEs 0.04 and 0.0004 in [-1, 1] units are 20 and 40 dB: their mean is 30 dB, where
    the PSNR of the pooled MSE would be 10·log10(4 / 0.0202) ≈ 23 dB."""
    reference = torch.zeros(2, 3, 4, 4)
    images = reference.clone()
    images[0] += 0.2
    images[1] += 0.02
    assert psnr(images, reference) == pytest.approx(30.0)
    # values past the image range are clamped, as a saved image would be
    assert psnr(torch.full((1, 3, 4, 4), 1.5), torch.ones(1, 3, 4, 4)) == pytest.approx(10 * math.log10(4e12))


def obj(colour: str, shape: str) -> ShapeObject:
    return ShapeObject(shape, colour, "small", "center", (0.4, 0.4, 0.6, 0.6))


def test_presence_recall_counts_detected_colours_and_shapes():
    target = torch.stack(
        [
            attribute_labels([obj("red", "circle"), obj("blue", "square")]),
            attribute_labels([obj("green", "cross")]),
        ]
    )
    predicted = torch.stack(
        [
            attribute_labels([obj("red", "square")]),  # one of two colours, one of two shapes
            attribute_labels(
                [obj("green", "cross"), obj("white", "diamond")]
            ),  # extras are not penalised
        ]
    )
    scores = presence_recall(predicted, target)
    assert scores == pytest.approx({"colour_recall": 0.75, "shape_recall": 0.75})
    assert len(ATTRIBUTES) == len(COLOURS) + len(SHAPES)
    with pytest.raises(ValueError, match="must have shape"):
        presence_recall(predicted[:, :5], target[:, :5])


def test_attribute_classifier_trains_and_embeds(train_set):
    classifier = train_attribute_classifier(
        train_set, TrainSettings(steps=30, batch_size=8, lr=3e-3)
    )
    assert isinstance(classifier, AttributeClassifier)
    images = torch.stack([train_set[i]["image"] for i in range(5)])
    features, predicted = classifier.embed(images)
    assert (
        features.shape == (5, 64)
        and predicted.shape == (5, len(ATTRIBUTES))
        and predicted.dtype == torch.bool
    )
    with pytest.raises(TypeError, match="must provide scene"):
        train_attribute_classifier([0, 1], TrainSettings(steps=1))
