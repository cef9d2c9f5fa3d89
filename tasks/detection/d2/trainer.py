"""detectron2's ``DefaultTrainer``, made to run on CPU processes and in bfloat16.

``SEBenchTrainer`` is a ``DefaultTrainer`` built by ``DefaultTrainer.__init__`` itself, so it
follows detectron2 as it changes (model, optimizer, data loader, scheduler, checkpointer, hooks,
resume). ``DefaultTrainer`` has no hook for two things it fixes in its ``__init__``, the DDP
wrapping and the step trainer: the first is adjusted while that ``__init__`` runs
(``cpu_ddp``), the second replaced after it. What changes:

- DDP on the CPU: detectron2 wraps the model with ``device_ids=[local_rank]``, which PyTorch
  rejects for a CPU module; CPU processes get ``device_ids=None`` (gloo does the all-reduce).
- Mixed precision by config: ``SOLVER.AMP.ENABLED`` with ``SOLVER.AMP.PRECISION``
  ("float16" / "bfloat16"; "" = float16 on CUDA, bfloat16 on the CPU). CUDA runs detectron2's
  ``AMPTrainer`` (gradient scaling for float16 only; bfloat16 has float32's range); the CPU runs
  ``CPUAutocastTrainer``, the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
- The last evaluation's metrics and the training throughput are kept on the trainer
  (``last_eval_results``, ``throughput``) for the run's results file.
- Loading ``MODEL.WEIGHTS`` says once which tensors outside the trunk start from random
  (``weights.report_missing_weights``).
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator

from backbones.errors import InputError

from .weights import report_missing_weights

__all__ = [
    "CPUAutocastTrainer",
    "SEBenchTrainer",
    "ThroughputHook",
    "amp_dtype",
    "build_step_trainer",
]

PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype(cfg: CfgNode) -> torch.dtype | None:
    """The autocast dtype the config asks for, or None for float32 training.

    Args:
        cfg (CfgNode): with ``SOLVER.AMP.ENABLED``, ``SOLVER.AMP.PRECISION`` and ``MODEL.DEVICE``.

    Raises:
        ValueError: an unknown precision, or float16 on the CPU (CPU autocast is bfloat16 here).
    """
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    precision = cfg.SOLVER.AMP.get("PRECISION", "")
    on_cpu = cfg.MODEL.DEVICE == "cpu"
    if precision == "":
        return torch.bfloat16 if on_cpu else torch.float16
    if precision not in PRECISIONS:
        raise InputError(
            f"SOLVER.AMP.PRECISION must be one of {sorted(PRECISIONS)} or '' (float16 on CUDA, "
            f"bfloat16 on the CPU), got {precision!r}"
        )
    if on_cpu and precision != "bfloat16":
        raise InputError(
            f"SOLVER.AMP.PRECISION {precision!r} is not supported on the CPU (MODEL.DEVICE cpu); "
            "use 'bfloat16' or ''"
        )
    return PRECISIONS[precision]


def precision_name(cfg: CfgNode) -> str:
    """The dtype the training forward computes in: "float32", "float16" or "bfloat16"."""
    dtype = amp_dtype(cfg)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


class CPUAutocastTrainer(SimpleTrainer):
    """``SimpleTrainer`` with the forward under CPU autocast (bfloat16); backward and the
    optimizer step run outside it, on the float32 parameters.

    No gradient scaler: bfloat16 has float32's exponent range, so gradients do not underflow.
    """

    def __init__(self, *args: Any, dtype: torch.dtype = torch.bfloat16, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dtype = dtype

    def run_step(self) -> None:
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=self.dtype):
            loss_dict = self.model(data)
        loss_dict = {name: loss.float() for name, loss in loss_dict.items()}
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_step_trainer(
    cfg: CfgNode,
    model: torch.nn.Module,
    data_loader: Any,
    optimizer: torch.optim.Optimizer,
) -> SimpleTrainer:
    """The trainer of one step that the config asks for: plain float32, CUDA AMP or CPU bf16.

    Args:
        cfg (CfgNode): reads ``SOLVER.AMP.*`` and ``MODEL.DEVICE``.
        model, data_loader, optimizer: as for detectron2's ``SimpleTrainer``.
    """
    dtype = amp_dtype(cfg)
    if dtype is None:
        return SimpleTrainer(model, data_loader, optimizer)
    if cfg.MODEL.DEVICE == "cpu":
        return CPUAutocastTrainer(model, data_loader, optimizer, dtype=dtype)
    # Gradient scaling only matters for float16's narrow exponent range.
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler, precision=dtype)


@contextlib.contextmanager
def cpu_ddp(device: str) -> Iterator[None]:
    """While ``DefaultTrainer.__init__`` runs, let it wrap a CPU model in DDP.

    detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]``, which PyTorch's DDP
    rejects for a CPU module, and ``DefaultTrainer`` has no hook for the wrapping; CPU processes
    get ``device_ids=None`` (gloo all-reduces the gradients). Nothing changes on CUDA or for one
    process (no DDP).
    """
    if device != "cpu":
        yield
        return
    create_ddp_model = d2_defaults.create_ddp_model  # AttributeError if detectron2 renames it
    d2_defaults.create_ddp_model = functools.partial(create_ddp_model, device_ids=None)
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = create_ddp_model


class ThroughputHook(hooks.HookBase):
    """Sums the time of the training steps (data loading included, checkpoints and periodic
    evaluations excluded) for images per second.

    Args:
        images_per_step (int): the total batch over all processes (``SOLVER.IMS_PER_BATCH``).
    """

    def __init__(self, images_per_step: int) -> None:
        self.images_per_step = images_per_step
        self.steps = 0
        self.seconds = 0.0
        self._step_start = 0.0

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        self.seconds += time.perf_counter() - self._step_start
        self.steps += 1

    @property
    def images_per_second(self) -> float | None:
        if self.steps == 0 or self.seconds == 0:
            return None
        return self.steps * self.images_per_step / self.seconds


class SEBenchTrainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with CPU DDP, config-selected precision and COCO
    box evaluation (``COCOEvaluator``, pycocotools).

    Args:
        cfg (CfgNode): a full detectron2 config (``add_sebench_config`` applied).
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.last_eval_results: dict[str, Any] | None = None
        self.eval_seconds: float | None = None
        self.throughput = ThroughputHook(cfg.SOLVER.IMS_PER_BATCH)  # build_hooks registers it
        with cpu_ddp(cfg.MODEL.DEVICE), warnings.catch_warnings():
            # With AMP, DefaultTrainer makes an AMPTrainer whose GradScaler (deprecated
            # torch.cuda.amp, "CUDA is not available" on the CPU) we replace right after.
            warnings.filterwarnings("ignore", message=r".*GradScaler")
            super().__init__(cfg)
        # DefaultTrainer picks SimpleTrainer or its CUDA AMPTrainer; ours also runs CPU bf16.
        self._trainer = build_step_trainer(cfg, self.model, self.data_loader, self.optimizer)
        report_missing_weights(
            self.checkpointer.model,
            heads_may_be_random=True,
            allow_partial_load=cfg.MODEL.SEBENCH.ALLOW_PARTIAL_LOAD,
        )

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> COCOEvaluator:
        """Box AP (and mask AP with ``MODEL.MASK_ON``) on ``dataset_name`` with pycocotools;
        predictions saved under ``OUTPUT_DIR/inference/<dataset>``."""
        output_dir = f"{cfg.OUTPUT_DIR}/inference/{dataset_name}"
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_dir)

    def evaluate(self, model: torch.nn.Module | None = None) -> dict[str, Any]:
        """Evaluate on ``DATASETS.TEST``, keeping the metrics and the time it took."""
        start = time.perf_counter()
        results = self.test(self.cfg, self.model if model is None else model)
        self.eval_seconds = time.perf_counter() - start
        self.last_eval_results = results
        return results

    def build_hooks(self) -> list[hooks.HookBase]:
        built = super().build_hooks()
        # Our evaluation function instead of DefaultTrainer's, to keep its results; the
        # throughput hook first, so its step time is the step alone.
        built = [
            hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self.evaluate)
            if isinstance(hook, hooks.EvalHook)
            else hook
            for hook in built
        ]
        return [self.throughput, *built]
