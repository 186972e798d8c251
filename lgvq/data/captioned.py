"""The contract every captioned dataset follows, and the file-backed dataset all real loaders share.

Items are ``{"image": float (3, S, S) in [-1, 1], "caption": str, "index": int}`` whatever
the source, so training code never branches on the dataset. Real datasets differ only in
how they pair image files with captions (lgvq.data.formats turns each published layout into
a list of Records); decoding, the transform, caption choice and bad-file handling live here,
once.
"""

from __future__ import annotations

import abc
import operator
import random
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from lgvq.checks import check_choice
from lgvq.data.images import check_image_size, image_problem, load_image

CAPTION_MODES = ("random", "first")


class BadCaptionError(ValueError):
    """An image whose captions are missing or empty; ``path`` names the caption source."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = Path(path)


def choose_caption(captions: Sequence[str], mode: str, seed: int, index: int, epoch: int) -> str:
    """Pick one caption of an image.

    ``"first"`` is for evaluation (a fixed reference). ``"random"`` is a pure function of
    (seed, index, epoch): reproducible, independent of worker count and iteration order,
    and, once ``set_epoch`` advances the epoch, every caption of an image gets used.
    """
    if mode == "first":
        return captions[0]
    return captions[random.Random(f"{seed}/{index}/{epoch}").randrange(len(captions))]


class CaptionedDataset(Dataset, abc.ABC):
    """Base of every lgvq dataset: index checking, caption choice and the item dict."""

    def __init__(self, *, image_size: int, caption_mode: str = "random", seed: int = 0):
        check_choice("caption_mode", caption_mode, CAPTION_MODES)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.image_size = check_image_size(image_size)
        self.caption_mode = caption_mode
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose captions ``caption_mode="random"`` returns.

        Call it before each epoch, as with DistributedSampler.set_epoch. DataLoader workers
        copy the dataset when an iterator starts, so with ``persistent_workers=True`` the
        workers never see a later epoch.
        """
        self.epoch = operator.index(epoch)

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def captions(self, index: int) -> tuple[str, ...]:
        """All captions of item ``index``."""

    @abc.abstractmethod
    def _image_and_captions(self, index: int) -> tuple[torch.Tensor, tuple[str, ...]]:
        """The image tensor and all captions of a valid, non-negative index."""

    def check_index(self, index) -> int:
        """Normalise a (possibly negative) index; IndexError when out of range."""
        index = operator.index(index)
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of size {size}")
        return index % size

    def __getitem__(self, index) -> dict:
        index = self.check_index(index)
        image, captions = self._image_and_captions(index)
        caption = choose_caption(captions, self.caption_mode, self.seed, index, self.epoch)
        return {"image": image, "caption": caption, "index": index}


def collate(batch: Sequence[dict]) -> dict:
    """Batch items: images stacked (B, 3, S, S), captions a list, indices an int64 tensor."""
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "caption": [item["caption"] for item in batch],
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.int64),
    }


@dataclass(frozen=True)
class Record:
    """One image file and its captions, as a format reader found them.

    ``caption_source`` is where the captions came from (a sidecar .txt or an annotation
    file), so an empty ``captions`` can be reported against the right file.
    """

    image: Path
    captions: tuple[str, ...]
    caption_source: Path


def read_caption_lines(path: Path) -> tuple[str, ...]:
    """Non-empty stripped lines of a caption file; () when the file does not exist.

    Undecodable bytes are replaced rather than fatal: the CUB text release has a few.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def caption_problem(record: Record) -> str | None:
    """Why a record has no usable captions (naming the file), or None when it has some."""
    if record.captions:
        return None
    source = record.caption_source
    if source.suffix == ".txt":
        state = "has no captions" if source.exists() else "is missing"
        return f"caption file {source} (for image {record.image}) {state}"
    return f"no captions for image {record.image} in {source}"


class CaptionedImageFiles(CaptionedDataset):
    """Image files on disk with their captions: the dataset behind every real loader.

    Records with missing or empty captions raise BadCaptionError at construction, so a
    broken caption release fails before training starts. Images are decoded lazily in
    ``__getitem__``, and an unreadable one raises BadImageError naming the file.

    With ``skip_bad=True`` every image is decoded once up front (threaded, at reduced JPEG
    scale) and records with unreadable images or missing captions are dropped instead;
    ``skipped`` lists why, ``num_skipped`` counts them, and one warning reports the count.
    """

    def __init__(
        self,
        records: Iterable[Record],
        *,
        name: str,
        image_size: int,
        caption_mode: str = "random",
        seed: int = 0,
        skip_bad: bool = False,
    ):
        super().__init__(image_size=image_size, caption_mode=caption_mode, seed=seed)
        self.name = name
        records = list(records)
        if not records:
            raise ValueError(f"{name}: no images found")
        problems = _record_problems(records, check_images=skip_bad)
        if not skip_bad:
            for record, problem in zip(records, problems):
                if problem is not None:
                    raise BadCaptionError(record.caption_source, f"{name}: {problem}")
        self.records = [r for r, problem in zip(records, problems) if problem is None]
        self.skipped = [problem for problem in problems if problem is not None]
        if self.skipped:
            warnings.warn(
                f"{name}: skipped {len(self.skipped)} of {len(records)} images "
                f"(first: {self.skipped[0]})",
                stacklevel=2,
            )
        if not self.records:
            raise ValueError(f"{name}: none of the {len(records)} images is usable")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.records)

    def captions(self, index: int) -> tuple[str, ...]:
        return self.records[self.check_index(index)].captions

    def _image_and_captions(self, index: int) -> tuple[torch.Tensor, tuple[str, ...]]:
        record = self.records[index]
        return load_image(record.image, self.image_size), record.captions


def _record_problems(records: list[Record], *, check_images: bool) -> list[str | None]:
    """Per record: a message naming the bad file, or None when the record is usable."""
    problems = [caption_problem(record) for record in records]
    if check_images:
        to_check = [i for i, problem in enumerate(problems) if problem is None]
        with ThreadPoolExecutor() as pool:  # Pillow releases the GIL while decoding
            reasons = pool.map(image_problem, [records[i].image for i in to_check])
            for i, reason in zip(to_check, reasons):
                if reason is not None:
                    problems[i] = f"cannot read image {records[i].image}: {reason}"
    return problems
