"""Readers for the published layouts of real caption datasets.

Each reader maps ``(root, split)`` to a list of Records (image path, captions, where the
captions came from) and does nothing else: decoding, transforms, caption choice and
bad-file policy are shared in lgvq.data.captioned. The ``*_LAYOUT`` strings are the
accepted layouts; they appear verbatim in the error raised when a path is missing.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

from lgvq.data.captioned import Record, read_caption_lines

CUB_LAYOUT = """\
<root>/CUB_200_2011/images/<class>/<name>.jpg
<root>/text/<class>/<name>.txt          one caption per line (10 per image)
<root>/{train,test}/filenames.pickle    optional split lists of "<class>/<name>" (the
                                        text-to-image release); without one, all images"""

CELEBA_LAYOUT = """\
<root>/CelebA-HQ-img/<id>.jpg
<root>/celeba-caption/<id>.txt          one caption per line (10 per image)
<root>/{train,test}/filenames.pickle    optional split lists of ids; without one, all images"""

COCO_LAYOUT = """\
<root>/annotations/captions_<split>.json   e.g. annotations/captions_train2017.json
<root>/<split>/<file_name>                 e.g. train2017/000000391895.jpg
split "train"/"val" means train2017/val2017; "train2014"/"val2014" select the 2014 release"""

TEXTCAPS_LAYOUT = """\
<root>/TextCaps_0.1_<split>.json   split "train" or "val": {"data": [{"image_id", "image_path",
                                   "caption_str", "reference_strs", ...}]}, one entry per caption
<root>/train_images/<image_id>.jpg TextVQA's train_val_images.zip, which holds both splits'
                                   images; without train_images/, <root>/<image_path> is used"""

FOLDER_LAYOUT = """\
either <root>/captions.jsonl   lines of {"image": "<path relative to root>",
                               "caption": "<text>" or ["<text>", ...]}; repeated images merge
