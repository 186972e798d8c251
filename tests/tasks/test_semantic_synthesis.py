"""Semantic-map-conditioned synthesis: the layout prefix, training, generation, bad maps, and the
layout IoU that scores it."""

import pytest
import torch

from lgvq.data import SEMANTIC_CLASSES, ShapesDataset
from lgvq.tasks import SemanticSynthesis, Sampling, decode_codes, foreground_iou, layout_features

from .conftest import TINY, assert_loss_decreased, fit_settings, greedy_by_hand

C = len(SEMANTIC_CLASSES)


@pytest.fixture(scope="module")
def train_maps(train_set):
    return torch.stack([train_set.semantic_map(i) for i in range(len(train_set))])


@pytest.fixture(scope="module")
def synthesis(vq_model, codes, train_maps):
    torch.manual_seed(0)
    model = SemanticSynthesis.build(vq_model, C, TINY)
    return model, model.fit(codes, train_maps, fit_settings())


def test_semantic_map_marks_each_object_with_its_shape_class():
    dataset = ShapesDataset(8, 32, 0, split="test")
    for i in range(len(dataset)):
        labels = dataset.semantic_map(i)
        assert labels.shape == (32, 32) and labels.dtype == torch.int64
        assert labels[0, 0] == 0 or labels[-1, -1] == 0  # objects never fill both corners
        for obj in dataset.scene(i).objects:
            x, y = obj.center
            assert SEMANTIC_CLASSES[int(labels[int(y * 32), int(x * 32)])] == obj.shape
        assert set(labels.unique().tolist()) == {0} | {SEMANTIC_CLASSES.index(o.shape) for o in dataset.scene(i).objects}


def test_layout_features_hold_the_class_fractions_of_each_cell():
    maps = torch.zeros(1, 4, 4, dtype=torch.int64)
    maps[0, :2, :2] = 2  # the top-left code cell of a 2x2 grid is all class 2
    maps[0, 2:, 2:3] = 1  # half of the bottom-right cell is class 1
    torch.testing.assert_close(layout_features(maps, (2, 2), 3), torch.tensor(
        [[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]]))


def test_cell_j_conditions_only_the_predictions_of_code_j_onwards(synthesis, codes, train_maps):
    """Changing the layout of the last cell must leave the logits of every earlier code alone."""
    transformer = synthesis[0].transformer.eval()
    cells = synthesis[0].layout(train_maps[:2])
    changed = cells.clone()
    changed[:, -1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    with torch.no_grad():
        a = transformer(codes.indices[:2].flatten(1)[:, :-1], cells=cells)
        b = transformer(codes.indices[:2].flatten(1)[:, :-1], cells=changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_training_reduces_the_loss(synthesis):
    assert_loss_decreased(synthesis[1])


def test_generation_gives_one_valid_grid_per_map(synthesis, vq_model, train_maps):
    indices = synthesis[0].generate(train_maps[:3], sampling=Sampling(top_k=8))
    assert indices.shape == (3, 8, 8) and 0 <= int(indices.min()) and int(indices.max()) < 256
    assert decode_codes(vq_model, indices).shape == (3, 3, 32, 32)
    # greedy generation follows each row's own map: it equals decoding by hand with the maps'
    # layout cells, and a map alone gives the grid it gets in the batch
    greedy = synthesis[0].generate(train_maps[:3], sampling=Sampling(top_k=1))
    cells = synthesis[0].layout(train_maps[:3])
    assert torch.equal(greedy, greedy_by_hand(synthesis[0].transformer, 3, cells=cells))
    assert torch.equal(greedy[1:2], synthesis[0].generate(train_maps[1:2], sampling=Sampling(top_k=1)))


@pytest.mark.parametrize("maps, message", [
    (torch.full((1, 32, 32), C), r"class ids in \[0, 6\)"),
    (torch.zeros(1, 32, 16, dtype=torch.int64), "must be square"),
    (torch.zeros(0, 32, 32, dtype=torch.int64), "empty"),
    (torch.zeros(1, 32, 32), "dtype"),
])
def test_bad_maps_are_rejected(synthesis, maps, message):
    with pytest.raises((ValueError, TypeError), match=message):
        synthesis[0].generate(maps)


def test_foreground_iou_known_values():
    background = torch.full((2, 3, 4, 4), 24 / 127.5 - 1)
    maps = torch.zeros(2, 4, 4, dtype=torch.int64)
    maps[:, :2] = 1  # the top half holds an object
    images = background.clone()
    images[0, :, :2] = 1.0  # image 0 draws exactly the top half
    images[1, :, :1] = 1.0  # image 1 draws the top quarter: IoU 4 / 8
    assert foreground_iou(images, maps) == pytest.approx((1.0 + 0.5) / 2)
    assert foreground_iou(background, maps) == 0.0
    with pytest.raises(ValueError, match="must match"):
        foreground_iou(images, maps[:1])


def test_cells_must_match_the_transformer(synthesis, train_maps):
    transformer = synthesis[0].transformer
    with pytest.raises(ValueError, match="pass cells"):
        transformer.sample(1)
    with pytest.raises(ValueError, match=r"cells must have shape \(1, 64, 6\)"):
        transformer.sample(1, cells=torch.zeros(1, 63, 6))
    with pytest.raises(ValueError, match="with cell_dim = num_classes"):
        SemanticSynthesis(transformer, C + 1)
