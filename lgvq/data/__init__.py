"""Captioned image datasets: the embedded ShapesDataset and loaders for real caption datasets.

Every dataset yields {"image": float (3, S, S) in [-1, 1], "caption": str, "index": int};
batch with ``collate``. Build any of them by name with ``load_dataset``.
"""

from lgvq.data.captioned import (
    CAPTION_MODES,
    BadCaptionError,
    CaptionedDataset,
    CaptionedImageFiles,
    Record,
    collate,
)
from lgvq.data.formats import FORMATS
from lgvq.data.images import BadImageError, load_image
from lgvq.data.registry import DATASET_NAMES, load_dataset
from lgvq.data.shapes import (
    ANSWER_VOCAB,
    COLOURS,
    POSITIONS,
    RELATIONS,
    SEMANTIC_CLASSES,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    ShapesDataset,
    spatial_relation,
)

__all__ = [
    "ANSWER_VOCAB",
    "BadCaptionError",
    "BadImageError",
    "CAPTION_MODES",
    "COLOURS",
    "CaptionedDataset",
    "CaptionedImageFiles",
    "DATASET_NAMES",
    "FORMATS",
    "POSITIONS",
    "RELATIONS",
    "Record",
    "SEMANTIC_CLASSES",
    "SHAPES",
    "SIZES",
    "Scene",
    "ShapeObject",
    "ShapesDataset",
    "collate",
    "load_dataset",
    "load_image",
    "spatial_relation",
]
