"""ShapesDataset: an embedded, procedurally generated captioned dataset with full ground truth.

Why it exists: LG-VQ's claims are about codes that capture *what the caption says* (object
colours, shapes, counts, spatial relations). Real caption datasets cannot verify that; here
every caption, question and answer is derived from known scene attributes, so alignment,
attribute probes and VQA can be checked exactly, and tests run without downloads.

Each item is a pure function of (split, seed, index): a private RNG is seeded from those,
so any item can be regenerated alone, DataLoader workers share no state, and the scene
(objects, captions, questions) is identical at every ``image_size``; only the rendering
changes.

Geometry is in normalised image coordinates: x to the right, y downwards, both in [0, 1].
Objects are axis-aligned boxes that never overlap (a gap of ``_GAP`` is kept), so every
pair of objects is separated along at least one axis and has a clear spatial relation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import permutations

import torch

from lgvq.checks import check_choice, check_positive
from lgvq.data.captioned import CaptionedDataset
from lgvq.data.images import pil_to_tensor
from lgvq.extras import needs_extra

with needs_extra("train"):
    from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SEMANTIC_CLASSES = ("background", *SHAPES)  # the classes of a semantic map, index = class id
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 60),
    "cyan": (40, 210, 220),
    "blue": (40, 80, 230),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SIZES = ("small", "large")
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = ("one", "two", "three", "four")
MAX_OBJECTS = len(NUMBER_WORDS)
SPLITS = ("train", "val", "test")

# Every answer a VQA question can have: the classifier head's label set.
ANSWER_VOCAB = ("yes", "no", *NUMBER_WORDS, *COLOURS, *SHAPES, *SIZES, *POSITIONS)

BACKGROUND = (24, 24, 24)
_HALF_EXTENT = {"small": 0.11, "large": 0.19}  # half an object's box side, in image widths
_GAP = 0.03  # empty space kept between boxes and around the border (~1 px at 32x32)
_SUPERSAMPLE = 2  # render at 2x and box-downsample: cheap antialiasing
_PLACEMENT_TRIES = 50  # per object, before the whole layout is restarted
_LAYOUT_RESTARTS = 1000  # unreachable in practice: four large boxes fit with room to spare

_RELATION_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_FRAMES = ("a picture of", "an image of", "a drawing of", "a rendering of")

# Outlines in the unit square (x right, y down), scaled to each object's box.
_A, _B = 0.3, 0.7  # the cross's arm edges
_OUTLINES = {
    "square": ((0, 0), (1, 0), (1, 1), (0, 1)),
    "triangle": ((0.5, 0), (1, 1), (0, 1)),
    "diamond": ((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
    "cross": (
        (_A, 0), (_B, 0), (_B, _A), (1, _A), (1, _B), (_B, _B),
        (_B, 1), (_A, 1), (_A, _B), (0, _B), (0, _A), (_A, _A),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ShapeObject:
    """Ground truth of one object; ``bbox`` is (x0, y0, x1, y1) in normalised coordinates."""

    shape: str
    colour: str
    size: str
    position: str
    bbox: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        return _box_center(self.bbox)

    def pixel_bbox(self, image_size: int) -> tuple[int, int, int, int]:
        """The box in pixels of an ``image_size`` rendering (x1, y1 exclusive)."""
        x0, y0, x1, y1 = self.bbox
        return (
            int(x0 * image_size),
            int(y0 * image_size),
            min(image_size, int(x1 * image_size + 0.999)),
            min(image_size, int(y1 * image_size + 0.999)),
        )


@dataclass(frozen=True)
class Scene:
    """One item's ground truth: its objects and every caption that describes them."""

    objects: tuple[ShapeObject, ...]
    captions: tuple[str, ...]


def _box_center(box: tuple[float, ...]) -> tuple[float, float]:
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2


def position_name(x: float, y: float) -> str:
    """Name of the ninth of the image a point falls in: "top left", "center", "bottom", ..."""
    column = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    return " ".join(word for word in (row, column) if word) or "center"


