"""A tiny COCO dataset in the real on-disk format, for detection tests.

Layout under ``root``; detectron2's ``$DETECTRON2_DATASETS/coco`` layout when root is
``.../coco``::

    <split>2017/000000000001.jpg ...
    annotations/instances_<split>2017.json
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["CATEGORY_COLOURS", "write_tiny_coco"]

# Category k (0-based) is drawn in colour k; the ids are non-contiguous (1, 3, 5, ...) so a
# missing id <-> label mapping shows up as wrong labels.
CATEGORY_COLOURS = [(230, 30, 30), (30, 200, 30), (30, 60, 230), (240, 220, 20), (200, 30, 200)]
BACKGROUND = (128, 128, 128)
SHAPES = ("rectangle", "ellipse")
# Vertices of an ellipse's polygon: a multiple of 4 puts one on each side of its box.
ELLIPSE_VERTICES = 16


def _category_id(index: int) -> int:
    return 2 * index + 1


def _random_box(rng: random.Random, width: int, height: int) -> list[float]:
    """An axis-aligned box of 1/4 to 1/2 of the image side, fully inside the image."""
    box_w = rng.randint(width // 4, width // 2)
    box_h = rng.randint(height // 4, height // 2)
    x = rng.randint(0, width - box_w)
    y = rng.randint(0, height - box_h)
    return [float(x), float(y), float(box_w), float(box_h)]


def _outline(shape: str, x: float, y: float, w: float, h: float) -> list[float]:
    """The polygon of a shape inside box (x, y, w, h), as COCO's flat [x1, y1, x2, y2, ...]."""
    if shape == "rectangle":
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    points = []
    for k in range(ELLIPSE_VERTICES):
        angle = 2 * math.pi * k / ELLIPSE_VERTICES
        points += [round(x + w / 2 * (1 + math.cos(angle)), 2),
                   round(y + h / 2 * (1 + math.sin(angle)), 2)]
    return points


def _polygon_area(flat: list[float]) -> float:
    xs, ys = flat[0::2], flat[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def write_tiny_coco(
    root: Path,
    *,
    num_images: int = 4,
    size: tuple[int, int] = (96, 128),
    num_categories: int = 2,
    seed: int = 0,
    split: str = "train",
    shape: str = "rectangle",
) -> tuple[Path, Path]:
    """Write ``num_images`` JPEGs with coloured shapes and their COCO instances JSON.

    Each image holds one or two filled shapes; the category is the colour. Every object has a
    polygon segmentation (its outline), ``iscrowd`` 0, its box and its area (the polygon's for
    ellipses, so mask AP and box AP differ).

    Args:
        root (Path): dataset root; created if missing.
        num_images (int): number of images (4).
        size (tuple[int, int]): image (height, width) ((96, 128)).
        num_categories (int): categories, at most ``len(CATEGORY_COLOURS)`` (2); ids 1, 3, 5, ...
        seed (int): seed of the box positions (0).
        split (str): "train", "val", ...: the image folder is ``<split>2017`` ("train").
        shape (str): "rectangle" (the box itself) or "ellipse" (a 16-gon inside the box).

    Returns:
        (json_path, image_dir).
    """
    if not 1 <= num_categories <= len(CATEGORY_COLOURS):
        raise ValueError(f"num_categories must be 1..{len(CATEGORY_COLOURS)}, got {num_categories}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    root = Path(root)
    image_dir = root / f"{split}2017"
    json_path = root / "annotations" / f"instances_{split}2017.json"
    image_dir.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    height, width = size
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        file_name = f"{image_id:012d}.jpg"
        image = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 2)):
            index = rng.randrange(num_categories)
            x, y, w, h = _random_box(rng, width, height)
            outline = _outline(shape, x, y, w, h)
            if shape == "rectangle":
                # PIL's rectangle includes its end pixel: x + w - 1 keeps the drawn box w wide.
                draw.rectangle([x, y, x + w - 1, y + h - 1], fill=CATEGORY_COLOURS[index])
            else:
                draw.polygon(outline, fill=CATEGORY_COLOURS[index])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": _category_id(index),
                    "bbox": [x, y, w, h],
                    "area": w * h if shape == "rectangle" else _polygon_area(outline),
                    "iscrowd": 0,
                    "segmentation": [outline],
                }
            )
        image.save(image_dir / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    categories = [
        {"id": _category_id(i), "name": f"colour{i}", "supercategory": "shape"}
        for i in range(num_categories)
    ]
    document = {
        "info": {"description": "tiny synthetic COCO for tests", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    json_path.write_text(json.dumps(document))
    return json_path, image_dir
