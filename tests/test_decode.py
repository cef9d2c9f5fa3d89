"""Reduced-size decoding and the GPU path's code (on the CPU device) against torchvision's path.

The images are a real photograph (matplotlib's sample of Grace Hopper) re-encoded as JPEG at
quality 90 at a small and a large size, so that the DCT scaling meets real image content.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms import v2

from tasks.classification.data.decode import (
    CropPlan,
    CropSampler,
    ImageLoader,
    Normalize,
    PILDecode,
    ReducedDecode,
    _aligned_start,
    _resize,
    _resize_box,
    _resize_box_pil,
    dct_scale,
    decode_rgb,
    image_size,
)
from tasks.classification.data.gpu_decode import DeviceDecoder, PlanOnly, collate_encoded
from tasks.classification.data.image_module import eval_transform, train_transform

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
CROP, RESIZE = 32, 40
RECIPES = [(True, "random_resized"), (True, "random"), (False, "random_resized")]


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """The photograph at 48x56 (crops never scaled) and 300x400 (scaled by up to 8)."""
    photo = Image.open(PHOTO).convert("RGB")
    return {
        "small": encode(photo.resize((48, 56)), quality=90),
        "large": encode(photo.resize((300, 400)), quality=90),
    }


def reference(train: bool, train_crop: str) -> v2.Compose:
    """torchvision's plain path up to the uint8 image (its last two steps normalise)."""
    if train:
        full = train_transform(train_crop=train_crop, crop_size=CROP, resize_size=RESIZE)
    else:
        full = eval_transform(crop_size=CROP, resize_size=RESIZE)
    return v2.Compose(full.transforms[:-2])


def sampler(train: bool, train_crop: str) -> CropSampler:
    return CropSampler(train=train, train_crop=train_crop, crop_size=CROP, resize_size=RESIZE)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.mark.parametrize("train,train_crop", RECIPES)
def test_reduced_decode_matches_torchvision_draw_for_draw(photos, train, train_crop):
    ours, plain = ReducedDecode(sampler(train, train_crop)), PILDecode(reference(train, train_crop))
    scales = []
    for size, data in photos.items():
        height, width = image_size(data)
        for seed in range(12):
            torch.manual_seed(seed)
            plan = sampler(train, train_crop)(height, width)
            torch.manual_seed(seed)
            got = ours(data)
            torch.manual_seed(seed)  # the same seed: torchvision draws the same box and flip
            expected = plain(data)
            assert got.shape == expected.shape == (3, CROP, CROP) and got.dtype == torch.uint8
            diff = (got.float() - expected.float()).abs()
            scale = dct_scale(plan, height, width)
            scales.append(scale)
            if scale == 1:  # the same pixels up to torch's and PIL's rounding
                assert diff.max() <= 1, (size, seed, plan, float(diff.max()))
            else:  # decoded at 1/scale: within a few grey levels of decode-then-resize
                assert diff.mean() < 4.0 and psnr(got, expected) > 27, (size, seed, plan, scale)
    assert 1 in scales and max(scales) >= 4, f"both full and reduced decodes expected: {scales}"


