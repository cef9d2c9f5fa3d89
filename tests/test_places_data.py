"""Places365 and image-folder data modules on tiny trees written in the real on-disk layouts.

The trees are read by torchvision's own ``Places365`` and ``ImageFolder`` classes: the files
are the real formats (categories file, file lists, JPEGs), only fewer and smaller.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import datasets

import backbones
from tasks.classification.data.places365 import (
    ImageFolderDataModule,
    Places365DataModule,
    read_places365_categories,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "places365"
TRAIN_CLASSES = (0, 7, 364)  # first, middle and last label
SMALL = dict(crop_size=32, resize_size=40, batch_size=4, num_workers=0)


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def _category(index: int) -> str:
    return f"/{chr(ord('a') + index % 26)}/scene_{index:03d}"


def write_places365(
    root: Path, *, split: str = "train-standard", small: bool = True, num_classes: int = 365
) -> dict[str, list[int]]:
    """Write torchvision's Places365 layout: categories, one train list, the val list, JPEGs."""
    root.mkdir(parents=True, exist_ok=True)
    categories = "".join(f"{_category(i)} {i}\n" for i in range(num_classes))
    (root / "categories_places365.txt").write_text(categories)
    size, variant = ("256" if small else "large"), split.split("-")[1]
    train_labels = [c for c in TRAIN_CLASSES if c < num_classes for _ in range(2)]
    lines = []
    for k, label in enumerate(train_labels):
        name = f"{_category(label)}/{k + 1:08d}.jpg"
        _jpeg(root / f"data_{size}_{variant}" / name.lstrip("/"), seed=k)
        lines.append(f"{name} {label}\n")
    (root / f"places365_{split.replace('-', '_')}.txt").write_text("".join(lines))
    val_labels = [train_labels[-1], train_labels[0], train_labels[2]]
    lines = []
    for k, label in enumerate(val_labels):
        name = f"Places365_val_{k + 1:08d}.jpg"
        _jpeg(root / f"val_{size}" / name, seed=100 + k, size=(40, 56))
        lines.append(f"{name} {label}\n")
    (root / "places365_val.txt").write_text("".join(lines))
    return {"train": train_labels, "val": val_labels}


@pytest.mark.parametrize(
    "split,small,train_crop",
    [
        ("train-standard", True, "random_resized"),
        ("train-challenge", True, "random"),
        ("train-standard", False, "random"),
    ],
)
def test_places365_tree_is_read_by_torchvision(tmp_path, split, small, train_crop):
    labels = write_places365(tmp_path / "places", split=split, small=small)
    dm = Places365DataModule(
        str(tmp_path / "places"), split=split, small=small, train_crop=train_crop, **SMALL
    )
    assert (dm.num_classes, dm.synthetic, dm.dataset_name) == (365, False, "places365")
    dm.setup("fit")
    assert isinstance(dm.train_set, datasets.Places365) and isinstance(
        dm.val_set, datasets.Places365
    )
    assert len(dm.train_set) == len(labels["train"]) and len(dm.val_set) == 3

    # Training batches leave the workers as uint8; the data module normalises them on the device.
    images, targets = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8, images.dtype
    images, targets = dm.on_after_batch_transfer((images, targets), 0)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32, images.shape
    assert targets.dtype == torch.int64 and set(targets.tolist()) <= set(TRAIN_CLASSES)
    assert -2.2 < images.min() < images.max() < 2.7, "ImageNet-normalised values expected"

    batches = list(dm.val_dataloader())
    val_images = torch.cat([b[0] for b in batches])
    assert [t for b in batches for t in b[1].tolist()] == labels["val"], "val keeps list order"
    assert val_images.shape == (3, 3, 32, 32)
    again = torch.cat([b[0] for b in dm.test_dataloader()])
    assert torch.equal(val_images, again), "evaluation (resize + centre crop) is deterministic"