def holds(a: ShapeObject, relation: str, b: ShapeObject) -> bool:
    """Whether ``a`` is entirely ``relation`` ``b`` (e.g. a's box ends before b's begins)."""
    return _gaps(a, b)[relation] > 0


def spatial_relation(a: ShapeObject, b: ShapeObject) -> str:
    """The relation of ``a`` to ``b`` along the axis that separates them most widely."""
    gaps = _gaps(a, b)
    relation = max(gaps, key=gaps.get)
    if gaps[relation] <= 0:
        raise ValueError(f"objects overlap, no clear relation: {a} and {b}")
    return relation


def _gaps(a: ShapeObject, b: ShapeObject) -> dict[str, float]:
    """Signed empty space between the boxes for each relation of a to b (> 0: holds)."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return {"left of": bx0 - ax1, "right of": ax0 - bx1, "above": by0 - ay1, "below": ay0 - by1}


def _center_side(a: ShapeObject, relation: str, b: ShapeObject) -> bool:
    """Whether a's centre lies on the ``relation`` side of b's centre (a looser test than holds)."""
    (ax, ay), (bx, by) = a.center, b.center
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


# --- scene sampling -------------------------------------------------------------------------


def sample_scene(rng: random.Random, num_objects: int) -> Scene:
    """Objects with distinct (shape, colour) pairs, placed without overlap, and their captions.

    Distinct pairs make "the <colour> <shape>" a unique reference in every caption and question.
    """
    pairs = rng.sample([(shape, colour) for shape in SHAPES for colour in COLOURS], num_objects)
    sizes = [rng.choice(SIZES) for _ in pairs]
    boxes = _place_boxes(rng, [_HALF_EXTENT[size] for size in sizes])
    objects = tuple(
        ShapeObject(shape, colour, size, position_name(*_box_center(box)), box)
        for (shape, colour), size, box in zip(pairs, sizes, boxes)
    )
    return Scene(objects, _captions(objects, rng))


def _place_boxes(rng: random.Random, half_extents: list[float]) -> list[tuple[float, ...]]:
    """Non-overlapping square boxes by rejection sampling, restarting when a layout jams."""
    for _ in range(_LAYOUT_RESTARTS):
        boxes = _try_layout(rng, half_extents)
        if boxes is not None:
            return boxes
    raise RuntimeError(f"could not place objects of half-extents {half_extents} without overlap")


def _try_layout(rng: random.Random, half_extents: list[float]) -> list[tuple[float, ...]] | None:
    boxes: list[tuple[float, ...]] = []
    for half in half_extents:
        low, high = half + _GAP / 2, 1 - half - _GAP / 2
        for _ in range(_PLACEMENT_TRIES):
            x, y = rng.uniform(low, high), rng.uniform(low, high)
            box = (x - half, y - half, x + half, y + half)
            if all(_apart(box, other) for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _apart(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Boxes separated by at least _GAP along some axis."""
    return a[2] + _GAP <= b[0] or b[2] + _GAP <= a[0] or a[3] + _GAP <= b[1] or b[3] + _GAP <= a[1]


# --- language -------------------------------------------------------------------------------


def _article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _noun(obj: ShapeObject, *, with_size: bool) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"


def _position_phrase(position: str) -> str:
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def _listing(items: list[str]) -> str:
    """ "x", "x and y", "x, y and z"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _relation_clauses(objects: tuple[ShapeObject, ...], *, with_size: bool, reverse: bool) -> str:
    """Pair consecutive objects by their relation; an odd one out gets its position instead."""
    clauses = []
    for i in range(0, len(objects) - 1, 2):
        a, b = (objects[i + 1], objects[i]) if reverse else (objects[i], objects[i + 1])
        relation = _RELATION_PHRASES[spatial_relation(a, b)]
        clauses.append(
            f"{_article(_noun(a, with_size=with_size))} {relation} "
            f"{_article(_noun(b, with_size=with_size))}"
        )
    if len(objects) % 2:
        last = objects[-1]
        clauses.append(
            f"{_article(_noun(last, with_size=with_size))} {_position_phrase(last.position)}"
        )
    return ", and ".join(clauses)


def _captions(objects: tuple[ShapeObject, ...], rng: random.Random) -> tuple[str, ...]:
    """Several differently phrased captions; each names every object's colour and shape."""
    full = [_article(_noun(o, with_size=True)) for o in objects]
    placed = [
        f"{_article(_noun(o, with_size=False))} {_position_phrase(o.position)}" for o in objects
    ]
    frame = rng.choice(_FRAMES)
    if len(objects) == 1:
        obj = objects[0]
        return (
            full[0],
            f"{full[0]} {_position_phrase(obj.position)}",
            f"there is {placed[0]}",
            f"{frame} {full[0]} on a plain background",
            f"a single {_noun(obj, with_size=False)} {_position_phrase(obj.position)}",
        )
    count = NUMBER_WORDS[len(objects) - 1]
    return (
        f"{count} objects: {_listing(full)}",
        f"there are {count} shapes: {_listing(placed)}",
        _relation_clauses(objects, with_size=True, reverse=False),
        _relation_clauses(objects, with_size=False, reverse=True),
        f"{frame} {_listing(full)}",
    )


