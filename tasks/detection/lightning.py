"""COCO detection with torchvision's detectors on registry trunks, in Lightning.

``COCODetectionDataModule`` reads COCO 2017 (or any COCO-format instances file) with
torchvision's ``CocoDetection`` wrapped for the v2 transforms (instance masks too, for Mask
R-CNN); ``DetectionModule`` trains ``build_detector``'s Faster R-CNN, Mask R-CNN, RetinaNet or
FCOS with SGD, linear warm-up and step decay (detectron2's recipe) and evaluates box AP (and mask
AP for Mask R-CNN) with pycocotools on the gathered detections of every process. Mixed
precision and DDP come from the Trainer's flags (``precision="bf16-mixed"``,
``devices=8, strategy="ddp"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning
import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, VisionDataset, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2

from backbones.errors import InputError
from tasks._nonfinite import NonFiniteGuard, sgd
from tasks.schedules import check_schedule, step_scheduler

from .coco import COCOFormatError, COCOSummary, check_coco, load_coco
from .evaluation import AP_KEYS, coco_ap, coco_index
from .torchvision_model import DETECTORS, build_detector

__all__ = [
    "COCODetectionDataModule",
    "COCOTargets",
    "DetectionModule",
    "collate_detection",
    "detections_to_coco",
]

log = logging.getLogger(__name__)

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


def collate_detection(samples: list[tuple[Any, Any]]) -> Batch:
    """Images and targets as two lists: detection images differ in size."""
    images, targets = zip(*samples)
    return list(images), list(targets)


def detections_to_coco(
    output: dict[str, torch.Tensor], image_id: int, category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """One image's detector output as COCO results.

    Args:
        output (dict[str, torch.Tensor]): ``boxes`` (XYXY, original image pixels), ``labels``
            (1..K) and ``scores``, as torchvision's detectors return them in eval mode.
        image_id (int): the COCO image id.
        category_ids (Sequence[int]): COCO category id of each label, ``category_ids[label - 1]``.

    Returns:
        ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection, plus
        ``"segmentation"`` (the mask above 0.5 as COCO's RLE) where the output has ``masks``.
    """
    boxes = output["boxes"].detach().float().cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]
    detections = [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(label) - 1]),
            "bbox": [round(float(v), 2) for v in box],
            "score": float(score),
        }
        for box, label, score in zip(
            boxes.tolist(), output["labels"].tolist(), output["scores"].float().tolist()
        )
    ]
    if "masks" in output:
        for detection, rle in zip(detections, masks_to_rle(output["masks"]), strict=True):
            detection["segmentation"] = rle
    return detections


def masks_to_rle(masks: torch.Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Mask R-CNN's [N, 1, H, W] mask probabilities as COCO run-length encodings.

    Args:
        masks (torch.Tensor): per-detection probabilities in original image pixels.
        threshold (float): the probability above which a pixel is in the mask (0.5, as
            torchvision's and detectron2's evaluation).

    Returns:
        ``{"size": [H, W], "counts": str}`` per mask (str counts: JSON- and pickle-friendly).
    """
    binary = (masks.detach()[:, 0] > threshold).to(torch.uint8).cpu().numpy()
    if len(binary) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles]


class COCOTargets:
    """Turn a wrapped COCO target into the detector's: contiguous labels, no crowd or empty boxes.

    Crowd regions (``iscrowd`` 1) are not trained on, as in detectron2; boxes with a
    non-positive width or height are dropped (``check_coco`` counted them), with their masks.

    Args:
        label_of_category (dict[int, int]): COCO category id -> label 1..K.
        masks (bool): the targets carry instance ``masks`` ([N, H, W] uint8) (False).
    """

    def __init__(self, label_of_category: dict[int, int], masks: bool = False) -> None:
        self.label_of_category = dict(label_of_category)
        self.masks = masks

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if "boxes" not in target:  # an image without annotations
            height, width = image.height, image.width
            boxes = tv_tensors.BoundingBoxes(
                torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)
            )
            empty = {
                "image_id": target["image_id"],
                "boxes": boxes,
                "labels": torch.zeros(0, dtype=torch.int64),
            }
            if self.masks:
                empty["masks"] = tv_tensors.Mask(torch.zeros(0, height, width, dtype=torch.uint8))
            return image, empty
        boxes = target["boxes"]
        crowd = torch.as_tensor(target.get("iscrowd", [0] * len(boxes)), dtype=torch.bool)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & ~crowd
        labels = torch.tensor(
            [self.label_of_category[int(c)] for c in target["labels"]], dtype=torch.int64
        )
        kept = {
            "image_id": target["image_id"],
            "boxes": tv_tensors.wrap(boxes[keep], like=boxes),
            "labels": labels[keep],
        }
        if self.masks:
            kept["masks"] = tv_tensors.wrap(target["masks"][keep], like=target["masks"])
        return image, kept