or     <root>/**/<name>.<jpg|jpeg|png|webp|bmp> with <name>.txt beside each, one caption per line
no splits: point root at each split's folder"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def require(path: Path, layout: str) -> Path:
    """Return ``path`` if it exists, else FileNotFoundError naming it and the expected layout."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Expected layout:\n{layout}")
    return path


@contextlib.contextmanager
def _parsing(source: Path | str):
    """Report malformed annotation files (bad JSON, missing fields) against their path."""
    try:
        yield
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: invalid JSON ({error})") from error
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{source}: unexpected structure ({type(error).__name__}: {error})"
        ) from error


def _split_names(root: Path, split: str) -> list[str] | None:
    """Names in ``<root>/<split>/filenames.pickle``, or None (with a warning) when absent."""
    path = root / split / "filenames.pickle"
    if not path.exists():
        warnings.warn(f"{path} not found: using every image, not the {split!r} split", stacklevel=2)
        return None
    with path.open("rb") as file:
        names = pickle.load(file, encoding="latin1")  # the release pickles come from Python 2
    return [str(name).removesuffix(".jpg") for name in names]


def _captioned_by_file(image: Path, caption_file: Path) -> Record:
    """A record whose captions are the lines of their own text file."""
    return Record(image, read_caption_lines(caption_file), caption_file)


def _paired_text_records(
    root: Path, split: str, *, image_dir: str, text_dir: str, pattern: str, layout: str
) -> list[Record]:
    """Layouts where ``<image_dir>/<name>.jpg`` has its captions in ``<text_dir>/<name>.txt``."""
    images = require(root / image_dir, layout)
    texts = require(root / text_dir, layout)
    names = _split_names(root, split)
    if names is None:
        names = sorted(
            p.relative_to(images).with_suffix("").as_posix() for p in images.glob(pattern)
        )
    return [_captioned_by_file(images / f"{name}.jpg", texts / f"{name}.txt") for name in names]


read_cub = partial(
    _paired_text_records,
    image_dir="CUB_200_2011/images",
    text_dir="text",
    pattern="*/*.jpg",
    layout=CUB_LAYOUT,
)
read_celeba = partial(
    _paired_text_records,
    image_dir="CelebA-HQ-img",
    text_dir="celeba-caption",
    pattern="*.jpg",
    layout=CELEBA_LAYOUT,
)


def read_coco(root: Path, split: str) -> list[Record]:
    """COCO captions: one record per image with its (usually 5) captions."""
    name = split if split[-4:].isdigit() else f"{split}2017"
    annotations = require(root / "annotations" / f"captions_{name}.json", COCO_LAYOUT)
    images = require(root / name, COCO_LAYOUT)
    with _parsing(annotations):
        data = json.loads(annotations.read_text(encoding="utf-8"))
        captions: dict[int, list[str]] = {image["id"]: [] for image in data["images"]}
        for annotation in data["annotations"]:
            captions[annotation["image_id"]].append(annotation["caption"].strip())
        files = {image["id"]: image["file_name"] for image in data["images"]}
    return [
        Record(images / files[image_id], tuple(c for c in texts if c), annotations)
        for image_id, texts in sorted(captions.items())
    ]


def read_textcaps(root: Path, split: str) -> list[Record]:
    """TextCaps: entries are per caption; they are merged into one record per image."""
    annotations = require(root / f"TextCaps_0.1_{split}.json", TEXTCAPS_LAYOUT)
    image_dir = root / "train_images"
    use_image_dir = image_dir.is_dir()
    images: dict[str, Path] = {}
    captions: dict[str, list[str]] = {}
    with _parsing(annotations):
        for entry in json.loads(annotations.read_text(encoding="utf-8"))["data"]:
            image_id = entry["image_id"]
            if image_id not in images:
                images[image_id] = (
                    image_dir / f"{image_id}.jpg" if use_image_dir else root / entry["image_path"]
                )
                captions[image_id] = []
            texts = [entry.get("caption_str"), *entry.get("reference_strs", [])]
            captions[image_id] += [t.strip() for t in texts if t and t.strip()]
    return [
        Record(path, tuple(dict.fromkeys(captions[image_id])), annotations)
        for image_id, path in images.items()
    ]


def read_folder(root: Path, split: str) -> list[Record]:
    """A plain folder: ``captions.jsonl`` when present, else a .txt sidecar per image.

    ``split`` is accepted for a uniform reader signature; folders have none (see the layout).
    """
    index = root / "captions.jsonl"
    if index.exists():
        return _jsonl_records(root, index)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images under {root}. Expected layout:\n{FOLDER_LAYOUT}")
    return [_captioned_by_file(image, image.with_suffix(".txt")) for image in images]


def _jsonl_records(root: Path, index: Path) -> list[Record]:
    captions: dict[str, list[str]] = {}
    lines = index.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        with _parsing(f"{index} line {number}"):
            entry = json.loads(line)
            texts = entry["caption"]
            texts = [texts] if isinstance(texts, str) else list(texts)
            captions.setdefault(entry["image"], []).extend(t.strip() for t in texts if t.strip())
    return [Record(root / image, tuple(texts), index) for image, texts in captions.items()]


class CaptionFormat(NamedTuple):
    """How load_dataset reads one real format: its reader, accepted layout and splits."""

    read: Callable[[Path, str], list[Record]]
    layout: str
    splits: tuple[str, ...]


FORMATS = {
    "cub": CaptionFormat(read_cub, CUB_LAYOUT, ("train", "test")),
    "celeba": CaptionFormat(read_celeba, CELEBA_LAYOUT, ("train", "test")),
    "coco": CaptionFormat(
        read_coco, COCO_LAYOUT, ("train", "val", "train2014", "val2014", "train2017", "val2017")
    ),
    "textcaps": CaptionFormat(read_textcaps, TEXTCAPS_LAYOUT, ("train", "val")),
    "folder": CaptionFormat(read_folder, FOLDER_LAYOUT, ("train",)),
}
