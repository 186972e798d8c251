"""``load_dataset``: one entry point for the embedded dataset and every real caption format."""

from __future__ import annotations

from pathlib import Path

from lgvq.checks import check_choice
from lgvq.data.captioned import CaptionedDataset, CaptionedImageFiles
from lgvq.data.formats import FORMATS, require
from lgvq.data.shapes import SPLITS as SHAPES_SPLITS
from lgvq.data.shapes import ShapesDataset

DATASET_NAMES = ("shapes", *FORMATS)


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int = 64,
    caption_mode: str = "random",
    skip_bad: bool = False,
    seed: int = 0,
    **shapes_options,
) -> CaptionedDataset:
    """Build dataset ``name`` whose items are {"image", "caption", "index"}.

    ``root`` is the dataset folder in its published layout (see lgvq.data.formats; a
    missing path raises FileNotFoundError that prints the layout). "shapes" is generated
    and takes no root; ``shapes_options`` (size, min_objects, max_objects) go to
    ShapesDataset. ``skip_bad`` drops unreadable images and images without captions
    (counted in ``num_skipped``) instead of raising.
    """
    check_choice("name", name, DATASET_NAMES)
    if name == "shapes":
        if root is not None:
            raise ValueError(
                f"the shapes dataset is generated and takes no root, got root={root!r}"
            )
        check_choice("split", split, SHAPES_SPLITS)
        return ShapesDataset(
            image_size=image_size,
            seed=seed,
            split=split,
            caption_mode=caption_mode,
            **shapes_options,
        )
    if shapes_options:
        raise TypeError(f"unexpected options for {name!r}: {sorted(shapes_options)}")
    if root is None:
        raise ValueError(f"{name!r} needs root, the dataset folder")
    fmt = FORMATS[name]
    check_choice("split", split, fmt.splits)
    root = require(Path(root), fmt.layout)
    return CaptionedImageFiles(
        fmt.read(root, split),
        name=f"{name} {split}",
        image_size=image_size,
        caption_mode=caption_mode,
        seed=seed,
        skip_bad=skip_bad,
    )
