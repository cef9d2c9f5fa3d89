"""detectron2's ``DefaultTrainer``, made to run on CPU processes and in bfloat16.

Three changes to detectron2's standard training loop, everything else (optimizer, LR schedule,
periodic checkpoints, resume, evaluation hook, metric writers) is detectron2's:

- DDP on the CPU: detectron2 wraps the model with ``device_ids=[local_rank]``, which PyTorch
  rejects for a CPU module; CPU processes get ``device_ids=None`` (gloo does the all-reduce).
- Mixed precision by config: ``SOLVER.AMP.ENABLED`` with ``SOLVER.AMP.PRECISION``
  ("float16" / "bfloat16"; "" = float16 on CUDA, bfloat16 on the CPU). CUDA runs detectron2's
  ``AMPTrainer`` (gradient scaling for float16 only; bfloat16 has float32's range); the CPU runs
  ``CPUAutocastTrainer``, the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
- The last evaluation's metrics and the training throughput are kept on the trainer
  (``last_eval_results``, ``throughput``) for the run's results file.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from backbones.errors import InputError

__all__ = [
    "CPUAutocastTrainer",
    "SEBenchTrainer",
    "ThroughputHook",
    "amp_dtype",
    "build_step_trainer",
]

PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}

logger = logging.getLogger(__name__)


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


def wrap_ddp(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """DDP over all processes (a no-op for one); CPU modules take no ``device_ids``."""
    if device == "cpu":
        return create_ddp_model(model, broadcast_buffers=False, device_ids=None)
    return create_ddp_model(model, broadcast_buffers=False)


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
        # DefaultTrainer.__init__ would build its own DDP wrapper and step trainer; the rest of
        # its set-up is repeated here with ours.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_ddp(model, cfg.MODEL.DEVICE)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.last_eval_results: dict[str, Any] | None = None
        self.eval_seconds: float | None = None
        self.throughput = ThroughputHook(cfg.SOLVER.IMS_PER_BATCH)
        self.register_hooks(self.build_hooks())

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
