"""Real caption-dataset loaders, each on a tiny fixture written in its published layout.

Every fixture image is a solid, distinct colour, so checking an item's pixels proves the
loader paired the right image with the right captions.
"""

import json
import pickle
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from PIL import Image

from lgvq.data import BadCaptionError, BadImageError, collate, load_dataset

PALETTE = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]


class Expected(NamedTuple):
    captions: tuple[str, ...]
    colour: tuple[int, int, int]


def write_image(path: Path, colour, size=(30, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_pickle(path: Path, names) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(names, protocol=2))


def captions_for(i: int, count: int) -> tuple[str, ...]:
    return tuple(f"image {i} caption {k}" for k in range(count))


def build_paired_text(root, image_dir, text_dir, names, split_names) -> dict[Path, Expected]:
    """CUB / MM-CelebA-HQ: <image_dir>/<name>.jpg + <text_dir>/<name>.txt + split pickles."""
    expected = {}
    for i, name in enumerate(names):
        image = root / image_dir / f"{name}.jpg"
        write_image(image, PALETTE[i])
        captions = captions_for(i, 10)
        write_text(root / text_dir / f"{name}.txt", "\n".join(captions) + "\n\n")
        if str(name) in map(str, split_names["train"]):
            expected[image] = Expected(captions, PALETTE[i])
    for split, split_list in split_names.items():
        write_pickle(root / split / "filenames.pickle", split_list)
    return expected


def build_cub(root: Path) -> dict[Path, Expected]:
    names = [
        "001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111",
        "001.Black_footed_Albatross/Black_Footed_Albatross_0002_55",
        "002.Laysan_Albatross/Laysan_Albatross_0003_1033",
    ]
    splits = {"train": [names[0], names[2]], "test": [names[1]]}
    return build_paired_text(root, "CUB_200_2011/images", "text", names, splits)


def build_celeba(root: Path) -> dict[Path, Expected]:
    splits = {"train": [0, 2], "test": [1]}  # the release pickles hold integer ids
    return build_paired_text(root, "CelebA-HQ-img", "celeba-caption", ["0", "1", "2"], splits)


def build_coco(root: Path) -> dict[Path, Expected]:
    images, annotations, expected = [], [], {}
    for i, image_id in enumerate([42, 7, 1000]):
        file_name = f"{image_id:012d}.jpg"
        write_image(root / "train2017" / file_name, PALETTE[i])
        images.append({"id": image_id, "file_name": file_name, "width": 30, "height": 20})
        captions = captions_for(i, 5)
        annotations += [
            {"id": 10 * image_id + k, "image_id": image_id, "caption": f" {c}\n"}
            for k, c in enumerate(captions)
        ]
        expected[root / "train2017" / file_name] = Expected(captions, PALETTE[i])
    write_text(
        root / "annotations" / "captions_train2017.json",
        json.dumps({"info": {}, "images": images, "annotations": annotations}),
    )
    return expected


def build_textcaps(root: Path) -> dict[Path, Expected]:
    entries, expected = [], {}
    for i, image_id in enumerate(["011e7e629fb9ae7b", "0a1b2c3d4e5f6071"]):
        write_image(root / "train_images" / f"{image_id}.jpg", PALETTE[i])
        captions = captions_for(i, 3)
        for caption_id, caption in enumerate(captions):  # one entry per caption, as released
            entries.append(
                {
                    "image_id": image_id,
                    "image_path": f"train/{image_id}.jpg",
                    "caption_id": caption_id,
                    "caption_str": caption,
                    "reference_strs": list(captions),
                    "set_name": "train",
                }
            )
        expected[root / "train_images" / f"{image_id}.jpg"] = Expected(captions, PALETTE[i])
    write_text(
        root / "TextCaps_0.1_train.json",
        json.dumps({"dataset_type": "train", "dataset_name": "textcaps", "data": entries}),
    )
    return expected


def build_folder_sidecars(root: Path) -> dict[Path, Expected]:
    expected = {}
    for i, name in enumerate(["a.png", "nested/b.jpg", "nested/deeper/c.jpeg"]):
        write_image(root / name, PALETTE[i])
        captions = captions_for(i, 2)
        write_text((root / name).with_suffix(".txt"), "\n".join(captions))
        expected[root / name] = Expected(captions, PALETTE[i])
    return expected


def build_folder_jsonl(root: Path) -> dict[Path, Expected]:
    lines = [
        {"image": "img/0.png", "caption": ["image 0 caption 0", "image 0 caption 1"]},
        {"image": "img/1.jpg", "caption": "image 1 caption 0"},
        {"image": "img/1.jpg", "caption": "image 1 caption 1"},  # repeated images merge
    ]
    for i in range(2):
        write_image(root / "img" / ("0.png" if i == 0 else "1.jpg"), PALETTE[i])
    write_text(root / "captions.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    return {
        root / "img" / "0.png": Expected(captions_for(0, 2), PALETTE[0]),
        root / "img" / "1.jpg": Expected(captions_for(1, 2), PALETTE[1]),
    }


BUILDERS = {
    "cub": build_cub,
    "celeba": build_celeba,
    "coco": build_coco,
    "textcaps": build_textcaps,
    "folder": build_folder_sidecars,
    "folder-jsonl": build_folder_jsonl,
}
FORMAT_OF = {case: case.split("-")[0] for case in BUILDERS}


def mean_colour(image: torch.Tensor) -> torch.Tensor:
    return ((image + 1) * 127.5).mean(dim=(1, 2))


@pytest.mark.parametrize("case", BUILDERS)
def test_items_load_with_their_own_captions(tmp_path, case):
    expected = BUILDERS[case](tmp_path)
    dataset = load_dataset(FORMAT_OF[case], tmp_path, image_size=16, caption_mode="first")
    assert sorted(r.image for r in dataset.records) == sorted(expected)
    for index in range(len(dataset)):
        want = expected[dataset.records[index].image]
        item = dataset[index]
        assert item["index"] == index and item["caption"] == want.captions[0]
        assert dataset.captions(index) == want.captions
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert torch.allclose(mean_colour(item["image"]), torch.tensor(want.colour).float(), atol=8)
    assert dataset.num_skipped == 0
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["image"].shape == (len(dataset), 3, 16, 16)


@pytest.mark.parametrize("case", BUILDERS)
def test_unreadable_image_names_the_file_or_is_skipped_and_counted(tmp_path, case):
    expected = BUILDERS[case](tmp_path)
    broken = sorted(expected)[0]
    broken.write_bytes(b"this is not an image")

    dataset = load_dataset(FORMAT_OF[case], tmp_path, image_size=16)
    index = [r.image for r in dataset.records].index(broken)
    with pytest.raises(BadImageError, match=str(broken)):
        dataset[index]

    with pytest.warns(UserWarning, match="skipped 1 of") as warned:
        skipping = load_dataset(FORMAT_OF[case], tmp_path, image_size=16, skip_bad=True)
    assert len(warned) == 1
    assert skipping.num_skipped == 1 and str(broken) in skipping.skipped[0]
    assert len(skipping) == len(expected) - 1
    assert broken not in [r.image for r in skipping.records]
    for index in range(len(skipping)):
        skipping[index]


def test_truncated_image_is_caught_by_skip_bad(tmp_path):
    expected = build_folder_sidecars(tmp_path)
    truncated = tmp_path / "nested" / "b.jpg"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:200])  # header intact, data cut short
    with pytest.warns(UserWarning, match="skipped 1"):
        dataset = load_dataset("folder", tmp_path, image_size=16, skip_bad=True)
    assert len(dataset) == len(expected) - 1


