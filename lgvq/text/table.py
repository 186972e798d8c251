"""A dataset's caption features on disk, memory-mapped: built once per encoder, read by every rank.

    attach_caption_table(encoder, captions, root)   # rank 0 builds if needed; every rank reads

For datasets whose captions do not fit the in-memory cache (CUB's ~118k captions are about
5 GB of MiniLM or CLIP word features), ``build_caption_table`` encodes every distinct caption
once and stores the features in numpy files, which ``CaptionFeatureTable`` maps into memory:
the operating system pages in what the steps read, and every rank on a machine shares the
pages. The features are ``TextEncoder.encode``'s bits (each caption in a chunk of fixed
shape), so a table is exact. Layout of a table's folder:

    meta.json      {"format", "fingerprint", "count", "tokens"}
    captions.json  the captions, in row order
    words.npy      (tokens, Dt) float32: every caption's real-token rows, back to back
    offsets.npy    (count + 1,) int64: caption i's rows are words[offsets[i]:offsets[i + 1]]
    sentence.npy   (count, Ds) float32

The folder is named by a digest of the caption set (``caption_table_dir``) and records the
encoder's fingerprint (``TextEncoder.fingerprint``): a table built by another encoder, or
before its weights changed, is rebuilt by ``attach_caption_table`` and refused by ``encode``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lgvq.text.cache import CaptionFeatures
from lgvq.text.fingerprint import FEATURES_FORMAT

#: Captions tokenised and encoded per block while building (bounded memory).
BUILD_BLOCK = 1024
_FILES = ("meta.json", "captions.json", "words.npy", "offsets.npy", "sentence.npy")


class StaleTableError(RuntimeError):
    """A table whose features were computed by an encoder other than the one reading it."""


def distinct_captions(captions: Iterable[str]) -> list[str]:
    """The distinct captions, sorted (the order of a table's rows and of its digest)."""
    return sorted(set(captions))


def training_captions(dataset) -> Iterator[str]:
    """Every caption training can draw from a captioned dataset (``lgvq.data``): all of each
    item's, or only the first when its ``caption_mode`` is "first"."""
    first_only = dataset.caption_mode == "first"
    for index in range(len(dataset)):
        captions = dataset.captions(index)
        yield from captions[:1] if first_only else captions


def caption_table_dir(root: str | os.PathLike, captions: Sequence[str]) -> Path:
    """``root``/<sha256 of the distinct captions, 16 hex digits>: one folder per caption set."""
    digest = hashlib.sha256("\n".join(distinct_captions(captions)).encode()).hexdigest()
    return Path(root) / digest[:16]


class CaptionFeatureTable:
    """Read-only, memory-mapped caption -> ``CaptionFeatures`` for one caption set."""

    def __init__(self, directory: str | os.PathLike):
        directory = Path(directory)
        missing = [name for name in _FILES if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a caption feature table: missing {', '.join(missing)}")
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format") != FEATURES_FORMAT:
            raise StaleTableError(f"{directory} holds format {meta.get('format')!r}, not {FEATURES_FORMAT!r}")
        self.directory = directory
        self.fingerprint: str = meta["fingerprint"]
        captions = json.loads((directory / "captions.json").read_text())
        self._rows = {caption: row for row, caption in enumerate(captions)}
        self._words = np.load(directory / "words.npy", mmap_mode="r")
        self._offsets = np.load(directory / "offsets.npy")
        self._sentence = np.load(directory / "sentence.npy", mmap_mode="r")
        if not len(captions) == meta["count"] == len(self._offsets) - 1 == len(self._sentence):
            raise FileNotFoundError(f"{directory} is incomplete: its files disagree on the caption count")

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, caption: str) -> bool:
        return caption in self._rows

    def check_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise StaleTableError(
                f"the caption feature table {self.directory} was built by another text encoder (or before its "
                "weights changed); rebuild it with lgvq.text.table.attach_caption_table"
            )

    def get(self, caption: str) -> CaptionFeatures | None:
        """Copies of the caption's rows (a step must not hold pages of the map), or None."""
        row = self._rows.get(caption)
        if row is None:
            return None
        start, end = self._offsets[row], self._offsets[row + 1]
        return torch.from_numpy(np.array(self._words[start:end])), torch.from_numpy(np.array(self._sentence[row]))


@torch.no_grad()
def build_caption_table(encoder, captions: Iterable[str], directory: str | os.PathLike) -> Path:
    """Encode every distinct caption once and write the table to ``directory``, replacing
    what is there. The files are written to a temporary folder beside it and renamed into
    place, so a reader sees the old table or the new one; an interrupted build leaves no
    half-written table, only a ``.tmp-*`` folder beside it, which may be deleted."""
    directory = Path(directory)
    captions = distinct_captions(captions)
    if not captions:
        raise ValueError("captions must hold at least one caption to build a caption feature table")
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    blocks = [captions[i:i + BUILD_BLOCK] for i in range(0, len(captions), BUILD_BLOCK)]
    lengths = [n for block in blocks for n in encoder.tokenize(block).lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    words = np.lib.format.open_memmap(temporary / "words.npy", mode="w+", dtype=np.float32,
                                      shape=(int(offsets[-1]), encoder.dim))
    sentence = np.lib.format.open_memmap(temporary / "sentence.npy", mode="w+", dtype=np.float32,
                                         shape=(len(captions), encoder.sentence_dim))
    row = 0
    for block in blocks:
        for row_words, row_sentence in encoder._encode_rows(encoder.tokenize(block)):
            words[offsets[row]:offsets[row + 1]] = row_words.cpu().numpy()
            sentence[row] = row_sentence.cpu().numpy()
            row += 1
    words.flush()
    sentence.flush()
    del words, sentence
    np.save(temporary / "offsets.npy", offsets)
    (temporary / "captions.json").write_text(json.dumps(captions))
    meta = {"format": FEATURES_FORMAT, "fingerprint": encoder.fingerprint(), "count": len(captions),
            "tokens": int(offsets[-1])}
    (temporary / "meta.json").write_text(json.dumps(meta, indent=2))
    _replace_dir(temporary, directory)
    return directory


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, moving an existing ``target`` aside first."""
    old = target.parent / f".tmp-old-{target.name}-{os.getpid()}"
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _current_table(directory: Path, fingerprint: str) -> CaptionFeatureTable | None:
    """The table in ``directory`` if it is complete and was built under ``fingerprint``."""
    try:
        table = CaptionFeatureTable(directory)
    except (FileNotFoundError, StaleTableError, ValueError, KeyError):
        return None
    return table if table.fingerprint == fingerprint else None


def attach_caption_table(encoder, captions: Iterable[str], root: str | os.PathLike) -> CaptionFeatureTable:
    """Serve ``captions``' features to ``encoder.encode`` from a table under ``root``.

    Rank 0 (or the only process) builds the table unless ``root`` already holds a current
    one for this caption set and this encoder: a table from another encoder, or from before
    the encoder's weights changed, is rebuilt, never reused. Under torch.distributed the
    other ranks wait at a barrier, then open what rank 0 wrote; one writer, many readers.
    The encoder's fingerprint includes the device: ranks on different device models cannot
    share a table, and are told so.
    """
    captions = distinct_captions(captions)
    directory = caption_table_dir(root, captions)
    fingerprint = encoder.fingerprint()
    distributed = dist.is_available() and dist.is_initialized()
    if (not distributed or dist.get_rank() == 0) and _current_table(directory, fingerprint) is None:
        build_caption_table(encoder, captions, directory)
    if distributed:
        dist.barrier()
    table = CaptionFeatureTable(directory)
    table.check_fingerprint(fingerprint)
    encoder.table = table
    return table
