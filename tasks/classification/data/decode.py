"""Reduced-size JPEG decoding for the crop transforms: a large image is never fully decoded.

A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size for little more than the cost of its
entropy decoding (libjpeg-turbo's DCT scaling, what PIL's ``Image.draft`` uses). The training
and evaluation crops of the Places365 / ImageNet recipes throw most of a large image away, so
each image is handled in three steps:

1. **Plan on the original geometry.** The size is read from the JPEG header (no decode) and
   torchvision's own ``RandomResizedCrop`` / ``Resize`` + ``RandomCrop`` / ``CenterCrop`` and
   ``RandomHorizontalFlip`` choose the crop box and the flip on that size, drawing from the same
   random stream in the same order as the plain ``transforms.v2`` pipeline: for the same seed
   the boxes and flips are those of the plain path, draw for draw.
2. **Decode at the largest DCT down-scale that keeps the crop at least as large as its output**
   (for Resize-then-crop recipes: the image at least as large as the resize target), with
   ``simplejpeg`` (libjpeg-turbo, accurate DCT and fancy upsampling: at full size the pixels
   are PIL's, bit for bit). PIL (with ``draft`` for JPEGs) is the fallback for other files and
   for CMYK JPEGs.
3. **Render** as torchvision does: antialiased bilinear resize (``torch.nn.functional.interpolate``,
   which torchvision's tensor ``Resize`` calls), crop, flip. A crop box of a scaled image has
   fractional corners: the same kernel resizes it from a whole row and column a few output steps
   before the box (see ``_resize_box``), PIL's ``resize(box=...)`` near the image's edges.

Measured on this project's CPU (``benchmarks/input_pipeline.py``), ``simplejpeg`` decodes the
benchmark's photographs 1.4-1.7x faster than PIL (which copies through its own image buffer) and
faster than ``torchvision.io.decode_jpeg`` (which has no scaled decode on the CPU). The result
stays within a few grey levels of decoding at full size, cropping and resizing
(``tests/test_decode.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from backbones.constants import IMAGENET_MEAN, IMAGENET_STD
from backbones.errors import InputError, MissingFileError

JPEG_MAGIC = b"\xff\xd8\xff"
DCT_SCALES = (8, 4, 2)  # libjpeg-turbo's fast scaled IDCTs (M/8 for other M are slower than 1/1)
# JPEG colour spaces simplejpeg converts to RGB; CMYK / YCCK JPEGs go through PIL.
_SIMPLEJPEG_SPACES = ("YCbCr", "Gray", "RGB")
# A fractional crop box is resized by torch's kernel from a whole row and column at most this far
# (in pixels of the decoded image, so at most as far in output pixels) from the box's edges, else
# by PIL (see _resize_box); up to this many leading outputs are computed and dropped to get there.
_BOX_SHIFT_TOLERANCE = 0.02
_MAX_SKIPPED_OUTPUTS = 64


def is_jpeg(data: bytes | memoryview) -> bool:
    """Whether ``data`` starts with a JPEG start-of-image marker."""
    return bytes(data[:3]) == JPEG_MAGIC


def image_size(data: bytes | memoryview) -> tuple[int, int]:
    """``(height, width)`` of an encoded image, from its header only (no pixel is decoded)."""
    if is_jpeg(data):
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        return height, width
    with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header
        return image.height, image.width


@dataclasses.dataclass(frozen=True)
class CropPlan:
    """torchvision's geometry for one image, chosen before it is decoded.

    Either ``resized_crop`` (``resize`` is None: the box, in original pixels, is cut out and
    resized to ``size``) or ``resize`` + ``crop`` (the whole image is resized to ``resize``,
    then the box, in resized pixels, is cut out; its size is ``size``).

    Attributes:
        top: first row of the box.
        left: first column of the box.
        height: rows of the box.
        width: columns of the box.
        size: output ``(height, width)``.
        resize: ``(height, width)`` of the whole image before the crop, or None.
        flip: mirror the output left to right.
    """

    top: int
    left: int
    height: int
    width: int
    size: tuple[int, int]
    resize: tuple[int, int] | None = None
    flip: bool = False


@functools.lru_cache(maxsize=256)
def _canvas(height: int, width: int) -> tv_tensors.BoundingBoxes:
    # An empty box list carries an image's size through torchvision's v2 transforms, so their
    # own parameter code runs on the geometry alone. Cached: datasets repeat a few sizes.
    return tv_tensors.BoundingBoxes(torch.empty(0, 4), format="XYXY", canvas_size=(height, width))


@functools.lru_cache(maxsize=1024)
def _resized_canvas(height: int, width: int, resize_size: int) -> tv_tensors.BoundingBoxes:
    """The canvas after ``v2.Resize(resize_size)``: torchvision's own rounding of the long side."""
    return v2.Resize(resize_size, antialias=True)(_canvas(height, width))


