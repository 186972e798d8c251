"""ShapesDataset: determinism, tensor format, and agreement of captions/VQA with ground truth.

The checks here re-derive every fact from the ground-truth boxes with their own small
parsers, rather than calling the generator's helpers, so a bug in the generator cannot
agree with itself.
"""

import re
from itertools import combinations

import pytest
import torch

from lgvq.data import (
    ANSWER_VOCAB,
    COLOURS,
    POSITIONS,
    SHAPES,
    ShapesDataset,
    collate,
    load_dataset,
)

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
SCENES = 150  # scenes checked per property: covers 1-4 objects and every template
COLOUR = "|".join(COLOURS)
SHAPE = "|".join(SHAPES)
RELATION_PHRASE = "to the left of|to the right of|above|below"


def entirely(a, phrase, b) -> bool:
    """Ground truth of "a <phrase> b": a's box lies wholly on that side of b's box."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return {
        "to the left of": ax1 < bx0,
        "to the right of": ax0 > bx1,
        "above": ay1 < by0,
        "below": ay0 > by1,
    }[phrase]


def find(objects, colour, shape):
    (match,) = [o for o in objects if o.colour == colour and o.shape == shape]
    return match


@pytest.fixture(scope="module")
def dataset():
    return ShapesDataset(size=1000, image_size=32, seed=3, min_objects=1, max_objects=4)


def test_same_seed_same_items_different_seed_different_items():
    a = ShapesDataset(size=50, image_size=32, seed=0)
    b = ShapesDataset(size=50, image_size=32, seed=0)
    c = ShapesDataset(size=50, image_size=32, seed=1)
    for index in (0, 7, 49):
        item_a, item_b, item_c = a[index], b[index], c[index]
        assert torch.equal(item_a["image"], item_b["image"])
        assert item_a["caption"] == item_b["caption"]
        assert not torch.equal(item_a["image"], item_c["image"])


def test_item_regenerates_alone_regardless_of_access_order():
    dataset = ShapesDataset(size=20, image_size=32)
    forward = [dataset[i]["image"] for i in range(20)]
    fresh = ShapesDataset(size=20, image_size=32)
    for i in reversed(range(20)):
        assert torch.equal(fresh[i]["image"], forward[i])


def test_splits_are_independent_scenes():
    train = ShapesDataset(size=10, split="train")
    test = ShapesDataset(size=10, split="test")
    assert all(train.scene(i) != test.scene(i) for i in range(10))


@pytest.mark.parametrize("image_size", [16, 32, 64, 128])
def test_item_format(image_size):
    dataset = ShapesDataset(size=4, image_size=image_size)
    item = dataset[1]
    assert set(item) == {"image", "caption", "index"}
    assert item["index"] == 1 and isinstance(item["caption"], str)
    image = item["image"]
    assert image.shape == (3, image_size, image_size) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    batch = collate([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, image_size, image_size)
    assert batch["caption"] == [dataset[i]["caption"] for i in range(4)]
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_scene_is_resolution_independent():
    small, large = ShapesDataset(size=5, image_size=32), ShapesDataset(size=5, image_size=128)
    assert all(small.scene(i) == large.scene(i) for i in range(5))


def test_objects_do_not_overlap_and_are_drawn_where_ground_truth_says(dataset):
    for index in range(SCENES):
        objects = dataset.scene(index).objects
        assert dataset.min_objects <= len(objects) <= dataset.max_objects
        for a, b in combinations(objects, 2):
            assert any(entirely(a, p, b) for p in RELATION_PHRASE.split("|"))
        pixels = (dataset[index]["image"] + 1) * 127.5
        for obj in objects:
            x, y = (int(c * dataset.image_size) for c in obj.center)
            assert torch.allclose(
                pixels[:, y, x], torch.tensor(COLOURS[obj.colour]).float(), atol=2
            )


def test_captions_name_every_object_with_true_attributes(dataset):
    for index in range(SCENES):
        scene = dataset.scene(index)
        assert len(set(scene.captions)) == len(scene.captions) >= 4
        assert dataset[index]["caption"] in scene.captions
        for caption in scene.captions:
            for obj in scene.objects:
                assert f"{obj.colour} {obj.shape}" in caption, (caption, obj)
            for size, colour, shape in re.findall(rf"(small|large) ({COLOUR}) ({SHAPE})", caption):
                assert find(scene.objects, colour, shape).size == size, caption
            placed = re.findall(
                rf"({COLOUR}) ({SHAPE}) (?:at|on|in) the ([a-z]+(?: left| right)?)", caption
            )
            for colour, shape, position in placed:
                assert position in POSITIONS
                assert find(scene.objects, colour, shape).position == position, caption
            count = re.match(r"(?:there are )?(\w+) (?:objects|shapes):", caption)
            if count:
                assert NUMBERS[count.group(1)] == len(scene.objects)


def test_caption_relations_match_object_boxes(dataset):
    noun = rf"(?:small |large )?({COLOUR}) ({SHAPE})"
    pattern = re.compile(rf"{noun} ({RELATION_PHRASE}) an? {noun}")
    checked = 0
    for index in range(SCENES):
        scene = dataset.scene(index)
        for caption in scene.captions:
            for colour_a, shape_a, phrase, colour_b, shape_b in pattern.findall(caption):
                a = find(scene.objects, colour_a, shape_a)
                b = find(scene.objects, colour_b, shape_b)
                assert entirely(a, phrase, b), (caption, a, b)
                checked += 1
    assert checked > SCENES  # multi-object scenes carry two relational captions each


def answer_from_ground_truth(question: str, objects) -> str:
    """An independent answerer for every question form the dataset asks."""
    yes_no = {True: "yes", False: "no"}
    if question == "how many objects are there?":
        return list(NUMBERS)[len(objects) - 1]
    if m := re.fullmatch(rf"is there an? ({SHAPE})\?", question):
        return yes_no[any(o.shape == m[1] for o in objects)]
    if m := re.fullmatch(rf"is there an? ({COLOUR}) ({SHAPE})\?", question):
        return yes_no[any((o.colour, o.shape) == (m[1], m[2]) for o in objects)]
    if m := re.fullmatch(rf"what colour is the (?:(small|large) )?({SHAPE})\?", question):
        (obj,) = [o for o in objects if o.shape == m[2] and m[1] in (None, o.size)]
        return obj.colour
    if m := re.fullmatch(rf"what shape is the ({COLOUR}) object\?", question):
        (obj,) = [o for o in objects if o.colour == m[1]]
        return obj.shape
    if m := re.fullmatch(rf"what size is the ({COLOUR}) ({SHAPE})\?", question):
        return find(objects, m[1], m[2]).size
    if m := re.fullmatch(rf"where is the ({COLOUR}) ({SHAPE})\?", question):
        return find(objects, m[1], m[2]).position
    if m := re.fullmatch(
        rf"is the ({COLOUR}) ({SHAPE}) ({RELATION_PHRASE}) the ({COLOUR}) ({SHAPE})\?", question
    ):
        return yes_no[entirely(find(objects, m[1], m[2]), m[3], find(objects, m[4], m[5]))]
    if m := re.fullmatch(
        rf"what (shape|colour) is the object ({RELATION_PHRASE}) the ({COLOUR}) ({SHAPE})\?",
        question,
    ):
        anchor = find(objects, m[3], m[4])
        (obj,) = [o for o in objects if o is not anchor and entirely(o, m[2], anchor)]
        return getattr(obj, m[1])
    raise AssertionError(f"unexpected question form: {question!r}")


def test_vqa_answers_are_in_vocabulary_and_match_ground_truth(dataset):
    seen_answers = set()
    for index in range(SCENES):
        objects = dataset.scene(index).objects
        questions, answers = dataset.vqa(index)
        assert len(questions) == len(answers) > 0
        for question, answer in zip(questions, answers):
            assert answer in ANSWER_VOCAB
            assert answer_from_ground_truth(question, objects) == answer, question
        seen_answers.update(answers)
    assert {"yes", "no", "one", "four"} <= seen_answers
    assert dataset.vqa(5) == dataset.vqa(5)


def test_caption_mode_and_epoch():
    first = ShapesDataset(size=30, caption_mode="first")
    assert all(first[i]["caption"] == first.captions(i)[0] for i in range(30))
    shuffled = ShapesDataset(size=30)
    epoch0 = [shuffled[i]["caption"] for i in range(30)]
    assert epoch0 == [ShapesDataset(size=30)[i]["caption"] for i in range(30)]
    shuffled.set_epoch(1)
    assert epoch0 != [shuffled[i]["caption"] for i in range(30)]


def test_indexing_and_argument_errors():
    dataset = ShapesDataset(size=3)
    assert dataset[-1]["index"] == 2
    with pytest.raises(IndexError):
        dataset[3]
    with pytest.raises(ValueError, match="max_objects"):
        ShapesDataset(min_objects=2, max_objects=1)
    with pytest.raises(ValueError, match="max_objects"):
        ShapesDataset(max_objects=9)
    with pytest.raises(ValueError, match="image_size"):
        ShapesDataset(image_size=8)
    with pytest.raises(ValueError, match="caption_mode"):
        ShapesDataset(caption_mode="longest")


def test_load_dataset_builds_shapes():
    dataset = load_dataset("shapes", split="val", image_size=32, seed=4, size=12, max_objects=2)
    assert isinstance(dataset, ShapesDataset) and len(dataset) == 12
    assert dataset.split == "val" and dataset.seed == 4 and dataset.max_objects == 2
    with pytest.raises(ValueError, match="root"):
        load_dataset("shapes", root="/data/shapes")