@pytest.mark.parametrize("case", BUILDERS)
def test_missing_root_names_path_and_layout(tmp_path, case):
    missing = tmp_path / "not-there"
    with pytest.raises(FileNotFoundError, match="Expected layout") as error:
        load_dataset(FORMAT_OF[case], missing)
    assert str(missing) in str(error.value)


@pytest.mark.parametrize(
    ("name", "present", "relative"),
    [
        ("cub", None, "CUB_200_2011/images"),
        ("celeba", "CelebA-HQ-img", "celeba-caption"),
        ("coco", "annotations", "annotations/captions_train2017.json"),
        ("textcaps", None, "TextCaps_0.1_train.json"),
    ],
)
def test_missing_part_of_layout_names_it(tmp_path, name, present, relative):
    if present:
        (tmp_path / present).mkdir()
    with pytest.raises(FileNotFoundError, match="Expected layout") as error:
        load_dataset(name, tmp_path)
    assert str(tmp_path / relative) in str(error.value)


@pytest.mark.parametrize(
    ("case", "caption_file"),
    [
        ("cub", "text/002.Laysan_Albatross/Laysan_Albatross_0003_1033.txt"),
        ("celeba", "celeba-caption/2.txt"),
        ("folder", "nested/b.txt"),
    ],
)
def test_missing_or_empty_caption_file_is_named_or_skipped(tmp_path, case, caption_file):
    expected = BUILDERS[case](tmp_path)
    path = tmp_path / caption_file
    path.unlink()
    with pytest.raises(BadCaptionError, match="is missing") as error:
        load_dataset(case, tmp_path)
    assert str(path) in str(error.value) and error.value.path == path

    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(BadCaptionError, match=f"{path}.*has no captions"):
        load_dataset(case, tmp_path)

    with pytest.warns(UserWarning, match="skipped 1"):
        dataset = load_dataset(case, tmp_path, skip_bad=True)
    assert dataset.num_skipped == 1 and len(dataset) == len(expected) - 1