def _transforms(
    label_of_category: dict[int, int], *, train: bool, flip: float, masks: bool
) -> v2.Compose:
    steps: list[Any] = [
        COCOTargets(label_of_category, masks),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if train and flip > 0:
        steps.append(v2.RandomHorizontalFlip(flip))
    # Resizing and normalisation happen inside the detector (GeneralizedRCNNTransform), which
    # maps the predicted boxes back to these, the original, image coordinates.
    return v2.Compose(steps)


def _trainable_ids(coco: COCO) -> list[int]:
    """Images with at least one non-crowd box of positive size."""
    return [
        image_id
        for image_id in coco.getImgIds()
        if any(
            not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0
            for a in coco.imgToAnns.get(image_id, [])
        )
    ]


class COCODetectionDataModule(lightning.LightningDataModule):
    """COCO-format detection data: images and instances JSON per split.

    ``setup`` validates each split with ``check_coco`` (missing files, unknown category ids and
    malformed boxes are errors that name the annotation; boxes with a non-positive side are
    counted, logged once and dropped). Category ids map to labels 1..K in increasing id order
    (COCO's 80 ids 1..90 become 1..80); train and val must list the same categories. Training
    images are flipped horizontally at random; training images left without a box (after crowd
    and degenerate boxes are dropped) are skipped unless ``keep_empty_train_images``, as
    detectron2's ``FILTER_EMPTY_ANNOTATIONS``. Evaluation keeps every image.

    Batches are ``(list of float [3, H, W] images in [0, 1], list of targets)``, targets holding
    ``image_id``, ``boxes`` (XYXY, pixels), ``labels`` and, with ``masks``, the instance
    ``masks`` ([N, H, W] uint8, from each annotation's polygons or RLE).

    Args:
        train_json (str): training instances JSON ("datasets/coco/annotations/
            instances_train2017.json").
        train_images (str): folder of the training images ("datasets/coco/train2017").
        val_json (str): validation instances JSON, also the evaluation ground truth
            ("datasets/coco/annotations/instances_val2017.json").
        val_images (str): folder of the validation images ("datasets/coco/val2017").
        test_json (str | None): ``test`` split JSON (None: the validation split, i.e. COCO
            minival, as in the paper).
        test_images (str | None): ``test`` split images (None: ``val_images``).
        batch_size (int): images per batch and per process (2, detectron2's 16 on 8 GPUs).
        eval_batch_size (int): images per evaluation batch and process (1).
        num_workers (int): DataLoader worker processes; persistent when > 0 (4).
        horizontal_flip (float): probability of flipping a training image (0.5).
        keep_empty_train_images (bool): train on images without boxes too (False).
        check_files (bool): check that every image file exists in ``setup`` (True).
        masks (bool): load instance masks for Mask R-CNN; every annotation then needs a
            ``segmentation`` (False; ``sebench tv-detect`` sets it from ``model.detector``).
    """

    dataset_name = "coco"

    def __init__(
        self,
        train_json: str = "datasets/coco/annotations/instances_train2017.json",
        train_images: str = "datasets/coco/train2017",
        val_json: str = "datasets/coco/annotations/instances_val2017.json",
        val_images: str = "datasets/coco/val2017",
        test_json: str | None = None,
        test_images: str | None = None,
        *,
        batch_size: int = 2,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        horizontal_flip: float = 0.5,
        keep_empty_train_images: bool = False,
        check_files: bool = True,
        masks: bool = False,
    ) -> None:
        super().__init__()
        for key, value, low in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < low:
                raise InputError(f"data.{key} must be at least {low}, got {value}")
        if not 0.0 <= horizontal_flip <= 1.0:
            raise InputError(f"data.horizontal_flip must be a probability, got {horizontal_flip}")
        self.save_hyperparameters()
        self.splits = {
            "train": (Path(train_json), Path(train_images)),
            "val": (Path(val_json), Path(val_images)),
            "test": (Path(test_json or val_json), Path(test_images or val_images)),
        }
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.horizontal_flip = num_workers, horizontal_flip
        self.keep_empty_train_images, self.check_files = keep_empty_train_images, check_files
        self.masks = masks
        self._categories: dict[int, str] | None = None
        # Each JSON is parsed once per process (COCO's train file takes seconds and GBs): the
        # same dict serves the categories, the checks and the pycocotools index.
        self._documents: dict[Path, dict[str, Any]] = {}
        self._datasets: dict[str, Dataset] = {}
        self._coco: dict[str, COCO] = {}
        self.summaries: dict[str, COCOSummary] = {}

    @property
    def categories(self) -> dict[int, str]:
        """COCO category id -> name, read from the validation JSON (smaller than train's)."""
        if self._categories is None:
            json_file = self.splits["val"][0]
            self._categories = _categories(json_file, self._document(json_file))
        return self._categories

    def _document(self, json_file: Path) -> dict[str, Any]:
        if json_file not in self._documents:
            self._documents[json_file] = load_coco(json_file)
        return self._documents[json_file]

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of each label: ``category_ids[label - 1]``."""
        return sorted(self.categories)

    @property
    def num_classes(self) -> int:
        """Object categories K (background excluded); the CLI links it to the model."""
        return len(self.categories)

    def coco_gt(self, stage: str) -> COCO:
        """The pycocotools ground truth of ``"val"`` or ``"test"`` (after ``setup``)."""
        if stage not in self._coco:
            raise RuntimeError(f"the {stage} split is not set up; call setup() first")
        return self._coco[stage]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}
        for split in wanted.get(stage or "fit", ["train", "val", "test"]):
            if split in self._datasets:
                continue
            twin = {"val": "test", "test": "val"}.get(split)
            if twin in self._datasets and self.splits[twin] == self.splits[split]:
                # The test split defaults to the val files: one checked dataset and one
                # pycocotools index serve both.
                self._datasets[split], self._coco[split] = self._datasets[twin], self._coco[twin]
                self.summaries[split] = self.summaries[twin]
            else:
                self._datasets[split] = self._build(split)

    def _build(self, split: str) -> Dataset:
        json_file, image_root = self.splits[split]
        document = self._document(json_file)
        summary = self._check(split, json_file, image_root, document)
        if self.masks:
            _check_segmentations(json_file, document)
        label_of_category = {c: i + 1 for i, c in enumerate(self.category_ids)}
        transforms = _transforms(
            label_of_category, train=split == "train", flip=self.horizontal_flip, masks=self.masks
        )
        base = _IndexedCocoDetection(image_root, coco_index(document), transforms)
        keys = ("image_id", "boxes", "labels", "iscrowd") + (("masks",) if self.masks else ())
        dataset = wrap_dataset_for_transforms_v2(base, target_keys=keys)
        if split != "train":
            self._coco[split] = base.coco
            return dataset
        if self.keep_empty_train_images:
            return dataset
        position = {image_id: i for i, image_id in enumerate(base.ids)}
        kept = [position[i] for i in _trainable_ids(base.coco)]
        log.info(
            "%s: training on %d of %d images (the rest have no usable box)",
            json_file,
            len(kept),
            summary.num_images,
        )
        return Subset(dataset, kept)

    def _check(
        self, split: str, json_file: Path, image_root: Path, document: dict[str, Any]
    ) -> COCOSummary:
        if self.check_files:
            summary = check_coco(json_file, image_root, document)
        else:
            summary = COCOSummary(json_file, 0, 0, _categories(json_file, document), [])
        if summary.categories.keys() != self.categories.keys():
            raise COCOFormatError(
                f"{json_file}: categories {sorted(summary.categories)} differ from those of "
                f"{self.splits['val'][0]} ({sorted(self.categories)}); the splits of one "
                "dataset must share their category ids"
            )
        if summary.degenerate_annotation_ids:
            ids = summary.degenerate_annotation_ids
            shown = f"{ids[:10]}{' ...' if len(ids) > 10 else ''}"
            log.warning(
                "%s: dropping %d boxes of non-positive size (ids %s)", json_file, len(ids), shown
            )
        self.summaries[split] = summary
        return summary

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        if split not in self._datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return DataLoader(
            self._datasets[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_detection,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


def _categories(json_file: Path, document: dict[str, Any]) -> dict[int, str]:
    try:
        return {int(c["id"]): str(c["name"]) for c in document["categories"]}
    except (ValueError, KeyError, TypeError) as err:
        raise COCOFormatError(f"{json_file}: cannot read its categories ({err!r})") from err


def _check_segmentations(json_file: Path, document: dict[str, Any]) -> None:
    missing = [a.get("id") for a in document.get("annotations", []) if not a.get("segmentation")]
    if missing:
        shown = f"{missing[:10]}{' ...' if len(missing) > 10 else ''}"
        raise COCOFormatError(
            f"{json_file}: {len(missing)} annotations have no segmentation (ids {shown}); "
            "instance masks (data.masks, Mask R-CNN) need polygons or RLE for every annotation"
        )


class _IndexedCocoDetection(CocoDetection):
    """torchvision's ``CocoDetection`` over a ready pycocotools index.

    A subclass, so that ``wrap_dataset_for_transforms_v2`` still treats it as COCO; only the
    parsing in ``CocoDetection.__init__`` is skipped.
    """

    def __init__(self, root: Path, coco: COCO, transforms: Any) -> None:
        VisionDataset.__init__(self, str(root), transforms=transforms)
        self.coco = coco
        self.ids = sorted(coco.imgs)


class DetectionModule(lightning.LightningModule):
    """A torchvision detector with FPN on a registry trunk; reports COCO box AP in percent.

    ``detector`` picks Faster R-CNN (the default), Mask R-CNN, RetinaNet or FCOS
    (``build_detector``). Mask R-CNN trains on the data's instance masks
    (``COCODetectionDataModule(masks=True)``) and reports mask AP beside box AP.

    Optimisation follows detectron2's: SGD with momentum and weight decay on the trainable
    parameters, a linear warm-up from ``warmup_factor * lr``, then the rate times ``gamma`` at
    each milestone. Milestones are fractions of the run (``trainer.estimated_stepping_batches``):
    the "2x" schedule's 120k and 160k of 180k iterations are ``[0.6667, 0.8889]``.

    Validation and test collect the detections of each process in COCO format (XYWH boxes in
    original image pixels, COCO category ids), gather them across processes, evaluate them with
    pycocotools on rank 0 and log ``<stage>/AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``
    with the same values on every rank (mask AP as ``<stage>/segm_AP``, ...). The last result
    is ``last_ap`` (``last_segm_ap``), over ``last_num_images`` images, for the weights after
    ``last_ap_step`` optimizer steps.

    Args:
        model_name (str): registry trunk ("se_resnet50").
        model_kwargs (dict[str, Any] | None): extra ``backbones.create_model`` keywords
            (None: none).
        num_classes (int): object categories, background excluded; linked from the data (80).
        detector (str): "faster_rcnn", "mask_rcnn", "retinanet" or "fcos" ("faster_rcnn").
        trainable_stages (int | None): trunk levels trained from the deepest (3; None: all).
        norm (str): "frozen_bn", "bn" or "syncbn" ("frozen_bn").
        weights (str | None): registry checkpoint that initialises the trunk (None: random).
        out_channels (int): FPN channels (256).
        min_size (int | Sequence[int]): shorter image side; a list trains multi-scale (800).
        max_size (int): longer side cap (1333).
        detector_kwargs (dict[str, Any] | None): further arguments of the torchvision detector.
        lr (float): base learning rate (0.02: detectron2's for 16 images per step).
        momentum (float): SGD momentum (0.9).
        weight_decay (float): L2 weight decay (1e-4).
        milestones (Sequence[float]): fractions of the run where the rate drops
            ((0.6667, 0.8889): 120k and 160k of 180k).
        gamma (float): decay factor at each milestone (0.1).
        warmup_steps (int): optimizer steps of linear warm-up (1000).
        warmup_factor (float): warm-up start as a multiple of ``lr`` (0.001).

    A NaN or infinite loss or gradient stops training as in ``ClassificationModule``, the flag
    read every ``nonfinite_check_every`` optimizer steps (100).
    """

    nonfinite_check_every = 100

    def __init__(
        self,
        model_name: str = "se_resnet50",
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int = 80,
        *,
        detector: Literal["faster_rcnn", "mask_rcnn", "retinanet", "fcos"] = "faster_rcnn",
        trainable_stages: int | None = 3,
        norm: Literal["frozen_bn", "bn", "syncbn"] = "frozen_bn",
        weights: str | None = None,
        out_channels: int = 256,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        detector_kwargs: dict[str, Any] | None = None,
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        milestones: Sequence[float] = (0.6667, 0.8889),
        gamma: float = 0.1,
        warmup_steps: int = 1000,
        warmup_factor: float = 0.001,
    ) -> None:
        super().__init__()
        milestones = [float(m) for m in milestones]
        check_schedule("multistep", milestones, None, "linear", warmup_steps)
        if not 0 < warmup_factor <= 1:
            raise InputError(f"warmup_factor={warmup_factor} must be in (0, 1]")
        if detector not in DETECTORS:
            raise InputError(
                f"model.detector={detector!r} is not supported; expected one of {list(DETECTORS)}"
            )
        model_kwargs = dict(model_kwargs or {})
        detector_kwargs = dict(detector_kwargs or {})
        if not isinstance(min_size, int):
            min_size = [int(s) for s in min_size]
        self.save_hyperparameters()
        self.with_masks = detector == "mask_rcnn"
        self.model = build_detector(
            detector,
            model_name,
            num_classes,
            model_kwargs=model_kwargs,
            trainable_stages=trainable_stages,
            norm=norm,
            weights=weights,
            out_channels=out_channels,
            min_size=min_size,
            max_size=max_size,
            detector_kwargs=detector_kwargs,
        )
        self.last_ap: dict[str, float] = {}
        self.last_segm_ap: dict[str, float] = {}
        self.last_num_images = 0
        # Optimizer steps behind the weights; read back from a checkpoint for validate/test.
        self.trained_steps = 0
        self.last_ap_step = -1  # trained_steps of the weights behind last_ap
        self._detections: dict[int, list[dict[str, Any]]] = {}

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.with_masks and datamodule is not None and not getattr(datamodule, "masks", True):
            raise InputError(
                "model.detector mask_rcnn trains on instance masks: load them with "
                "COCODetectionDataModule(masks=True) (sebench tv-detect sets it)"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        keys = ("boxes", "labels", "masks") if self.with_masks else ("boxes", "labels")
        targets = [{key: t[key] for key in keys} for t in targets]
        losses = self.model(images, targets)
        # Float32 sum: under bf16 autocast the parts come back in low precision.
        loss = sum(value.float() for value in losses.values())
        batch_size = len(images)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.trained_steps = self.global_step

    def configure_callbacks(self) -> list[lightning.Callback]:
        # Stops on a NaN/inf loss or gradient without a host sync per step (tasks/_nonfinite.py).
        advice = (
            "Lower the learning rate or lengthen the warm-up, then resume with --ckpt_path last"
        )
        return [NonFiniteGuard(advice, check_every=self.nonfinite_check_every)]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.trained_steps = int(checkpoint.get("global_step", 0))

    # -- evaluation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._detections = {}

    def on_test_epoch_start(self) -> None:
        self._detections = {}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def _category_ids(self) -> list[int]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "coco_gt"):
            raise InputError(
                "DetectionModule evaluates against the data module's COCO ground truth: run it "
                "with COCODetectionDataModule (trainer.fit/validate/test(model, datamodule=...))"
            )
        return datamodule.category_ids

    def _collect(self, batch: Batch) -> None:
        images, targets = batch
        category_ids = self._category_ids()
        outputs = self.model(images)
        for output, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            self._detections[image_id] = detections_to_coco(output, image_id, category_ids)

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    def _evaluate(self, stage: str) -> None:
        if self.trainer.sanity_checking:
            # A couple of batches say nothing about AP; the sanity check ran the code path.
            self._detections = {}
            return
        detections = _merge(_all_gather(self._detections))
        self._detections = {}
        iou_types = ("bbox", "segm") if self.with_masks else ("bbox",)
        ap = None
        if self.global_rank == 0:
            gt = self.trainer.datamodule.coco_gt(stage)
            flat = [d for per_image in detections.values() for d in per_image]
            # Only the images this run saw: limit_val_batches must not count the rest as missed.
            ap = {t: coco_ap(gt, flat, iou_type=t, image_ids=list(detections)) for t in iou_types}
        ap = _broadcast(ap)
        self.last_ap = dict(ap["bbox"])
        self.last_segm_ap = dict(ap.get("segm", {}))
        self.last_num_images = len(detections)
        self.last_ap_step = self.trained_steps
        for key in AP_KEYS:
            self.log(f"{stage}/{key}", ap["bbox"][key], prog_bar=key in ("AP", "AP50"),
                     sync_dist=True)
            if self.with_masks:
                self.log(f"{stage}/segm_{key}", ap["segm"][key], sync_dist=True)

    # -- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = sgd(self.trainer, params, lr=hp.lr, momentum=hp.momentum,
                        weight_decay=hp.weight_decay)  # fmt: skip
        scheduler = step_scheduler(
            self.trainer,
            optimizer,
            schedule="multistep",
            milestones=tuple(hp.milestones),
            gamma=hp.gamma,
            step_every=None,
            warmup_steps=hp.warmup_steps,
            warmup_factor=hp.warmup_factor,
            warmup="linear",
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _all_gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` without DDP."""
    if not _distributed():
        return [obj]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not _distributed():
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def _merge(per_rank: list[dict[int, list[dict[str, Any]]]]) -> dict[int, list[dict[str, Any]]]:
    """One entry per image: DistributedSampler pads the last batches with repeated images, whose
    duplicate detections would count as false positives."""
    merged: dict[int, list[dict[str, Any]]] = {}
    for detections in per_rank:
        for image_id, per_image in detections.items():
            merged.setdefault(image_id, per_image)
    return merged