class CropSampler:
    """Plans the training or evaluation crop of an image from its size, as torchvision does.

    Training, ``"random_resized"``: ``v2.RandomResizedCrop(crop_size)`` then
    ``v2.RandomHorizontalFlip()``. Training, ``"random"``: ``v2.Resize(resize_size)``,
    ``v2.RandomCrop(crop_size)``, flip. Evaluation: ``v2.Resize(resize_size)``,
    ``v2.CenterCrop(crop_size)``. The random parameters come from the transforms' own
    ``make_params`` (torch's global generator, as in a DataLoader worker), in the same order.

    Args:
        train: the training crop (random) or the evaluation one (deterministic).
        train_crop: ``"random_resized"`` or ``"random"`` (training only).
        crop_size: side of the square output.
        resize_size: shorter side after the resize of the ``"random"`` and evaluation crops.
    """

    def __init__(self, *, train: bool, train_crop: str, crop_size: int, resize_size: int) -> None:
        self.train, self.train_crop = train, train_crop
        self.crop_size = crop_size
        self.resize_size = resize_size
        self._random_resized_crop = v2.RandomResizedCrop(crop_size, antialias=True)
        self._random_crop = v2.RandomCrop(crop_size)

    def __call__(self, height: int, width: int) -> CropPlan:
        """The plan for an image of ``height`` x ``width`` pixels."""
        canvas = _canvas(height, width)
        size = (self.crop_size, self.crop_size)
        resize = None
        if self.train and self.train_crop == "random_resized":
            box = self._random_resized_crop.make_params([canvas])
            top, left, box_size = box["top"], box["left"], (box["height"], box["width"])
        else:
            resized = _resized_canvas(height, width, self.resize_size)
            resize, box_size = tuple(resized.canvas_size), size
            if self.train:
                box = self._random_crop.make_params([resized])
                top, left = box["top"], box["left"]
            else:  # v2.CenterCrop's anchor
                top = int(round((resize[0] - self.crop_size) / 2.0))
                left = int(round((resize[1] - self.crop_size) / 2.0))
        # v2.RandomHorizontalFlip(p=0.5) applies when torch.rand(1) < p, after the crop's draws.
        flip = self.train and bool(torch.rand(1) < 0.5)
        return CropPlan(top, left, *box_size, size=size, resize=resize, flip=flip)


def dct_scale(plan: CropPlan, height: int, width: int) -> int:
    """The largest DCT down-scale (8, 4, 2 or 1) that keeps what is resized at least as large
    as the resize's output: the crop box (``resized_crop``) or the whole image (``resize``)."""
    if plan.resize is None:
        source, target = (plan.height, plan.width), plan.size
    else:
        source, target = (height, width), plan.resize
    for scale in DCT_SCALES:
        if source[0] / scale >= target[0] and source[1] / scale >= target[1]:
            return scale
    return 1


def decode_rgb(data: bytes | memoryview, *, scale: int = 1) -> np.ndarray:
    """Decode to an RGB ``[H, W, 3]`` uint8 array at 1/``scale`` of the size (rounded up).

    Args:
        data: the encoded image.
        scale: 1, 2, 4 or 8; JPEGs only (other formats are decoded at full size, scale 1).
    """
    if is_jpeg(data):
        height, width, space, _ = simplejpeg.decode_jpeg_header(data)
        if space in _SIMPLEJPEG_SPACES:
            # simplejpeg picks the smallest libjpeg-turbo scale with at least these dimensions.
            return simplejpeg.decode_jpeg(
                data,
                "RGB",
                min_height=math.ceil(height / scale),
                min_width=math.ceil(width / scale),
            )
    with Image.open(io.BytesIO(data)) as image:
        if scale > 1 and image.format == "JPEG":
            image.draft("RGB", (math.ceil(image.width / scale), math.ceil(image.height / scale)))
        return np.array(image.convert("RGB"))  # writable, for torch.from_numpy


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bilinear resize of ``[C, H, W]``, as torchvision's tensor ``Resize``."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if image.dtype == torch.uint8 and image.device.type != "cpu":
        image = image.float()  # the uint8 antialias kernel is the CPU's only
    return F.interpolate(
        _kernel_input(image), size=size, mode="bilinear", antialias=True, align_corners=False
    )[0]


