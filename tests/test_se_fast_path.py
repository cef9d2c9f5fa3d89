"""SEBlock's fast path (sum + addmm squeeze, functional FCs, fused addcmul residual) against a
plain PyTorch SE: forward and backward, fp32 and bf16, contiguous and channels_last, CPU and CUDA.

tests/test_se_block.py checks the forward in fp32 against the paper's equations; here the
gradients, low precision and memory layouts, which the speed work touches.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from backbones.layers import SEBlock

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA is not available (no GPU on this machine)")),
]
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
# bf16 keeps 8 bits of mantissa: a few roundings stay within 3e-2 of fp32, relative to the
# tensor's scale (a gradient summed over many bf16 terms errs by its terms' size, not its own).
RELATIVE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


class ReferenceSE(nn.Module):
    """The textbook SE: pool over H, W -> Linear -> ReLU -> Linear -> gate -> x * s (+ residual)."""

    def __init__(self, block: SEBlock) -> None:
        super().__init__()
        self.squeeze = block.squeeze
        self.fc1, self.fc2 = copy.deepcopy(block.fc1), copy.deepcopy(block.fc2)
        self.gate = copy.deepcopy(block.gate)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        z = x.mean((2, 3)) if self.squeeze == "avg" else x.amax((2, 3))
        s = self.gate(self.fc2(torch.relu(self.fc1(z))))
        out = x * s[:, :, None, None]
        return out if residual is None else out + residual


def _run(module: nn.Module, x: torch.Tensor, residual: torch.Tensor | None, grad: torch.Tensor,
         autocast_dtype: torch.dtype | None = None):
    """Output and the gradients of input, residual and every parameter, for ``module``."""
    x = x.detach().clone().requires_grad_()
    residual = None if residual is None else residual.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = module(x, residual)
    (out.float() * grad).sum().backward()
    grads = {"input": x.grad, **{name: p.grad for name, p in module.named_parameters()}}
    if residual is not None:
        grads["residual"] = residual.grad
    return out, grads


def _inputs(device: str, dtype: torch.dtype, layout: str, with_residual: bool):
    gen = torch.Generator().manual_seed(0)
    shape = (3, 32, 5, 6)  # C > 1 and H, W > 1: contiguous and channels_last strides differ
    x = torch.randn(shape, generator=gen).to(device, dtype).to(memory_format=LAYOUTS[layout])
    residual = (torch.randn(shape, generator=gen).to(device, dtype)
                .to(memory_format=LAYOUTS[layout]) if with_residual else None)
    grad = torch.randn(shape, generator=gen).to(device)
    return x, residual, grad


def _assert_close(value: torch.Tensor, expected: torch.Tensor, tol: float, name: str) -> None:
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(value.float(), expected, rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{name}: {m}")


def _keep_away_from_kinks(block: SEBlock, x: torch.Tensor) -> None:
    """Shift the FC biases so no pre-activation of ReLU (or a ReLU gate) is near 0.

    At a kink, one rounding of bf16 flips the ReLU's mask and a whole gradient row with it: a
    difference of precision, not of the two implementations.
    """
    with torch.no_grad():
        z = x.float().mean((2, 3)) if block.squeeze == "avg" else x.float().amax((2, 3))
        for fc in (block.fc1, block.fc2):
            h = z @ fc.weight.float().T  # without bias, [N, out]
            sign = torch.ones(fc.out_features, device=h.device)
            sign[::2] = -1  # half the units on, half off
            spread = (h - h.mean(0)).abs().amax(0)
            fc.bias.copy_(-h.mean(0) + sign * (0.5 + spread))
            z = torch.relu(z @ fc.weight.float().T + fc.bias.float())


def _check_against_reference(block, x, residual, grad, tol, autocast_dtype=None):
    _keep_away_from_kinks(block, x)
    reference = ReferenceSE(block)
    # The reference runs in fp32 on the same (possibly bf16-rounded) values and weights.
    out, grads = _run(block, x, residual, grad, autocast_dtype)
    ref_out, ref_grads = _run(reference.float(), x.float(),
                              None if residual is None else residual.float(), grad)
    _assert_close(out, ref_out, tol, "output")
    assert grads.keys() == ref_grads.keys()
    for name, value in grads.items():
        assert value is not None, f"no gradient reached {name}"
        _assert_close(value, ref_grads[name], tol, f"gradient of {name}")
    return out, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("with_residual", [False, True], ids=["alone", "fused_residual"])
@pytest.mark.parametrize("squeeze", ["avg", "max"])
@pytest.mark.parametrize("gate", ["sigmoid", "tanh", "relu"])
def test_fast_path_matches_reference_forward_and_backward(
    device, dtype, layout, with_residual, squeeze, gate
):
    torch.manual_seed(0)
    block = SEBlock(32, rd_channels=8, squeeze=squeeze, gate=gate).to(device, dtype)
    x, residual, grad = _inputs(device, dtype, layout, with_residual)
    out, grads = _check_against_reference(block, x, residual, grad, RELATIVE_TOLERANCE[dtype])
    assert out.dtype == dtype
    # A layout change inside the block would cost a copy of the whole map: the output and the
    # input gradient keep the input's layout.
    fmt = LAYOUTS[layout]
    assert out.is_contiguous(memory_format=fmt), f"{layout} in, strides {out.stride()} out"
    assert grads["input"].is_contiguous(memory_format=fmt), grads["input"].stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_fast_path_under_bf16_autocast(device, layout, squeeze):
    """fp32 weights and inputs under autocast, as the training benchmarks run the block."""
    torch.manual_seed(0)
    block = SEBlock(32, rd_channels=8, squeeze=squeeze).to(device)
    x, residual, grad = _inputs(device, torch.float32, layout, with_residual=True)
    out, _ = _check_against_reference(block, x, residual, grad, RELATIVE_TOLERANCE[torch.bfloat16],
                                      autocast_dtype=torch.bfloat16)
    assert out.is_contiguous(memory_format=LAYOUTS[layout]), out.stride()



class _CountCalls(torch.overrides.TorchFunctionMode):
    """Counts the torch functions called under it (the real ones still run)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[object, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls[func] = self.calls.get(func, 0) + 1
        return func(*args, **(kwargs or {}))


def test_lightning_training_runs_the_fused_se_path(tmp_path) -> None:
    # The speed work needs no change to user code: a plain `fit` of a registry SE model goes
    # through the fused squeeze (addmm) and rescale-and-sum (addcmul) of every SE block.
    import lightning

    from tasks.classification.data.cifar import CIFARDataModule
    from tasks.classification.module import ClassificationModule

    module = ClassificationModule("se_preact_resnet110", {"layers": [1, 1, 1]}, 10, lr=0.01)
    data = CIFARDataModule(str(tmp_path), batch_size=8, num_workers=0, synthetic=True,
                           synthetic_size=16, pin_memory=False)
    trainer = lightning.Trainer(
        accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    se_blocks = [m for m in module.modules() if isinstance(m, SEBlock)]
    counter = _CountCalls()
    with counter:
        trainer.fit(module, data)
    assert trainer.global_step == 2 and len(se_blocks) == 3
    assert counter.calls.get(torch.addcmul) == 2 * len(se_blocks)
    assert counter.calls.get(torch.addmm, 0) >= 2 * len(se_blocks)
