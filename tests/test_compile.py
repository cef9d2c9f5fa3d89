"""torch.compile and channels_last on the two models the issue names."""

import shutil

import pytest
import torch

import backbones

CASES = [("se_resnet50", 64), ("se_preact_resnet110", 32)]


@pytest.mark.parametrize("name,size", CASES)
def test_channels_last_matches_contiguous(name, size):
    model = backbones.create_model(name).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name,size", CASES)
def test_torch_compile_forward_backward(name, size):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler (g++)")
    # float64, so that the comparison checks the compiled graph and not float32 summation order
    # (train-mode BN at batch 2 amplifies that through 50+ layers).
    model = backbones.create_model(name, num_classes=10).double()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size, dtype=torch.float64).to(memory_format=torch.channels_last)
    # One compiled graph (training mode, forward and backward) keeps this test to one compile.
    ref = model(x)
    ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = torch.compile(model)(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7)
    for (pname, p), g in zip(model.named_parameters(), ref_grads):
        err = ((p.grad - g).norm() / g.norm().clamp_min(1e-12)).item()
        assert err < 1e-6, f"{name}: compiled grad of {pname} off by {err:.1e} (relative)"