def _kernel_input(image: Tensor) -> Tensor:
    """``image[None]`` laid out for torch's vectorised uint8 resize: channels-last and contiguous.

    A crop of a decoded ``[H, W, 3]`` array is channels-last but not contiguous, which sends it
    down the kernel's generic path: the copy costs less than it saves (crop, resize and flip of
    the benchmark's large images: 0.53 -> 0.41 ms), and the result is the same, bit for bit.
    """
    if image.dtype != torch.uint8 or image.device.type != "cpu":
        return image[None]
    return image[None].contiguous(memory_format=torch.channels_last)


def _resize_box(
    image: Tensor, box: tuple[float, float, float, float], size: tuple[int, int]
) -> Tensor:
    """Resize the region ``box`` = (left, top, right, bottom) of a uint8 ``[3, H, W]`` CPU image,
    in fractional pixels, with antialiased bilinear filtering (torchvision's and PIL's filter).

    A box of whole original pixels falls between pixels of an image decoded at 1/2, 1/4 or 1/8:
    rounding it to the nearest decoded pixel would shift the output by up to half a pixel, three
    times the difference the DCT scaling itself makes (mean absolute difference 3.1 against 1.2
    grey levels on this project's test photographs). torch's resize kernel (the one torchvision
    calls, 2-3x faster than PIL's here) samples output ``j`` of a region starting at row ``R`` at
    ``R + (j + 0.5) * step``, from a whole row ``R``; so the region starts at a row from which a
    whole number ``k`` of steps lands on the box's edge, and the first ``k`` outputs are dropped
    (:func:`_aligned_start`). Where no such row exists (a box within a step of the image's edge
    that does not start on it), PIL's ``resize(box=...)`` takes the fractional box as it is.
    """
    left, top, right, bottom = box
    step_y, step_x = (bottom - top) / size[0], (right - left) / size[1]
    rows, cols = _aligned_start(top, step_y), _aligned_start(left, step_x)
    if rows is None or cols is None:
        return _resize_box_pil(image, box, size)
    (y0, skip_y), (x0, skip_x) = rows, cols
    # The last output's filter reaches half a step past the box's far edge.
    y1 = min(image.shape[-2], math.ceil(bottom + 0.5 * step_y) + 1)
    x1 = min(image.shape[-1], math.ceil(right + 0.5 * step_x) + 1)
    resized = torch.ops.aten._upsample_bilinear2d_aa(
        _kernel_input(_region(image, y0, y1, x0, x1)),
        [skip_y + size[0], skip_x + size[1]],
        False,  # align_corners
        1.0 / step_y,  # the scale factors give the exact step (not the region's length / outputs)
        1.0 / step_x,
    )
    return resized[0, :, skip_y:, skip_x:]


def _aligned_start(start: float, step: float) -> tuple[int, int] | None:
    """A whole first row ``R`` and the fewest outputs ``k`` to drop with ``R + k * step`` within
    ``_BOX_SHIFT_TOLERANCE`` of ``start`` (None where there is none).

    ``R`` is the image's edge (where torch's kernel clamps its filter as PIL does), or a row a
    full filter width above ``start``: the kept outputs then read no row the region cuts off, nor
    (``R`` < 0) the padding above the image that only the dropped outputs read.
    """
    inside = start - 0.5 * step - 1  # the first row the first kept output reads, less a margin
    for skip in range(_MAX_SKIPPED_OUTPUTS):
        exact = start - skip * step
        first = round(exact)
        if abs(exact - first) > _BOX_SHIFT_TOLERANCE:
            continue
        if first == 0 or (inside >= 0 and first <= inside):
            return first, skip
    return None


def _region(image: Tensor, y0: int, y1: int, x0: int, x1: int) -> Tensor:
    """``image[:, y0:y1, x0:x1]``, zero-padded where ``y0`` or ``x0`` is negative."""
    if y0 >= 0 and x0 >= 0:
        return image[:, y0:y1, x0:x1]
    pad_y, pad_x = max(-y0, 0), max(-x0, 0)
    region = image.new_zeros((y1 - y0, x1 - x0, image.shape[0])).permute(2, 0, 1)
    region[:, pad_y:, pad_x:] = image[:, y0 + pad_y : y1, x0 + pad_x : x1]
    return region