def test_coco_image_without_captions_is_named(tmp_path):
    build_coco(tmp_path)
    annotations = tmp_path / "annotations" / "captions_train2017.json"
    data = json.loads(annotations.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 7]
    annotations.write_text(json.dumps(data))
    with pytest.raises(BadCaptionError, match="000000000007.jpg"):
        load_dataset("coco", tmp_path)


def test_cub_without_split_lists_uses_every_image_and_warns(tmp_path):
    build_cub(tmp_path)
    (tmp_path / "train" / "filenames.pickle").unlink()
    with pytest.warns(UserWarning, match="using every image"):
        dataset = load_dataset("cub", tmp_path, image_size=16)
    assert len(dataset) == 3
    assert len(load_dataset("cub", tmp_path, split="test", image_size=16)) == 1


def test_textcaps_falls_back_to_image_path_without_train_images(tmp_path):
    expected = build_textcaps(tmp_path)
    (tmp_path / "train_images").rename(tmp_path / "train")
    dataset = load_dataset("textcaps", tmp_path, image_size=16, caption_mode="first")
    assert sorted(r.image.name for r in dataset.records) == sorted(p.name for p in expected)
    dataset[0]


def test_random_captions_are_deterministic_per_seed_and_vary_by_epoch(tmp_path):
    expected = build_cub(tmp_path)
    a = load_dataset("cub", tmp_path, image_size=16, seed=5)
    b = load_dataset("cub", tmp_path, image_size=16, seed=5)
    assert [a[i]["caption"] for i in range(len(a))] == [b[i]["caption"] for i in range(len(b))]
    seen = set()
    for epoch in range(20):
        a.set_epoch(epoch)
        caption = a[0]["caption"]
        assert caption in expected[a.records[0].image].captions
        seen.add(caption)
    assert len(seen) > 1


def test_malformed_annotations_name_the_file(tmp_path):
    build_folder_jsonl(tmp_path)
    index = tmp_path / "captions.jsonl"
    index.write_text(index.read_text() + '{"image": "img/0.png"}\n')
    with pytest.raises(ValueError, match="captions.jsonl line 4"):
        load_dataset("folder", tmp_path)
    index.write_text("{not json\n")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_dataset("folder", tmp_path)


def test_load_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="name"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_dataset("folder", tmp_path, split="val")
    with pytest.raises(ValueError, match="needs root"):
        load_dataset("coco")
    with pytest.raises(TypeError, match="unexpected options"):
        load_dataset("coco", tmp_path, size=10)
