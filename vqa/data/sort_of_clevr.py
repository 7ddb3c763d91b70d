"""Sort-of-CLEVR generator, written from the description in Santoro et al. 2017.

Santoro et al., "A simple neural network module for relational reasoning"
(NeurIPS 2017), Sort-of-CLEVR: each image holds 6 objects of 6 distinct
colours (red, green, blue, orange, gray, yellow), each a circle or a square,
on a white background. Non-relational questions ask for the shape of the
<colour> object, whether it is on the left, and whether it is at the top.
Relational questions ask for the shape of the object closest to and farthest
from the <colour> object, and how many objects share its shape.

Scenes are sampled in unit coordinates (0 at the left and top edges, 1 at the
right and bottom edges) and only then drawn at ``image_size`` pixels, so the
same seed gives the same scenes, questions and answers at every image size.
The output follows the CLEVR v1.0 layout, so ``vqa.data.read_clevr`` reads it:

    out_dir/questions/CLEVR_<split>_questions.json
    out_dir/scenes/CLEVR_<split>_scenes.json
    out_dir/images/<split>/CLEVR_<split>_<image_index:06d>.png
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "QUESTION_FAMILIES",
    "RELATIONAL_FAMILIES",
    "question_group",
    "sample_scene",
    "answer_question",
    "generate",
    "generate_once",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "orange": (255, 156, 0),
    "gray": (128, 128, 128),
    "yellow": (255, 255, 0),
}
SHAPES = ("circle", "square")
QUESTION_FAMILIES = ("nonrel_shape", "nonrel_left", "nonrel_top", "rel_closest", "rel_farthest", "rel_count")
RELATIONAL_FAMILIES = frozenset({"rel_closest", "rel_farthest", "rel_count"})
_TEMPLATES = {
    "nonrel_shape": "What is the shape of the {color} object?",
    "nonrel_left": "Is the {color} object on the left side of the image?",
    "nonrel_top": "Is the {color} object in the top half of the image?",
    "rel_closest": "What is the shape of the object closest to the {color} object?",
    "rel_farthest": "What is the shape of the object farthest from the {color} object?",
    "rel_count": "How many objects have the same shape as the {color} object?",
}
_SPLITS = ("train", "val", "test")
_BACKGROUND = (255, 255, 255)
# Object centres are at least this many object sizes apart: the diagonal of
# a square (sqrt 2) plus a gap of 0.1, so no two shapes touch.
_MIN_CENTER_DISTANCE = math.sqrt(2) + 0.1
_MAX_PLACEMENT_TRIES = 10_000


def question_group(question_family: Optional[str]) -> Optional[str]:
    """Map a question family to ``"relational"`` or ``"non-relational"`` (None for other values).

    Use as ``vqa.metrics.evaluate_results(..., group_of=question_group)``.
    """
    if question_family in RELATIONAL_FAMILIES:
        return "relational"
    if question_family in QUESTION_FAMILIES:
        return "non-relational"
    return None


def sample_scene(rng: np.random.Generator, object_size: float) -> list[dict[str, Any]]:
    """Place one object of each colour at random, non-overlapping positions.

    Args:
        rng: Random generator; the only source of randomness.
        object_size: Side of a square and diameter of a circle, as a fraction
            of the image side.

    Returns:
        One dict per colour, in ``COLORS`` order, with ``color``, ``shape``
        and the centre ``x``, ``y`` in unit coordinates.

    Raises:
        ValueError: If six objects of this size cannot be placed.
    """
    half = object_size / 2
    min_distance = _MIN_CENTER_DISTANCE * object_size
    centers: list[tuple[float, float]] = []
    tries = 0
    while len(centers) < len(COLORS):
        tries += 1
        if tries > _MAX_PLACEMENT_TRIES:
            raise ValueError(f"cannot place {len(COLORS)} objects of object_size={object_size}; use a smaller size")
        x, y = rng.uniform(half, 1 - half, size=2)
        if all(math.hypot(x - cx, y - cy) >= min_distance for cx, cy in centers):
            centers.append((float(x), float(y)))
    shapes = rng.integers(0, len(SHAPES), size=len(COLORS))
    return [
        {"color": color, "shape": SHAPES[int(shape)], "x": x, "y": y}
        for color, shape, (x, y) in zip(COLORS, shapes, centers)
    ]


def answer_question(objects: list[dict[str, Any]], family: str, color: str) -> str:
    """Answer a question of ``family`` about the object of ``color`` in a scene from ``sample_scene``.

    "Left" means a centre with x < 0.5 and "top" a centre with y < 0.5.
    Distances are between centres. Counts include the object itself.
    """
    subject = next(o for o in objects if o["color"] == color)
    others = [o for o in objects if o is not subject]

    def distance(other: dict[str, Any]) -> float:
        return math.hypot(other["x"] - subject["x"], other["y"] - subject["y"])

    if family == "nonrel_shape":
        return subject["shape"]
    if family == "nonrel_left":
        return "yes" if subject["x"] < 0.5 else "no"
    if family == "nonrel_top":
        return "yes" if subject["y"] < 0.5 else "no"
    if family == "rel_closest":
        return min(others, key=distance)["shape"]
    if family == "rel_farthest":
        return max(others, key=distance)["shape"]
    if family == "rel_count":
        return str(sum(1 for o in objects if o["shape"] == subject["shape"]))
    raise ValueError(f"unknown question family {family!r}; valid families: {', '.join(QUESTION_FAMILIES)}")


def _draw(objects: list[dict[str, Any]], image_size: int, object_size: float) -> Image.Image:
    image = Image.new("RGB", (image_size, image_size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    half = object_size * image_size / 2
    for obj in objects:
        cx, cy = obj["x"] * image_size, obj["y"] * image_size
        box = [cx - half, cy - half, cx + half, cy + half]
        if obj["shape"] == "circle":
            draw.ellipse(box, fill=COLORS[obj["color"]])
        else:
            draw.rectangle(box, fill=COLORS[obj["color"]])
    return image


def _sample_questions(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    # Families take turns in a shuffled order and each family picks distinct
    # colours, so families stay balanced and no question repeats in an image.
    family_order = [QUESTION_FAMILIES[i] for i in rng.permutation(len(QUESTION_FAMILIES))]
    colors = list(COLORS)
    colors_left = {family: [colors[i] for i in rng.permutation(len(colors))] for family in family_order}
    return [(family_order[i % len(family_order)], colors_left[family_order[i % len(family_order)]].pop())
            for i in range(count)]


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, sort_keys=True)


def generate(
    out_dir: Union[str, os.PathLike],
    image_size: int = 75,
    object_size: float = 10 / 75,
    num_images: Optional[Mapping[str, int]] = None,
    questions_per_image: int = 12,
    seed: int = 0,
) -> dict[str, int]:
    """Write a Sort-of-CLEVR data set in the CLEVR v1.0 layout.

    Each split draws from its own random stream, derived from ``seed`` and
    the split name, so changing the size of one split leaves the others
    unchanged. The same arguments write the same bytes.

    Args:
        out_dir: Output folder (created; existing files of the same names are overwritten).
        image_size: Side of the square images in pixels.
        object_size: Side of a square and diameter of a circle, as a fraction
            of ``image_size`` (10/75: 10-pixel objects in 75-pixel images).
        num_images: Images per split, keys among ``"train"``, ``"val"``,
            ``"test"``; the default is 9000 / 500 / 500.
        questions_per_image: Questions per image, 1 to 36 (6 families x 6
            colours); families are balanced within each image.
        seed: Base random seed.

    Returns:
        The number of questions written per split.

    Raises:
        ValueError: If an argument is out of range or a split name is unknown.
    """
    num_images = dict(num_images) if num_images is not None else {"train": 9000, "val": 500, "test": 500}
    unknown = set(num_images) - set(_SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; valid splits: {', '.join(_SPLITS)}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
    if not 0 < object_size < 0.3:
        raise ValueError(f"object_size is a fraction of the image side in (0, 0.3), got {object_size}")
    max_questions = len(QUESTION_FAMILIES) * len(COLORS)
    if not 1 <= questions_per_image <= max_questions:
        raise ValueError(f"questions_per_image must be in 1..{max_questions}, got {questions_per_image}")

    out_dir = Path(out_dir)
    (out_dir / "questions").mkdir(parents=True, exist_ok=True)
    (out_dir / "scenes").mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in num_images.items():
        if count < 0:
            raise ValueError(f"num_images[{split!r}] must be >= 0, got {count}")
        rng = np.random.default_rng([seed, _SPLITS.index(split)])
        image_dir = out_dir / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "generator": "vqa.data.sort_of_clevr",
            "split": split,
            "seed": seed,
            "image_size": image_size,
            "object_size": object_size,
            "questions_per_image": questions_per_image,
        }
        scenes, questions = [], []
        for image_index in range(count):
            objects = sample_scene(rng, object_size)
            filename = f"CLEVR_{split}_{image_index:06d}.png"
            _draw(objects, image_size, object_size).save(image_dir / filename, format="PNG")
            scenes.append({"image_index": image_index, "image_filename": filename, "split": split, "objects": objects})
            for family, color in _sample_questions(rng, questions_per_image):
                questions.append({
                    "image_index": image_index,
                    "image_filename": filename,
                    "split": split,
                    "question_index": len(questions),
                    "question": _TEMPLATES[family].format(color=color),
                    "answer": answer_question(objects, family, color),
                    "question_family": family,
                    "question_family_index": QUESTION_FAMILIES.index(family),
                    "color": color,
                })
        _write_json(out_dir / "scenes" / f"CLEVR_{split}_scenes.json", {"info": info, "scenes": scenes})
        _write_json(out_dir / "questions" / f"CLEVR_{split}_questions.json", {"info": info, "questions": questions})
        written[split] = len(questions)
    return written


def generate_once(out_dir: Union[str, os.PathLike], stamp_name: str = "generated.json", **settings: Any) -> bool:
    """Call ``generate(out_dir, **settings)`` unless ``out_dir`` already contains a copy written with the same settings.

    The settings are stored in ``out_dir/stamp_name`` after a successful write. A folder with a
    different or missing stamp is written again, so a changed image count or size never reuses
    stale files.

    Returns:
        True if the data set was written, False if the existing copy was kept.
    """
    out_dir = Path(out_dir)
    stamp = out_dir / stamp_name
    # Compare in the form the stamp file stores, where tuples become lists.
    recorded = json.loads(json.dumps(settings))
    if stamp.is_file() and json.loads(stamp.read_text()) == recorded:
        return False
    generate(out_dir, **settings)
    stamp.write_text(json.dumps(recorded, indent=2) + "\n")
    return True