def scene_questions(objects: tuple[ShapeObject, ...], rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) pairs answerable from the image alone; answers are in ANSWER_VOCAB.

    Only unambiguous questions are asked: references are unique in the scene, and
    "what is <relation> X" is asked only when exactly one object is on that side of X.
    """
    pairs = [("how many objects are there?", NUMBER_WORDS[len(objects) - 1])]
    pairs += _existence_questions(objects, rng)
    for obj in objects:
        pairs += _attribute_questions(obj, objects)
    pairs += _relation_questions(objects, rng)
    return pairs


def _existence_questions(objects, rng: random.Random) -> list[tuple[str, str]]:
    present_shapes = sorted({o.shape for o in objects})
    absent_shapes = [s for s in SHAPES if s not in present_shapes]  # MAX_OBJECTS < len(SHAPES)
    present = {(o.colour, o.shape) for o in objects}
    absent = [(c, s) for s in SHAPES for c in COLOURS if (c, s) not in present]
    real = rng.choice(objects)
    fake_colour, fake_shape = rng.choice(absent)
    return [
        (f"is there {_article(rng.choice(present_shapes))}?", "yes"),
        (f"is there {_article(rng.choice(absent_shapes))}?", "no"),
        (f"is there {_article(_noun(real, with_size=False))}?", "yes"),
        (f"is there {_article(f'{fake_colour} {fake_shape}')}?", "no"),
    ]


def _attribute_questions(obj: ShapeObject, objects) -> list[tuple[str, str]]:
    name = f"the {obj.colour} {obj.shape}"
    pairs = [(f"what size is {name}?", obj.size), (f"where is {name}?", obj.position)]
    if sum(o.shape == obj.shape for o in objects) == 1:
        pairs.append((f"what colour is the {obj.shape}?", obj.colour))
    elif sum(o.shape == obj.shape and o.size == obj.size for o in objects) == 1:
        pairs.append((f"what colour is the {obj.size} {obj.shape}?", obj.colour))
    if sum(o.colour == obj.colour for o in objects) == 1:
        pairs.append((f"what shape is the {obj.colour} object?", obj.shape))
    return pairs


def _relation_questions(objects, rng: random.Random) -> list[tuple[str, str]]:
    pairs = []
    for a, b in permutations(objects, 2):
        relation, answer = spatial_relation(a, b), "yes"
        if rng.random() < 0.5:
            relation, answer = _OPPOSITE[relation], "no"
        question = (
            f"is the {_noun(a, with_size=False)} {_RELATION_PHRASES[relation]} "
            f"the {_noun(b, with_size=False)}?"
        )
        pairs.append((question, answer))
    for b in objects:
        for relation in RELATIONS:
            side = [o for o in objects if o is not b and _center_side(o, relation, b)]
            if len(side) == 1 and holds(side[0], relation, b):
                attribute = rng.choice(("shape", "colour"))
                question = (
                    f"what {attribute} is the object {_RELATION_PHRASES[relation]} "
                    f"the {_noun(b, with_size=False)}?"
                )
                pairs.append((question, getattr(side[0], attribute)))
    return pairs


# --- rendering ------------------------------------------------------------------------------


def _draw(objects: tuple[ShapeObject, ...], canvas: Image.Image, fill_of) -> None:
    """Draw each object on ``canvas`` with the fill ``fill_of(object)``."""
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        x0, y0, x1, y1 = (v * canvas.width for v in obj.bbox)
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill_of(obj))
        else:
            width, height = x1 - x0, y1 - y0
            draw.polygon(
                [(x0 + u * width, y0 + v * height) for u, v in _OUTLINES[obj.shape]], fill=fill_of(obj)
            )


def render(objects: tuple[ShapeObject, ...], image_size: int) -> Image.Image:
    """Draw the objects on a plain background; supersampled for smooth edges."""
    canvas_size = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (canvas_size, canvas_size), BACKGROUND)
    _draw(objects, image, lambda obj: COLOURS[obj.colour])
    return image.reduce(_SUPERSAMPLE)


def render_semantic_map(objects: tuple[ShapeObject, ...], image_size: int) -> torch.Tensor:
    """(image_size, image_size) int64 class of every pixel: ``SEMANTIC_CLASSES.index``, i.e. 0 for
    background and 1 + ``SHAPES.index`` inside an object. Drawn with ``render``'s geometry and
    supersampling; a pixel takes the class at its block's centre (labels cannot be averaged)."""
    canvas_size = image_size * _SUPERSAMPLE
    labels = Image.new("L", (canvas_size, canvas_size), 0)
    _draw(objects, labels, lambda obj: SEMANTIC_CLASSES.index(obj.shape))
    labels = labels.resize((image_size, image_size), Image.NEAREST)
    return torch.frombuffer(bytearray(labels.tobytes()), dtype=torch.uint8).view(image_size, image_size).long()