def test_crop_boxes_and_flips_are_torchvision_s_on_the_original_geometry():
    # torchvision's transform applied to an image of pixel coordinates with nearest-neighbour
    # resizing: the output's first pixel is the crop box's top-left, its last pixel gives the
    # box's size, and a flip reverses the columns.
    height, width = 300, 400
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coordinates = torch.stack([ys, xs]).float()
    nearest = v2.InterpolationMode.NEAREST
    plain = v2.Compose(
        [v2.RandomResizedCrop(16, interpolation=nearest), v2.RandomHorizontalFlip()]
    )
    ours = CropSampler(train=True, train_crop="random_resized", crop_size=16, resize_size=16)
    flips, areas = [], []
    for seed in range(150):
        torch.manual_seed(seed)
        plan = ours(height, width)
        torch.manual_seed(seed)
        out = plain(coordinates)
        flipped = bool(out[1, 0, 0] > out[1, 0, -1])
        left = out[1, 0, -1] if flipped else out[1, 0, 0]
        assert (int(out[0, 0, 0]), int(left), flipped) == (plan.top, plan.left, plan.flip), seed
        # Nearest resizing samples row floor(15 * height / 16) of the box for the last row.
        right = out[1, 0, 0] if flipped else out[1, 0, -1]
        last = (int(out[0, -1, 0]) - plan.top, int(right) - plan.left)
        assert last == (15 * plan.height // 16, 15 * plan.width // 16), (seed, plan, last)
        flips.append(plan.flip)
        areas.append(plan.height * plan.width / (height * width))
    assert 0.38 < np.mean(flips) < 0.62, np.mean(flips)  # 150 fair coin flips: 0.5 +- 0.04
    assert 0.08 <= min(areas) and max(areas) <= 1.0 and 0.4 < np.mean(areas) < 0.68


def test_dct_scale_keeps_what_is_resized_at_least_its_output_size():
    box = CropPlan(0, 0, 500, 470, size=(224, 224))
    assert dct_scale(box, 1000, 1000) == 2  # 250 x 235 >= 224; a quarter would be 125
    assert dct_scale(CropPlan(0, 0, 1800, 1900, size=(224, 224)), 2000, 2000) == 8
    assert dct_scale(CropPlan(0, 0, 300, 300, size=(224, 224)), 2000, 2000) == 1
    resize_then_crop = CropPlan(0, 0, 224, 224, size=(224, 224), resize=(256, 341))
    assert dct_scale(resize_then_crop, 1536, 2048) == 4  # 384 x 512 >= 256 x 341
    assert dct_scale(resize_then_crop, 600, 800) == 2


def test_fractional_box_resize_is_pil_s_filter(photos):
    # Boxes of whole original pixels in an image decoded at 1/2 and 1/4: corners on quarters,
    # sides of 1 to 2 output pixels per step. torch's kernel (from a whole row and column, a
    # few leading outputs dropped) against PIL's resize of the fractional box as it is.
    generator = torch.Generator().manual_seed(0)
    torch_path = 0
    for scale in (2, 4):
        image = torch.from_numpy(decode_rgb(photos["large"], scale=scale)).permute(2, 0, 1)
        _, height, width = image.shape
        for _ in range(40):
            side_y, side_x = (CROP * (1 + torch.rand(2, generator=generator))).tolist()
            top = int(torch.randint(0, 4 * int(height - side_y), (1,), generator=generator)) / 4
            left = int(torch.randint(0, 4 * int(width - side_x), (1,), generator=generator)) / 4
            box = (left, top, left + side_x, top + side_y)
            got = _resize_box(image, box, (CROP, CROP)).float()
            expected = _resize_box_pil(image, box, (CROP, CROP)).float()
            diff = (got - expected).abs()
            assert diff.mean() < 0.5 and diff.max() <= 8, (scale, box, float(diff.mean()))
            starts = (_aligned_start(top, side_y / CROP), _aligned_start(left, side_x / CROP))
            torch_path += None not in starts
    assert torch_path > 60, f"torch's kernel resized only {torch_path} of 80 boxes"


def test_resize_of_a_crop_view_is_the_plain_resize_of_its_pixels(photos):
    # _resize lays a crop of the decoded [H, W, 3] array out channels-last and contiguous for
    # torch's vectorised uint8 kernel: the pixels must be those of the plain call on a copy.
    image = torch.from_numpy(decode_rgb(photos["large"])).permute(2, 0, 1)
    for top, left, side, size in (
        (0, 0, 300, (32, 32)),
        (17, 41, 150, (224, 224)),
        (5, 3, 20, (32, 48)),
    ):
        view = image[:, top : top + side, left : left + side]
        expected = F.interpolate(
            view.contiguous()[None], size=size, mode="bilinear", antialias=True
        )[0]
        assert torch.equal(_resize(view, size), expected), (top, left, side, size)


def test_non_jpeg_and_cmyk_jpeg_take_the_pil_route(photos):
    photo = Image.open(io.BytesIO(photos["large"]))
    files = {"png": encode(photo, "PNG"), "cmyk": encode(photo.convert("CMYK"), quality=95)}
    ours = ReducedDecode(sampler(False, "random_resized"))
    plain = PILDecode(reference(False, "random_resized"))
    for kind, data in files.items():
        diff = (ours(data).float() - plain(data).float()).abs()
        limit = 1 if kind == "png" else 6  # CMYK: PIL's own draft decode at 1/4
        assert diff.mean() < limit, (kind, float(diff.mean()))


def test_normalize_is_torchvision_s(photos):
    image = ReducedDecode(sampler(False, "random_resized"))(photos["large"])
    expected = v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(image.float() / 255)
    torch.testing.assert_close(Normalize()(image), expected, atol=1e-5, rtol=1e-5)


def test_unreadable_file_is_named(tmp_path, photos):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(photos["large"][: len(photos["large"]) // 2])
    loader = ImageLoader("under the test folder", ReducedDecode(sampler(True, "random")))
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.jpg \(under the test"):
        loader(str(bad))
    with pytest.raises(FileNotFoundError, match="absent.jpg"):
        loader(str(tmp_path / "absent.jpg"))


@pytest.mark.parametrize("train,train_crop", [(True, "random_resized"), (False, "random")])
def test_gpu_path_runs_on_the_cpu_device_and_matches_torchvision(photos, train, train_crop):
    """Workers plan (PlanOnly), the batch decodes and crops on the device (DeviceDecoder)."""
    png = encode(Image.open(io.BytesIO(photos["small"])), "PNG")
    files = [photos["small"], photos["large"], png, photos["large"]]
    encode_side = PlanOnly(sampler(train, train_crop))
    plain = PILDecode(reference(train, train_crop))
    items, expected = [], []
    for seed, data in enumerate(files):
        torch.manual_seed(seed)
        items.append((encode_side(data, f"image{seed}"), seed))
        torch.manual_seed(seed)
        expected.append(plain(data))
    batch = collate_encoded(items)
    images, labels = DeviceDecoder()(batch, torch.device("cpu"))
    assert images.shape == (4, 3, CROP, CROP) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(images, Normalize()(torch.stack(expected)), atol=0.02, rtol=0)

    broken = encode_side(photos["large"][:3000], "shard x, sample 7 (b.jpg)")
    batch = collate_encoded([items[0], (broken, 1)])
    with pytest.raises(ValueError, match=r"cannot decode image shard x, sample 7 \(b\.jpg\)"):
        DeviceDecoder()(batch, torch.device("cpu"))
