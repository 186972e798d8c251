"""Tasks on captioned data without ground-truth scenes (a folder of images with captions, as
CUB/COCO/... would be): every task but VQA and semantic synthesis runs, and generated images
are scored by FID."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lgvq.data import ShapesDataset, load_dataset
from lgvq.tasks import FIDScorer, available_tasks, frechet_distance, prepare_task_data, run_all_tasks, run_task


class TinyFeatures(nn.Module):
    """A fixed random feature network standing in for Inception (images in [0, 1])."""

    num_features = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images):
        return self.net(images)


def write_folder(root, split: str, count: int):
    shapes = ShapesDataset(count, 32, 0, split=split)
    for i in range(count):
        item = shapes[i]
        pixels = ((item["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text("\n".join(shapes.captions(i)))
    return load_dataset("folder", root, image_size=32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return (write_folder(tmp_path_factory.mktemp("train"), "train", 12),
            write_folder(tmp_path_factory.mktemp("test"), "test", 4))


def test_fid_scorer_matches_the_frechet_formula_on_its_features():
    torch.manual_seed(1)
    real, fake = torch.rand(16, 3, 32, 32) * 2 - 1, torch.rand(16, 3, 32, 32) - 0.5
    features = TinyFeatures()
    scorer = FIDScorer(real, features)
    with torch.no_grad():
        expected = frechet_distance(features((fake + 1) / 2), features((real + 1) / 2))
    assert scorer.scores(fake)["fid"] == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert scorer.scores(real)["fid"] == pytest.approx(0.0, abs=1e-4)  # the real set is kept across calls
    assert scorer.real_scores() == {}


def test_missing_inception_weights_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        FIDScorer(torch.zeros(2, 3, 8, 8), tmp_path / "pt_inception.pth")


def test_tasks_without_ground_truth_run_on_a_captioned_folder(vq_model, text_encoder, folders, tiny_budget):
    train_set, test_set = folders
    data = prepare_task_data(train_set, test_set, text_encoder, tiny_budget, fid_features=TinyFeatures())
    assert available_tasks(data) == ["reconstruction", "text-to-image", "unconditional", "completion", "captioning"]
    results = run_all_tasks(vq_model, train_set, test_set, text_encoder, tiny_budget, data=data)
    assert list(results) == available_tasks(data)
    for task in ("reconstruction", "text-to-image", "unconditional", "completion"):
        assert results[task]["fid"] >= 0 and "colour_recall" not in results[task], task
    assert {"bleu4", "rouge_l", "cider"} <= set(results["captioning"])
    assert all(math.isfinite(v) for metrics in results.values() for v in metrics.values())
    for task in ("vqa", "semantic-synthesis"):
        with pytest.raises(ValueError, match=f"{task} needs ground truth"):
            run_task(task, vq_model, train_set, test_set, text_encoder, tiny_budget, data=data)
    with pytest.raises(ValueError, match="pass fid_features to prepare_task_data"):
        run_task("captioning", vq_model, train_set, test_set, text_encoder, tiny_budget, data=data,
                 fid_features=TinyFeatures())