# --- dataset --------------------------------------------------------------------------------


class ShapesDataset(CaptionedDataset):
    """Procedural captioned images of 1-4 coloured shapes, with exact ground truth.

    ``dataset[i]`` -> {"image": (3, S, S) float in [-1, 1], "caption": str, "index": i};
    ``scene(i)`` gives the objects (shape, colour, size, position, bbox) and all captions,
    ``vqa(i)`` question/answer lists. Different ``split`` or ``seed`` values give
    independent scenes, so train and test never share an image.
    """

    def __init__(
        self,
        size: int = 10_000,
        image_size: int = 64,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 3,
        *,
        split: str = "train",
        caption_mode: str = "random",
    ):
        super().__init__(image_size=image_size, caption_mode=caption_mode, seed=seed)
        check_positive("size", size)
        check_choice("split", split, SPLITS)
        if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
                f"got min_objects={min_objects}, max_objects={max_objects}"
            )
        self.size = size
        self.split = split
        self.min_objects = min_objects
        self.max_objects = max_objects

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int, purpose: str) -> random.Random:
        """The private RNG of one item (string seeds hash with SHA-512: stable everywhere)."""
        return random.Random(f"lgvq.shapes/{self.split}/{self.seed}/{index}/{purpose}")

    def scene(self, index: int) -> Scene:
        index = self.check_index(index)
        rng = self._rng(index, "scene")
        return sample_scene(rng, rng.randint(self.min_objects, self.max_objects))

    def captions(self, index: int) -> tuple[str, ...]:
        return self.scene(index).captions

    def semantic_map(self, index: int) -> torch.Tensor:
        """(image_size, image_size) int64 class map of item ``index`` (see ``SEMANTIC_CLASSES``)."""
        return render_semantic_map(self.scene(self.check_index(index)).objects, self.image_size)

    def vqa(self, index: int) -> tuple[list[str], list[str]]:
        """Questions about item ``index`` and their answers (each in ANSWER_VOCAB)."""
        pairs = scene_questions(self.scene(index).objects, self._rng(index, "vqa"))
        return [q for q, _ in pairs], [a for _, a in pairs]

    def _image_and_captions(self, index: int) -> tuple[torch.Tensor, tuple[str, ...]]:
        scene = self.scene(index)
        return pil_to_tensor(render(scene.objects, self.image_size)), scene.captions