def _resize_box_pil(
    image: Tensor, box: tuple[float, float, float, float], size: tuple[int, int]
) -> Tensor:
    """:func:`_resize_box` by PIL's ``resize(box=...)``, which takes a fractional box as it is."""
    pixels = Image.fromarray(image.permute(1, 2, 0).numpy())
    resized = pixels.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
    return torch.from_numpy(np.array(resized)).permute(2, 0, 1)


def render(image: Tensor, plan: CropPlan, *, scale: int = 1) -> Tensor:
    """Apply a plan to a decoded image: crop, resize and flip as torchvision does.

    Args:
        image: ``[3, H, W]`` (any strides, e.g. a channels-last view of ``[H, W, 3]``), decoded
            at 1/``scale`` of the size the plan was made for; uint8 on the CPU when ``scale`` > 1.
        plan: from :class:`CropSampler`.
        scale: the DCT scale of ``image``.

    Returns:
        ``[3, *plan.size]``: uint8 on the CPU, float (0-255) on other devices.
    """
    if plan.resize is not None:  # the whole image keeps its field of view at any scale
        resized = _resize(image, plan.resize)
        out = resized[:, plan.top : plan.top + plan.height, plan.left : plan.left + plan.width]
    elif scale == 1:
        box = image[:, plan.top : plan.top + plan.height, plan.left : plan.left + plan.width]
        out = _resize(box, plan.size)
    else:
        left, top = plan.left / scale, plan.top / scale
        box = (left, top, left + plan.width / scale, top + plan.height / scale)
        out = _resize_box(image, box, plan.size)
    return out.flip(-1) if plan.flip else out


class Normalize:
    """``(x / 255 - mean) / std`` of uint8 (or 0-255 float) images as one multiply-add.

    Args:
        mean: per-channel mean of pixel values scaled to [0, 1] (ImageNet's).
        std: per-channel standard deviation, same scale (ImageNet's).
    """

    def __init__(
        self,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self._constants: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, images: Tensor) -> Tensor:
        """``[..., C, H, W]`` images to normalised float32, on their device."""
        constants = self._constants.get(images.device)
        if constants is None:
            std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
            mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
            constants = self._constants[images.device] = (1.0 / (255.0 * std), -mean / std)
        scale, shift = constants
        return torch.addcmul(shift, images.float(), scale)

    def __getstate__(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "_constants": {}}  # no device tensors


class ReducedDecode:
    """Encoded image -> cropped uint8 ``[3, crop, crop]`` tensor, decoded at reduced size.

    Picklable, for DataLoader workers.

    Args:
        sampler: plans the crop from the image size.
        normalize: return ImageNet-normalised float32 instead of uint8 (None: uint8, for the
            data module to normalise on the device after the transfer).
    """

    def __init__(self, sampler: CropSampler, normalize: Normalize | None = None) -> None:
        self.sampler, self.normalize = sampler, normalize

    def __call__(self, data: bytes | memoryview, name: str = "") -> Tensor:
        """Decode, crop and flip one image (``name`` is unused: the caller names errors)."""
        height, width = image_size(data)
        plan = self.sampler(height, width)
        scale = dct_scale(plan, height, width)
        pixels = torch.from_numpy(decode_rgb(data, scale=scale))
        image = render(pixels.permute(2, 0, 1), plan, scale=scale)
        return image if self.normalize is None else self.normalize(image)


class PILDecode:
    """Encoded image -> PIL RGB image -> a ``transforms.v2`` pipeline (the plain path).

    Args:
        transform: applied to the decoded PIL image (None: return the image).
    """

    def __init__(self, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.transform = transform

    def __call__(self, data: bytes | memoryview, name: str = "") -> Any:
        """Decode and transform one image (``name`` is unused: the caller names errors)."""
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")  # convert() decodes: a truncated file fails here
        return rgb if self.transform is None else self.transform(rgb)


class ImageLoader:
    """Reads an image file and decodes it; a missing or unreadable file is named in the error.

    A class rather than a closure so that DataLoader worker processes can pickle it.

    Args:
        source: where the path came from, quoted in errors (a file list, or a folder).
        decode: ``(encoded bytes, path) -> sample`` (default: :class:`PILDecode`, a PIL RGB
            image).
    """

    def __init__(self, source: str, decode: Callable[[bytes, str], Any] | None = None) -> None:
        self.source = source
        self.decode = decode or PILDecode()

    def __call__(self, path: str) -> Any:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise MissingFileError(f"image {path} ({self.source}) does not exist") from None
        try:
            return self.decode(data, path)
        except (OSError, ValueError, RuntimeError) as err:  # PIL, simplejpeg, torchvision
            raise InputError(f"cannot read image {path} ({self.source}): {err}") from err
