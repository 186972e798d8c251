"""Image decoding and the one transform every loader shares.

All datasets in ``lgvq.data`` hand the model square float images in [-1, 1], the range the
VQ autoencoders are trained on. Real photos are centre-cropped to a square and resized in a
single Pillow call (crop box + resize), which gives the same pixels as "resize the shorter
side, then centre-crop" without an intermediate image. JPEGs are decoded with
``Image.draft`` so a 500-pixel photo destined for 64x64 is decoded at reduced DCT scale,
which keeps image loading from becoming the training bottleneck.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lgvq.extras import needs_extra

with needs_extra("train"):
    from PIL import Image

MIN_IMAGE_SIZE = 16

# What Pillow raises for unreadable files: OSError covers missing files, unidentified
# formats and truncated data; ValueError and DecompressionBombError bad headers and sizes.
_DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


class BadImageError(OSError):
    """An image file that cannot be opened or decoded; ``path`` names it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def check_image_size(image_size) -> int:
    """Validate the side length every dataset resizes to (square, >= MIN_IMAGE_SIZE)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    return image_size


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB Pillow image -> float32 tensor (3, H, W) in [-1, 1]."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square inside a width x height image, as a Pillow box."""
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return left, top, left + side, top + side


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """Decode ``path``, centre-crop to a square, resize to ``image_size``; (3, S, S) in [-1, 1].

    Any decoding problem (missing file, garbage bytes, truncated data) is raised as
    BadImageError naming the file, so a bad file in a large dataset is easy to find.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image_size, image_size))
            image = image.convert("RGB")
            box = center_square(*image.size)
            image = image.resize(
                (image_size, image_size), Image.Resampling.BICUBIC, box=box, reducing_gap=2.0
            )
    except _DECODE_ERRORS as error:
        raise BadImageError(path, str(error) or type(error).__name__) from error
    return pil_to_tensor(image)


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes.

    Decodes the whole file (at the smallest JPEG draft scale, so it is cheap) because a
    header check alone passes truncated files that would fail later, mid-training.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))
            image.load()
    except _DECODE_ERRORS as error:
        return str(error) or type(error).__name__
    return None
