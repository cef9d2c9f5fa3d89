"""Registry, create_model and its errors."""

import pytest
import torch

import backbones
from backbones import _registry
from backbones.resnet import ResNet


def test_list_models_sorted_and_filtered():
    names = backbones.list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    assert backbones.list_models("se_resnet*") == ["se_resnet101", "se_resnet152", "se_resnet50"]


REQUIRED = [
    "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x4d", "vgg16_bn",
    "bn_inception", "inception_resnet_v2", "mobilenet_v1", "shufflenet_v1_g3",
    "preact_resnet110", "preact_resnet164", "wrn16_8", "shake_shake26_2x96d", "shake_even29_2x4x64d",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_every_paper_architecture_is_registered_plain_and_se(name):
    assert backbones.is_model(name) and backbones.is_model(f"se_{name}"), name


def test_senet154_registered():
    assert backbones.is_model("senet154")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'se_resnet05'.*se_resnet50"):
        backbones.create_model("se_resnet05")


def test_unknown_keyword_lists_accepted_ones():
    with pytest.raises(ValueError, match=r"unexpected keyword 'se_reducton'.*se_reduction.*Accepted"):
        backbones.create_model("se_resnet50", se_reducton=8)


def test_se_knob_on_plain_model_is_an_error():
    with pytest.raises(ValueError, match="SE switched off"):
        backbones.create_model("resnet50", se_reduction=8)


def test_se_flag_turns_plain_into_se():
    model = backbones.create_model("resnet50", se=True, se_reduction=8)
    assert any(isinstance(m, backbones.SEBlock) for m in model.modules())


@pytest.mark.parametrize("stages", [[1], [6], []])
def test_bad_se_stages_name_the_numbering(stages):
    with pytest.raises(ValueError, match=r"stages are numbered \[2, 3, 4, 5\]"):
        backbones.create_model("se_resnet50", se_stages=stages)


def test_kwargs_override_defaults():
    model = backbones.create_model("se_resnet50", num_classes=7, layers=(1, 1, 1, 1))
    assert model.fc.out_features == 7 and len(model.layer3) == 1


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):
        @_registry.register_model(ResNet)
        def resnet50(**kwargs):  # noqa: F811
            raise AssertionError("never called")


def test_out_indices_out_of_range_lists_levels():
    with pytest.raises(ValueError, match=r"out of range.*4=layer4"):
        backbones.create_model("resnet50", features_only=True, out_indices=(1, 5))


def test_out_indices_without_features_only():
    with pytest.raises(ValueError, match="features_only"):
        backbones.create_model("resnet50", out_indices=(1,))


def test_stride_conventions_flops():
    caffe = backbones.model_complexity(backbones.create_model("resnet50"))["macs"]
    tv = backbones.model_complexity(backbones.create_model("resnet50", stride_in_1x1=False))["macs"]
    assert abs(caffe / 1e9 - 3.86) < 0.01 and abs(tv / 1e9 - 4.09) < 0.01, (caffe, tv)


def test_features_only_drops_classifier():
    net = backbones.create_model("se_resnet50", features_only=True, out_indices=(2, 4))
    assert not any(k.startswith("fc.") for k in net.state_dict())
    feats = net(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == net.feature_info.channels() == [512, 2048]
    assert net.feature_info.reduction() == [8, 32]


def test_kwargs_text_round_trip() -> None:
    kwargs = {"se_reduction": 8, "stride_in_1x1": False, "se_gate": "tanh", "layers": (1, 2)}
    items = backbones.format_kwargs(kwargs)
    assert items == ["layers=(1, 2)", "se_gate=tanh", "se_reduction=8", "stride_in_1x1=False"]
    assert backbones.parse_kwargs(items) == kwargs
    with pytest.raises(ValueError, match="'se_reduction' is not of the form 'key=value'"):
        backbones.parse_kwargs(["se_reduction"])
    with pytest.raises(ValueError, match="gives 'se_gate' twice"):
        backbones.parse_kwargs(["se_gate=tanh", "se_gate=relu"])


def test_timm_weights_load_through_the_top_level_api() -> None:
    timm = pytest.importorskip("timm", reason="timm builds the reference model")
    reference = timm.create_model("legacy_seresnet50", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    expected = reference(x)
    model = backbones.create_from_timm("legacy_seresnet50", reference).eval()
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    name, conventions = backbones.TIMM_EQUIVALENTS["legacy_seresnet50"]
    by_hand = backbones.create_model(name, **conventions)
    backbones.load_timm_weights(by_hand, reference.state_dict())
    torch.testing.assert_close(by_hand.eval()(x), expected, rtol=1e-4, atol=1e-4)
    assert {"load_timm_weights", "create_from_timm", "TIMM_EQUIVALENTS"} <= set(backbones.__all__)
