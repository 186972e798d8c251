"""Which split of a config's data a job reads, and the ``load_dataset`` arguments for it."""

from __future__ import annotations

from lgvq.data import FORMATS
from lgvq.data.shapes import SPLITS as SHAPES_SPLITS
from lgvq.experiment.config import ConfigError, ExperimentConfig


def dataset_splits(name: str) -> tuple[str, ...]:
    return SHAPES_SPLITS if name == "shapes" else FORMATS[name].splits


def held_out_split(name: str) -> str:
    """The split evaluation uses by default: val or test, or the only split a folder has."""
    splits = dataset_splits(name)
    return next((s for s in ("val", "test") if s in splits), splits[0])


def check_split(key: str, name: str, split: str) -> None:
    splits = dataset_splits(name)
    if split not in splits:
        hint = " (a folder has no splits: point data.root at each split's folder)" if name == "folder" else ""
        raise ConfigError(f"{key}={split!r} is not a split of {name} data: must be one of {', '.join(splits)}{hint}")


def dataset_args(config: ExperimentConfig, split: str | None, size: int) -> dict:
    """load_dataset arguments for ``split`` of the config's data (None: ``held_out_split``)."""
    data = config.data
    split = held_out_split(data.name) if split is None else split
    args = dict(name=data.name, root=data.root, split=split, image_size=data.image_size,
                caption_mode=data.caption_mode, skip_bad=data.skip_bad, seed=config.train.seed)
    if data.name == "shapes":
        args["size"] = size
    return args
