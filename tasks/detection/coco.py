"""Checks of a COCO instances file and its image folder, before any training starts.

A malformed annotation file otherwise fails deep inside a data loader worker, hours into a run,
with a KeyError that names neither the file nor the annotation. ``check_coco`` reads the JSON
once and reports the first problem with the file, the image or annotation id and what was
expected.

Boxes with a non-positive width or height exist in real data sets (a handful in COCO 2017 train
after rounding); they are not errors: ``COCOSummary.degenerate_annotation_ids`` counts them and
the data loaders drop them.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbones.errors import InputError, MissingFileError

__all__ = ["COCOFormatError", "COCOSummary", "check_coco", "is_degenerate_box", "load_coco"]

REQUIRED_KEYS = ("images", "annotations", "categories")


class COCOFormatError(InputError):
    """A COCO instances file or its image folder does not match the COCO format."""


@dataclass
class COCOSummary:
    """What ``check_coco`` found in a valid COCO instances file.

    Args:
        json_file (Path): the annotation file.
        num_images (int): images listed.
        num_annotations (int): annotations listed, degenerate ones included.
        categories (dict[int, str]): category id -> name, in file order.
        degenerate_annotation_ids (list[int]): annotations whose box has a non-positive width or
            height; the loaders skip them.
    """

    json_file: Path
    num_images: int
    num_annotations: int
    categories: dict[int, str]
    degenerate_annotation_ids: list[int] = field(default_factory=list)

    def describe(self) -> str:
        """One line: file, images, annotations, categories and skipped boxes."""
        return (
            f"{self.json_file}: {self.num_images} images, {self.num_annotations} annotations, "
            f"{len(self.categories)} categories, "
            f"{len(self.degenerate_annotation_ids)} degenerate boxes skipped"
        )


def is_degenerate_box(bbox: Any) -> bool:
    """True for a COCO ``[x, y, w, h]`` box with a non-positive width or height."""
    return not (bbox[2] > 0 and bbox[3] > 0)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def load_coco(json_file: str | Path) -> dict[str, Any]:
    """Parse a COCO instances file, checking only its top-level structure."""
    json_file = Path(json_file)
    if not json_file.is_file():
        raise MissingFileError(f"COCO annotation file {json_file} does not exist")
    try:
        document = json.loads(json_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise COCOFormatError(f"{json_file}: not valid JSON ({err})") from err
    if not isinstance(document, dict):
        raise COCOFormatError(
            f"{json_file}: expected a JSON object with keys {list(REQUIRED_KEYS)}, "
            f"got {type(document).__name__}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise COCOFormatError(
            f"{json_file}: missing top-level key(s) {missing}; a COCO instances file has "
            f"{list(REQUIRED_KEYS)} (found {sorted(document)})"
        )
    for key in REQUIRED_KEYS:
        if not isinstance(document[key], list):
            raise COCOFormatError(
                f"{json_file}: '{key}' must be a list, got {type(document[key]).__name__}"
            )
    return document


def _check_categories(json_file: Path, categories: list[Any]) -> dict[int, str]:
    names: dict[int, str] = {}
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise COCOFormatError(
                f"{json_file}: categories[{index}] must have 'id' and 'name', got {category!r}"
            )
        names[int(category["id"])] = str(category["name"])
    if not names:
        raise COCOFormatError(f"{json_file}: 'categories' is empty")
    return names


def _check_images(json_file: Path, images: list[Any], image_root: Path) -> set[int]:
    ids: set[int] = set()
    for index, image in enumerate(images):
        keys = ("id", "file_name", "width", "height")
        if not isinstance(image, dict) or any(key not in image for key in keys):
            raise COCOFormatError(
                f"{json_file}: images[{index}] must have {list(keys)}, got {image!r}"
            )
        path = image_root / image["file_name"]
        if not path.is_file():
            raise COCOFormatError(
                f"{json_file}: image id {image['id']}: file {path} does not exist "
                f"(file_name {image['file_name']!r} under image root {image_root})"
            )
        ids.add(image["id"])
    return ids


def _check_annotation(
    json_file: Path,
    index: int,
    annotation: Any,
    image_ids: set[int],
    categories: dict[int, str],
) -> None:
    keys = ("id", "image_id", "category_id", "bbox")
    if not isinstance(annotation, dict) or any(key not in annotation for key in keys):
        found = sorted(annotation) if isinstance(annotation, dict) else annotation
        raise COCOFormatError(
            f"{json_file}: annotations[{index}] (id {_get_id(annotation)}) must have "
            f"{list(keys)}, got {found!r}"
        )
    ann_id = annotation["id"]
    bbox = annotation["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise COCOFormatError(
            f"{json_file}: annotation id {ann_id}: bbox must be 4 numbers [x, y, width, height], "
            f"got {bbox!r}"
        )
    if annotation["image_id"] not in image_ids:
        raise COCOFormatError(
            f"{json_file}: annotation id {ann_id}: image_id {annotation['image_id']!r} is not in "
            "'images'"
        )
    if annotation["category_id"] not in categories:
        raise COCOFormatError(
            f"{json_file}: annotation id {ann_id}: category_id {annotation['category_id']!r} is "
            f"not in 'categories' (valid ids: {sorted(categories)})"
        )


def _get_id(annotation: Any) -> Any:
    return annotation.get("id", "?") if isinstance(annotation, dict) else "?"


def check_coco(
    json_file: str | Path, image_root: str | Path, document: dict[str, Any] | None = None
) -> COCOSummary:
    """Validate a COCO instances file against the COCO format and its image folder.

    Checks: the file is a JSON object with ``images``, ``annotations`` and ``categories``; each
    image has ``id``, ``file_name``, ``width`` and ``height`` and its file exists under
    ``image_root``; each annotation has ``id``, ``image_id``, ``category_id`` and a ``bbox`` of 4
    numbers, a known image id and a category id listed in ``categories``. Boxes with a
    non-positive width or height are counted, not rejected.

    Args:
        json_file (str | Path): the instances JSON, e.g. ``annotations/instances_val2017.json``.
        image_root (str | Path): the folder the images' ``file_name`` is relative to.
        document (dict | None): the file's contents if already read by :func:`load_coco`
            (COCO's train JSON takes seconds to parse); None reads ``json_file``.

    Returns:
        A ``COCOSummary``.

    Raises:
        FileNotFoundError: the JSON file or the image folder does not exist.
        COCOFormatError: the first problem found, naming the file and the image or annotation id.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    if document is None:
        document = load_coco(json_file)
    if not image_root.is_dir():
        raise MissingFileError(f"image folder {image_root} (for {json_file}) does not exist")
    categories = _check_categories(json_file, document["categories"])
    image_ids = _check_images(json_file, document["images"], image_root)
    degenerate: list[int] = []
    for index, annotation in enumerate(document["annotations"]):
        _check_annotation(json_file, index, annotation, image_ids, categories)
        if is_degenerate_box(annotation["bbox"]):
            degenerate.append(annotation["id"])
    return COCOSummary(
        json_file=json_file,
        num_images=len(document["images"]),
        num_annotations=len(document["annotations"]),
        categories=categories,
        degenerate_annotation_ids=degenerate,
    )