def test_places365_validate_with_a_real_trainer(tmp_path):
    write_places365(tmp_path / "places")
    dm = Places365DataModule(str(tmp_path / "places"), **SMALL)

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(3, dm.num_classes)
            self.seen = 0

        def validation_step(self, batch, batch_idx):
            images, targets = batch
            self.seen += len(targets)
            loss = torch.nn.functional.cross_entropy(self.head(images.mean((2, 3))), targets)
            self.log("val/loss", loss)

    model = Tiny()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.validate(model, datamodule=dm)
    assert model.seen == 3 and dm.train_set is None, "validate reads only the val split"


def test_num_classes_follows_the_categories_file(tmp_path):
    dm = Places365DataModule(str(tmp_path / "absent"))
    assert dm.num_classes == 365, "before a download the official count is reported"
    write_places365(tmp_path / "places", num_classes=10)
    assert Places365DataModule(str(tmp_path / "places")).num_classes == 10
    assert len(read_places365_categories(tmp_path / "places" / "categories_places365.txt")) == 10


def test_missing_data_dir_gives_layout_and_download_flag(tmp_path):
    dm = Places365DataModule(str(tmp_path / "nowhere"), **SMALL)
    with pytest.raises(FileNotFoundError, match="categories_places365.txt") as info:
        dm.setup("fit")
    message = str(info.value)
    assert "--data.download true" in message and "data_256_standard" in message, message
    assert "places365_val.txt" in message and "val_256" in message, message


def test_missing_file_list_is_named(tmp_path):
    write_places365(tmp_path / "p")
    (tmp_path / "p" / "places365_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"places365_val\.txt does not exist"):
        Places365DataModule(str(tmp_path / "p"), **SMALL).setup("validate")


def test_archive_folder_not_renamed_gets_a_hint(tmp_path):
    write_places365(tmp_path / "p")
    (tmp_path / "p" / "data_256_standard").rename(tmp_path / "p" / "data_256")
    with pytest.raises(FileNotFoundError, match="torchvision names that folder data_256_standard"):
        Places365DataModule(str(tmp_path / "p"), **SMALL).setup("fit")


def test_list_naming_a_missing_image_fails_in_setup(tmp_path):
    labels = write_places365(tmp_path / "p")
    missing = tmp_path / "p" / "val_256" / "Places365_val_00000002.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError) as info:
        Places365DataModule(str(tmp_path / "p"), **SMALL).setup("validate")
    message = str(info.value)
    assert "places365_val.txt, line 2" in message and str(missing) in message, message
    assert labels  # the tree was written


def test_image_vanishing_after_setup_fails_at_load_naming_the_list(tmp_path):
    write_places365(tmp_path / "p")
    dm = Places365DataModule(str(tmp_path / "p"), **SMALL)
    dm.setup("validate")
    gone = tmp_path / "p" / "val_256" / "Places365_val_00000003.jpg"
    gone.unlink()
    with pytest.raises(FileNotFoundError) as info:
        dm.val_set[2]
    assert str(gone) in str(info.value) and "places365_val.txt" in str(info.value)


def test_corrupt_jpeg_is_named_even_from_a_worker_process(tmp_path):
    write_places365(tmp_path / "p")
    bad = tmp_path / "p" / "val_256" / "Places365_val_00000001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    dm = Places365DataModule(str(tmp_path / "p"), **{**SMALL, "num_workers": 1})
    dm.setup("validate")
    with pytest.raises(ValueError, match="cannot read image .*Places365_val_00000001.jpg") as info:
        next(iter(dm.val_dataloader()))
    assert "places365_val.txt" in str(info.value)


@pytest.mark.parametrize(
    "line,message",
    [
        ("/a/scene_000/00000009.jpg 365\n", "line 7: label 365 is outside 0..364"),
        ("/a/scene_000/00000009.jpg -1\n", "line 7: label -1 is outside 0..364"),
        ("/a/scene_000/00000009.jpg\n", "line 7: no label"),
        ("/a/scene_000/00000009.jpg seven\n", "line 7: expected 'IMAGE LABEL'"),
        ("\n", "line 7: expected 'IMAGE LABEL'"),
    ],
)
def test_bad_label_names_list_line_and_label(tmp_path, line, message):
    write_places365(tmp_path / "p")
    list_file = tmp_path / "p" / "places365_train_standard.txt"
    list_file.write_text(list_file.read_text() + line)
    with pytest.raises(ValueError, match="places365_train_standard.txt") as info:
        Places365DataModule(str(tmp_path / "p"), **SMALL).setup("fit")
    assert message in str(info.value), str(info.value)


def test_label_checked_against_a_smaller_categories_file(tmp_path):
    write_places365(tmp_path / "p", num_classes=10)
    val = tmp_path / "p" / "places365_val.txt"
    val.write_text(val.read_text() + "Places365_val_00000001.jpg 12\n")
    with pytest.raises(ValueError, match=r"places365_val.txt, line 4: label 12 is outside 0\.\.9"):
        Places365DataModule(str(tmp_path / "p"), **SMALL).setup("validate")


def test_malformed_categories_file_is_named(tmp_path):
    write_places365(tmp_path / "p")
    categories = tmp_path / "p" / "categories_places365.txt"
    categories.write_text(categories.read_text().replace("/a/scene_026 26", "/a/scene_026"))
    with pytest.raises(
        ValueError, match="categories_places365.txt, line 27: expected 'NAME INDEX'"
    ):
        Places365DataModule(str(tmp_path / "p"), **SMALL).setup("fit")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(split="val"), "data.split must be one of"),
        (dict(train_crop="center"), "data.train_crop must be one of"),
        (dict(crop_size=300), "data.crop_size must be positive and at most data.resize_size"),
    ],
)
def test_bad_arguments_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Places365DataModule("data/places365", **kwargs)


