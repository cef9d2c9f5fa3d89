"""``output_stride`` of the ResNet family: dilated last stages, as timm's (and detectron2's
``RES5_DILATION`` with ``dilate_first_block``)."""

from __future__ import annotations

import pytest
import timm
import torch

import backbones
from backbones.weights import load_timm_weights


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_equals_timm_output_stride(output_stride: int) -> None:
    reference = timm.create_model("resnet50", output_stride=output_stride).eval()
    ours = backbones.create_model("resnet50", stride_in_1x1=False, output_stride=output_stride)
    load_timm_weights(ours, reference)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected, got = reference.forward_features(x), ours.eval().forward_features(x)
    assert expected.shape == got.shape == (1, 2048, 96 // output_stride, 128 // output_stride)
    # Not bit for bit: oneDNN may pick another algorithm for the same dilated convolution
    # depending on what ran before in the process (seen in the full suite, not alone).
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert [f["reduction"] for f in ours.feature_info] == [
        f["reduction"] for f in reference.feature_info
    ]


@pytest.mark.parametrize(
    ("name", "output_stride", "reductions"),
    [
        ("se_resnet50", 16, [2, 4, 8, 16, 16]),
        ("se_resnext50_32x4d", 8, [2, 4, 8, 8, 8]),
        ("senet154", 16, [2, 4, 8, 16, 16]),
    ],
)
def test_feature_info_gives_the_real_strides(
    name: str, output_stride: int, reductions: list[int]
) -> None:
    kwargs = {"layers": (1, 1, 2, 2)}
    trunk = backbones.create_model(name, features_only=True, output_stride=output_stride, **kwargs)
    assert trunk.feature_info.reduction() == reductions
    size = 64
    with torch.no_grad():
        maps = trunk(torch.randn(1, 3, size, size))
    # senet154's Caffe max-pool (ceil mode) rounds up: compare with the ceiling.
    assert [m.shape[-1] for m in maps] == [-(-size // r) for r in reductions]


@pytest.mark.parametrize("dilate_first_block", [False, True])
def test_dilation_of_each_block(dilate_first_block: bool) -> None:
    model = backbones.create_model(
        "resnet50", output_stride=8, dilate_first_block=dilate_first_block
    )
    for stage, dilation in (("layer3", 2), ("layer4", 4)):
        blocks = getattr(model, stage)
        # timm and torchvision keep the previous stage's dilation in the first block;
        # detectron2 (RES5_DILATION) and mmdetection dilate the whole stage.
        first = dilation if dilate_first_block else dilation // 2
        assert blocks[0].conv2.dilation == blocks[0].conv2.padding == (first, first)
        assert all(block.conv2.dilation == (dilation, dilation) for block in blocks[1:])
        assert blocks[0].conv1.stride == blocks[0].conv2.stride == (1, 1)
        assert blocks[0].downsample[0].stride == (1, 1)
    assert model.layer2[0].conv1.stride == (2, 2), "the stages before keep their stride"


def test_bad_output_stride_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"output_stride=4 is not supported; expected one of"):
        backbones.create_model("resnet50", output_stride=4)
