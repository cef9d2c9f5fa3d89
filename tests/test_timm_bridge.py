"""Every registry model through timm's own API: ``timm.create_model("sebench_<name>", ...)``.

Real timm (its registry, ``create_model``, ``load_checkpoint``, ``resolve_data_config``); the
models run at small inputs (64 px, 75 for Inception-ResNet-v2, 32 for CIFAR).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_models import _small_input
from torch import nn

import backbones
from backbones import Backbone, FeatureListNet, SEBlock
from backbones.constants import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD

timm = pytest.importorskip("timm", reason="timm is not installed (pip install -e '.[timm]')")
from timm.data import resolve_data_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = backbones.list_models()


def _expected_data(name: str) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    size = backbones.model_class(name).default_input_size
    if size[1] == 32:
        return size, CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"]
    return size, IMAGENET_MEAN, IMAGENET_STD


@pytest.mark.parametrize("name", MODELS)
def test_timm_builds_the_registry_model(name: str) -> None:
    ours = backbones.create_model(name).eval()
    theirs = timm.create_model(f"sebench_{name}").eval()
    assert type(theirs) is type(ours) and theirs.num_classes == ours.num_classes
    state = ours.state_dict()
    theirs.load_state_dict(state)
    x = _small_input(ours)
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x)), f"{name}: timm's build computes another function"

    size, mean, std = _expected_data(name)
    data = resolve_data_config({}, model=theirs)
    assert (data["input_size"], data["mean"], data["std"]) == (size, mean, std), data
    assert resolve_data_config({}, model=ours) == data  # the same cfg without timm's factory

    # features_only: the maps of our extractor, from the full model's state dict (the head's
    # keys are ignored by both extractors).
    our_features = backbones.create_model(name, features_only=True).eval()
    timm_features = timm.create_model(f"sebench_{name}", features_only=True).eval()
    our_features.load_state_dict(state)
    timm_features.load_state_dict(state)
    assert timm_features.feature_info.get_dicts() == our_features.feature_info.get_dicts()
    assert resolve_data_config({}, model=timm_features)["input_size"] == size
    with torch.no_grad():
        for a, b in zip(timm_features(x), our_features(x), strict=True):
            assert torch.equal(a, b), f"{name}: feature maps differ"


def test_list_models_and_tags() -> None:
    listed = timm.list_models("sebench_*")
    assert sorted(listed) == [f"sebench_{n}" for n in MODELS]
    tags = timm.list_models("sebench_se_preact_resnet110*", include_tags=True)
    assert tags == ["sebench_se_preact_resnet110.cifar10", "sebench_se_preact_resnet110.cifar100"]
    model = timm.create_model("sebench_se_preact_resnet110.cifar100", layers=(1, 1, 1))
    assert model.num_classes == 100
    assert resolve_data_config({}, model=model)["mean"] == CIFAR_MEAN["cifar100"]
    with pytest.raises(ValueError, match=r"no pretrained tag 'in1k'.*cifar10', .*cifar100'"):
        timm.create_model("sebench_se_preact_resnet110.in1k")
    assert not timm.list_pretrained("sebench_*")  # no weights to download


def test_timm_keywords_are_honoured(tmp_path: Path) -> None:
    tiny = {"layers": (1, 1, 1, 1), "base_width": 16}
    model = timm.create_model(
        "sebench_se_resnet50", num_classes=7, in_chans=1, drop_rate=0.3, global_pool="max",
        se_reduction=8, **tiny,
    )
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    assert model.stem.conv1.in_channels == 1 and model.head_drop.p == 0.3
    assert isinstance(model.global_pool, nn.AdaptiveMaxPool2d)
    assert model.layer1[0].se.fc1.out_features == 256 // 8
    assert resolve_data_config({}, model=model)["input_size"] == (1, 224, 224)
    assert len(resolve_data_config({}, model=model)["mean"]) == 1

    overlay = timm.create_model(
        "sebench_resnet50", pretrained_cfg_overlay={"input_size": (3, 256, 256)}, **tiny
    )
    assert resolve_data_config({}, model=overlay)["input_size"] == (3, 256, 256)
    as_dict = timm.create_model(
        "sebench_resnet50", pretrained_cfg={"num_classes": 5, "crop_pct": 1.0}, **tiny
    )
    assert as_dict.num_classes == 5 and as_dict.pretrained_cfg["crop_pct"] == 1.0
    double = timm.create_model("sebench_resnet50", dtype=torch.float64, **tiny)
    assert double.fc.weight.dtype == torch.float64
    for zero in ("drop_path_rate", "drop_block_rate"):  # 0 is what the models do anyway
        timm.create_model("sebench_resnet50", **{zero: 0.0}, **tiny)
    timm.create_model("sebench_resnet50", output_stride=32, **tiny)

    # checkpoint_path (loaded by timm itself): a registry state dict, into a features extractor.
    source = backbones.create_model("se_resnet50", **tiny).eval()
    torch.save(source.state_dict(), tmp_path / "se_resnet50.pth")
    trunk = timm.create_model(
        "sebench_se_resnet50", features_only=True, out_indices=2,
        checkpoint_path=str(tmp_path / "se_resnet50.pth"), **tiny,
    ).eval()
    assert trunk.feature_info.out_indices == (3, 4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trunk(x)[-1], source.forward_features(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pretrained": True}, r"no weights to download.*checkpoint_path=PATH.*load_timm_weights"),
        ({"features_only": True, "out_indices": (1, 5)},
         r"\[5\] out of range; valid indices are 0..4 \(or -5..-1 from the deepest\)"),
        ({"features_only": True, "out_indices": 6}, r"an int must be in 1..5"),
        ({"drop_path_rate": 0.1}, "no stochastic depth"),
        ({"output_stride": 16}, r"output_stride=16 cannot be built"),
        ({"global_pool": "catavgmax"}, r"expected one of \['avg', 'max'\]"),
        ({"se_reduciton": 8}, "Did you mean se_reduction"),
    ],
)
def test_bad_keywords_are_clear_errors(kwargs: dict, message: str) -> None:
    name = "sebench_se_mobilenet_v1"  # a family without output_stride
    with pytest.raises(ValueError, match=message):
        timm.create_model(name, **kwargs)


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'sebench_se_resnet5'; did you mean "
                                         r"sebench_se_resnet50"):
        timm.create_model("sebench_se_resnet5")
    with pytest.raises(RuntimeError, match="sebench_se_resnext50_32x4d"):  # timm's own type too
        timm.create_model("sebench_se_resnext50")
    with pytest.raises(RuntimeError, match=r"Unknown model \(not_a_model\)"):  # timm's names
        timm.create_model("not_a_model")


class _NoFeatures(Backbone):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)


def test_features_only_needs_feature_info() -> None:
    with pytest.raises(ValueError, match=r"cannot give features.*families that can: .*ResNet"):
        FeatureListNet(_NoFeatures())


def test_feature_info_and_return_layers_as_timm_consumers_read_them() -> None:
    trunk = timm.create_model(
        "sebench_se_resnet50", features_only=True, out_indices=(-1, 2), layers=(1, 1, 1, 1)
    )
    info = trunk.feature_info
    assert info.out_indices == (2, 4)  # in order of depth, as the maps come
    assert info.channels() == [512, 2048] and info.reduction() == [8, 32]
    assert info.module_name() == ["layer2", "layer4"]
    assert info.get_dicts(keys=["module", "index"]) == [
        {"module": "layer2", "index": 2}, {"module": "layer4", "index": 4}
    ]
    assert [f["module"] for f in info.info] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert info.channels(0) == 64 and info.reduction([0, 1]) == [2, 4]
    assert trunk.return_layers == {"layer2": "2", "layer4": "4"}
    # transformers' TimmBackbone swaps return_layers for every level (output_hidden_states).
    trunk.return_layers = {f["module"]: str(i) for i, f in enumerate(info.info)}
    assert [m.shape[1] for m in trunk(torch.randn(1, 3, 64, 64))] == [64, 256, 512, 1024, 2048]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("se_resnet50", {"layers": (1, 1, 1, 1)}), ("se_preact_resnet110", {}),
     ("se_mobilenet_v1", {})],
)
def test_forward_intermediates_match_features_only(name: str, kwargs: dict) -> None:
    model = timm.create_model(f"sebench_{name}", **kwargs).eval()
    extractor = FeatureListNet(model, (1, -1)).eval()
    x = _small_input(model)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=(1, -1))
        assert torch.equal(final, model.forward_features(x))
        for a, b in zip(maps, extractor(x), strict=True):
            assert torch.equal(a, b)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2 and torch.equal(last_two[-1], final)
        early, maps = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(early, maps[0])


def test_import_backbones_leaves_timm_alone_until_it_is_imported() -> None:
    """``import backbones`` does not import timm; ``import timm`` afterwards registers the models,
    also after ``importlib.util.find_spec("timm")`` (how transformers looks for timm)."""
    script = (
        "import importlib.util, sys\n"
        "import backbones\n"
        "assert 'timm' not in sys.modules, 'import backbones imported timm'\n"
        "assert importlib.util.find_spec('timm') is not None\n"
        "assert 'timm' not in sys.modules\n"
        "import timm\n"
        "assert len(timm.list_models('sebench_*')) == len(backbones.list_models())\n"
        "assert type(sys.modules['timm'].__spec__.loader).__name__ == 'SourceFileLoader'\n"
        "print(timm.create_model('sebench_mobilenet_v1', num_classes=3).num_classes)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "3"


def test_se_blocks_survive_the_timm_path() -> None:
    model = timm.create_model("sebench_se_shufflenet_v1_g3", features_only=True)
    assert any(isinstance(m, SEBlock) for m in model.modules())
    plain = timm.create_model("sebench_shufflenet_v1_g3", features_only=True)
    assert not any(isinstance(m, SEBlock) for m in plain.modules())