def write_image_folder(root: Path, train: list[str], val: list[str]) -> None:
    for part, classes in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            for k in range(2):
                _jpeg(root / part / name / f"{k}.jpg", seed=10 * c + k)


def test_image_folder_happy_path(tmp_path):
    write_image_folder(tmp_path / "imgs", ["cat", "dog", "eel"], ["cat", "dog", "eel"])
    dm = ImageFolderDataModule(str(tmp_path / "imgs"), train_crop="random", **SMALL)
    assert (dm.num_classes, dm.synthetic, dm.dataset_name) == (3, False, "imagefolder")
    dm.setup("fit")
    images, targets = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (4, 3, 32, 32) and targets.dtype == torch.int64
    assert [t for _, b in dm.val_dataloader() for t in b.tolist()] == [0, 0, 1, 1, 2, 2]


def test_image_folder_class_mismatch_and_missing_folder(tmp_path):
    write_image_folder(tmp_path / "imgs", ["cat", "dog"], ["cat", "emu"])
    with pytest.raises(ValueError, match=r"only in train: \['dog'\], only in val: \['emu'\]"):
        ImageFolderDataModule(str(tmp_path / "imgs"), **SMALL).setup("fit")
    (tmp_path / "only_train" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"only_train/val does not exist; expected layout"):
        ImageFolderDataModule(str(tmp_path / "only_train"), **SMALL).setup("fit")


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_places365_configs_build_their_data_module(config):
    cfg = yaml.safe_load(config.read_text())
    assert cfg["data"]["class_path"].endswith("Places365DataModule"), config
    dm = Places365DataModule(**cfg["data"]["init_args"])
    assert dm.split == "train-challenge" and dm.num_classes == 365, "Table 6 is Places365-Challenge"
    model = cfg["model"]
    assert model["model_name"] in backbones.list_models(), model["model_name"]
    assert all(0 < m < 1 for m in model["milestones"]), "milestones are fractions of training"
