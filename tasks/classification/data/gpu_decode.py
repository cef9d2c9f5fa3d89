"""Decoding and cropping on the training device: workers only read bytes.

With ``decode="gpu"`` a DataLoader worker reads an image's bytes and its header, and plans the
crop and flip on the original geometry (:class:`~.decode.CropSampler`, torchvision's own
parameter code, so the augmentation distribution is the CPU paths'). The batch crosses to the
main process as encoded bytes; the data module's ``transfer_batch_to_device`` hook then decodes
the whole batch with ``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on CUDA), crops,
resizes, flips and normalises every image there with the same :func:`~.decode.render` the CPU
path uses, and stacks them. On a machine without CUDA the same code runs on the CPU device.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from backbones.errors import InputError

from .decode import CropPlan, CropSampler, Normalize, image_size, is_jpeg, render


@dataclasses.dataclass
class EncodedImage:
    """One image as a worker ships it: its bytes, its crop plan and its name (for errors).

    Attributes:
        data: the encoded file, a 1-D uint8 tensor.
        plan: the crop and flip to apply after decoding.
        name: the file (or shard sample) it came from.
    """

    data: Tensor
    plan: CropPlan
    name: str


@dataclasses.dataclass
class EncodedBatch:
    """A batch of :class:`EncodedImage` and their labels, as the DataLoader yields it.

    Attributes:
        images: the batch's images, in order.
        labels: int64 ``[B]``.
    """

    images: list[EncodedImage]
    labels: Tensor


class PlanOnly:
    """Worker side: encoded bytes -> :class:`EncodedImage` (header read and crop planned only).

    Args:
        sampler: plans the crop from the image size.
    """

    def __init__(self, sampler: CropSampler) -> None:
        self.sampler = sampler

    def __call__(self, data: bytes | memoryview, name: str = "") -> EncodedImage:
        """Read the size from the header, plan the crop, keep the bytes."""
        height, width = image_size(data)  # a bad header fails here, in the worker, named
        plan = self.sampler(height, width)
        return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), plan, name)


def collate_encoded(samples: list[tuple[EncodedImage, int]]) -> EncodedBatch:
    """DataLoader ``collate_fn`` of the GPU path: the images as a list, the labels as a tensor."""
    return EncodedBatch(
        images=[image for image, _ in samples],
        labels=torch.tensor([label for _, label in samples], dtype=torch.int64),
    )


def _decode_one(image: EncodedImage, device: torch.device) -> Tensor:
    try:
        if is_jpeg(image.data.numpy()):
            return decode_jpeg(image.data, mode=ImageReadMode.RGB, device=device)
        return decode_image(image.data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as err:
        raise InputError(f"cannot decode image {image.name}: {err}") from err


def decode_images(images: list[EncodedImage], device: torch.device) -> list[Tensor]:
    """Decode a batch on ``device``: the JPEGs in one batched call, other formats one by one.

    Raises:
        ValueError: an image that cannot be decoded, named.
    """
    decoded: list[Tensor | None] = [None] * len(images)
    jpegs = [i for i, image in enumerate(images) if is_jpeg(image.data[:3].numpy())]
    try:
        batch = decode_jpeg([images[i].data for i in jpegs], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        batch = [_decode_one(images[i], device) for i in jpegs]  # finds and names the bad one
    for i, pixels in zip(jpegs, batch):
        decoded[i] = pixels
    for i, image in enumerate(images):
        if decoded[i] is None:
            decoded[i] = _decode_one(image, device)
    return decoded  # type: ignore[return-value]


class DeviceDecoder:
    """Main-process side: an :class:`EncodedBatch` -> normalised ``[B, 3, H, W]`` on a device.

    Args:
        normalize: the normalisation applied to the cropped batch (ImageNet's by default).
    """

    def __init__(self, normalize: Normalize | None = None) -> None:
        self.normalize = normalize or Normalize()

    def __call__(self, batch: EncodedBatch, device: torch.device) -> tuple[Tensor, Tensor]:
        """Decode, crop, resize, flip and normalise the batch on ``device``."""
        decoded = decode_images(batch.images, device)
        crops = [render(pixels, image.plan) for pixels, image in zip(decoded, batch.images)]
        images = self.normalize(torch.stack(crops))
        return images, batch.labels.to(device, non_blocking=True)
