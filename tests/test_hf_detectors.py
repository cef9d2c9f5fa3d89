"""Hugging Face transformers detectors on an SE trunk found through timm's registry.

Real transformers (DETR, Conditional DETR, Deformable DETR with ``use_timm_backbone=True,
backbone="sebench_se_resnet50"``; their image processors and losses) and real timm, on a tiny
COCO-format dataset written by the test: one training step, then inference through the image
processor's post-processing. The trunk is the full SE-ResNet-50 (transformers passes no size
keywords to timm); the transformer is 1-2 layers of width 32, the images 64-96 px.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from _coco import write_tiny_coco
from PIL import Image
from torch import nn

import backbones
from backbones import FeatureListNet, SEBlock

pytest.importorskip("timm", reason="timm is not installed (pip install -e '.[hf]')")
transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[hf]')"
)

# d_model 32, one encoder layer; Deformable DETR ties its box heads across decoder layers and
# needs two of them.
TINY_TRANSFORMER = {
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "num_queries": 8,
}
DETECTORS = {
    "detr": ("DetrConfig", "DetrForObjectDetection", "DetrImageProcessor", {}),
    "conditional_detr": (
        "ConditionalDetrConfig",
        "ConditionalDetrForObjectDetection",
        "ConditionalDetrImageProcessor",
        {},
    ),
    "deformable_detr": (
        "DeformableDetrConfig",
        "DeformableDetrForObjectDetection",
        "DeformableDetrImageProcessor",
        {"decoder_layers": 2, "encoder_n_points": 2, "decoder_n_points": 2},
    ),
}
IMAGE_SIZE = (96, 128)  # (height, width) of the tiny COCO images


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Image.Image], list[dict]]:
    """Two images and their annotations in the processors' COCO-detection format, with the
    COCO category ids (1, 3) mapped to the contiguous labels (0, 1) a detector predicts."""
    json_path, image_dir = write_tiny_coco(
        tmp_path_factory.mktemp("coco"), num_images=2, size=IMAGE_SIZE
    )
    document = json.loads(json_path.read_text())
    label = {c["id"]: i for i, c in enumerate(document["categories"])}
    images, annotations = [], []
    for image in document["images"]:
        images.append(Image.open(image_dir / image["file_name"]).convert("RGB"))
        objects = [
            {**a, "category_id": label[a["category_id"]]}
            for a in document["annotations"]
            if a["image_id"] == image["id"]
        ]
        annotations.append({"image_id": image["id"], "annotations": objects})
    return images, annotations


def _detector(kind: str) -> tuple[nn.Module, Any]:
    config_name, model_name, processor_name, extra = DETECTORS[kind]
    config = getattr(transformers, config_name)(
        use_timm_backbone=True,
        backbone="sebench_se_resnet50",
        use_pretrained_backbone=False,
        num_labels=2,
        **{**TINY_TRANSFORMER, **extra},
    )
    model = getattr(transformers, model_name)(config)
    processor = getattr(transformers, processor_name)(
        size={"shortest_edge": 64, "longest_edge": 96}
    )
    return model, processor


@pytest.mark.parametrize("kind", list(DETECTORS))
def test_detector_trains_a_step_and_detects(kind: str, tiny_coco: tuple) -> None:
    images, annotations = tiny_coco
    model, processor = _detector(kind)
    trunk = model.model.backbone.model
    assert isinstance(trunk, FeatureListNet) and trunk.model_name == "se_resnet50"
    assert any(isinstance(m, SEBlock) for m in trunk.modules()), "the trunk lost its SE blocks"
    # transformers swaps every BatchNorm2d of the trunk for its frozen batch norm.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())

    batch = processor(images=images, annotations=annotations, return_tensors="pt")
    model.train()
    output = model(
        pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]
    )
    losses = {name: float(value.detach()) for name, value in output.loss_dict.items()}
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= losses.keys(), losses
    assert torch.isfinite(output.loss) and all(torch.isfinite(torch.tensor(list(losses.values()))))
    output.loss.backward()
    trained = [(n, p) for n, p in trunk.named_parameters() if p.requires_grad]
    assert trained, "no trunk parameter is trained"
    missing = [n for n, p in trained if p.grad is None]
    assert not missing, f"{kind}: no gradient for {missing[:5]}"
    bad = [n for n, p in trained if not torch.isfinite(p.grad).all()]
    assert not bad, f"{kind}: non-finite gradients in {bad[:5]}"
    assert any(float(p.grad.abs().sum()) > 0 for n, p in trained if ".se." in n)

    model.eval()
    with torch.no_grad():
        output = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    results = processor.post_process_object_detection(
        output, threshold=0.0, target_sizes=[IMAGE_SIZE] * len(images)
    )
    for result in results:
        boxes = result["boxes"]
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
        assert torch.isfinite(boxes).all() and len(result["scores"]) == len(boxes)
        assert set(result["labels"].tolist()) <= {0, 1}


def test_timm_backbone_hidden_states() -> None:
    """transformers' ``TimmBackbone`` on our trunk: the selected maps, and every level with
    ``output_hidden_states`` (it swaps the extractor's ``return_layers``)."""
    config = transformers.TimmBackboneConfig(
        backbone="sebench_se_resnet50", out_indices=(2, 4), use_pretrained_backbone=False
    )
    backbone = transformers.TimmBackbone(config).eval()
    assert backbone.channels == [512, 2048]
    assert backbone.stage_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        output = backbone(torch.randn(1, 3, 64, 64), output_hidden_states=True)
    assert [m.shape[1] for m in output.feature_maps] == [512, 2048]
    assert [m.shape[1] for m in output.hidden_states] == [64, 256, 512, 1024, 2048]
    expected = backbones.create_model("se_resnet50", features_only=True, out_indices=(2, 4))
    assert backbone._backbone.feature_info.get_dicts() == expected.feature_info.get_dicts()
