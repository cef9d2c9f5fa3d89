"""litdata shards: `sebench prepare-shards`, streaming training under DDP, mid-epoch resume.

Real litdata on JPEG trees written here (ImageFolder layout, 40x48 images). In the "identity"
tree every class has one training image, so a label names its sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from litdata import StreamingDataset
from PIL import Image

from sebench.cli import main as sebench
from tasks.classification import ClassificationModule, ImageFolderDataModule, Places365DataModule
from tasks.classification.data.shards import read_info, split_url

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(crop_size=32, resize_size=40, batch_size=4, num_workers=0)
IDENTITY_CLASSES = 24
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
TINY_MODEL = {"layers": [1, 1, 1], "widths": [8, 16, 32], "stem_width": 8}
TRAINER = dict(accelerator="cpu", logger=False, enable_progress_bar=False,
               enable_model_summary=False)  # fmt: skip


def write_tree(root: Path, colours: list[tuple[int, int, int]], per_class: dict[str, int]) -> Path:
    """An ImageFolder tree: one class per colour, noisy images of that colour."""
    rng = np.random.default_rng(0)
    for part, count in per_class.items():
        for c, colour in enumerate(colours):
            folder = root / part / f"class_{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                noise = rng.integers(-40, 40, (40, 48, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.jpg", quality=90)
    return root


def data_config(path: Path, data_dir: Path, **init_args) -> Path:
    data = {"class_path": "tasks.classification.ImageFolderDataModule",
            "init_args": {"data_dir": str(data_dir), **SMALL, **init_args}}  # fmt: skip
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def prepare(tmp: Path, tree: Path, out: Path, *extra: str) -> int:
    config = data_config(tmp / f"{out.name}.yaml", tree)
    return sebench(["prepare-shards", "--data-config", str(config), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("identity")
    rng = np.random.default_rng(1)
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(IDENTITY_CLASSES)]
    tree = write_tree(tmp / "tree", colours, {"train": 1, "val": 1})
    assert prepare(tmp, tree, tmp / "shards", "--num-workers", "2") == 0
    return tree, tmp / "shards"


def test_prepare_shards_keeps_the_bytes_labels_and_class_list(identity, tmp_path, capsys):
    tree, shards = identity
    info = read_info(str(shards))
    classes = [f"class_{c:02d}" for c in range(IDENTITY_CLASSES)]
    assert (info.dataset, info.classes) == ("imagefolder", classes)
    assert info.sizes == {"train": IDENTITY_CLASSES, "val": IDENTITY_CLASSES}
    train = StreamingDataset(split_url(str(shards), "train"))
    items = [train[i] for i in range(len(train))]
    for item in items:
        path = tree / item["name"]
        assert bytes(item["image"]) == path.read_bytes(), item["name"]
        assert classes[item["label"]] == path.parent.name
    labels = [item["label"] for item in items]
    assert sorted(labels) == list(range(IDENTITY_CLASSES)) and labels != sorted(labels), labels

    # A non-empty folder needs --overwrite (one line on stderr, exit status 2).
    capsys.readouterr()
    assert prepare(tmp_path, tree, shards) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and len(err.splitlines()) == 1, err


def test_shards_of_another_dataset_or_class_list_are_refused(identity, tmp_path):
    tree, shards = identity
    places = Places365DataModule(str(tmp_path / "absent"), format="shards", shards=str(shards))
    with pytest.raises(ValueError, match=r"hold dataset 'imagefolder' .*reads 'places365'"):
        places.setup("fit")
    other = write_tree(tmp_path / "other", COLOURS, {"train": 1})
    module = ImageFolderDataModule(str(other), format="shards", shards=str(shards), **SMALL)
    with pytest.raises(ValueError, match="another class list") as info:
        module.setup("fit")
    message = str(info.value)
    assert "[class_00, class_01" in message and "(24 classes)" in message, message
    assert "(4 classes)" in message, message
    with pytest.raises(FileNotFoundError, match="holds no shards.*prepare-shards"):
        ImageFolderDataModule(str(tree), format="shards", shards=str(tmp_path)).setup("fit")


def test_unreadable_images_are_named_when_writing_and_when_reading_shards(tmp_path, capsys):
    tree = write_tree(tmp_path / "tree", COLOURS[:2], {"train": 2, "val": 1})
    broken = tree / "train" / "class_01" / "1.jpg"
    intact = broken.read_bytes()
    broken.write_bytes(intact[:100])  # not even a header: found while writing
    assert prepare(tmp_path, tree, tmp_path / "shards", "--num-workers", "1") == 2
    err = capsys.readouterr().err
    assert f"image {broken} cannot be read" in err and "--overwrite" in err, err

    broken.write_bytes(intact[: len(intact) * 3 // 4])  # the header survives, the scan does not
    args = ("--num-workers", "1", "--overwrite")
    assert prepare(tmp_path, tree, tmp_path / "shards", *args) == 0
    module = ImageFolderDataModule(str(tree), format="shards", shards=str(tmp_path / "shards"),
                                   **{**SMALL, "batch_size": 1})  # fmt: skip
    module.setup("fit")
    with pytest.raises(ValueError) as info:
        list(module.train_dataloader())
    message = str(info.value)
    assert f"{tmp_path / 'shards' / 'train'}, sample 3 (train/class_01/1.jpg)" in message, message


class Recorder(L.Callback):
    """The labels of every training batch, in order."""

    def __init__(self) -> None:
        self.labels: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.labels.append(batch[1].tolist())


class Tiny(L.LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, num_classes)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
        return torch.nn.functional.cross_entropy(self.head(images.mean((2, 3))), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_run_stopped_mid_epoch_resumes_in_the_same_order(identity, tmp_path):
    tree, shards = identity

    def fit(root: Path, *, max_steps: int = -1, ckpt_path: str | None = None) -> Recorder:
        L.seed_everything(0)
        data = ImageFolderDataModule(str(tree), format="shards", shards=str(shards),
                                     **{**SMALL, "num_workers": 1})  # fmt: skip
        recorder = Recorder()
        checkpoint = ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=-1)
        trainer = L.Trainer(**TRAINER, max_epochs=2, max_steps=max_steps, limit_val_batches=0,
                            callbacks=[recorder, checkpoint])  # fmt: skip
        trainer.fit(Tiny(IDENTITY_CLASSES), data, ckpt_path=ckpt_path)
        return recorder

    straight = fit(tmp_path / "straight").labels
    assert len(straight) == 12, "24 samples in batches of 4, two epochs"
    epochs = [sorted(sum(straight[i : i + 6], [])) for i in (0, 6)]
    assert epochs == [list(range(IDENTITY_CLASSES))] * 2, "every sample once per epoch"
    assert straight[:6] != straight[6:], "each epoch is shuffled anew"

    first = fit(tmp_path / "stopped", max_steps=3).labels
    ckpt = tmp_path / "stopped" / "epoch=0-step=3.ckpt"
    state = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"][0]["num_samples_yielded"] == 12, "the loader's position"
    rest = fit(tmp_path / "resumed", ckpt_path=str(ckpt)).labels
    assert first + rest == straight, (first, rest, straight)


RECORD_RANKS = '''
import json
import os

import lightning


class RankSamples(lightning.Callback):
    """Each rank writes the labels of the training batches it saw, per epoch."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.epochs = out_dir, []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.epochs[-1] += batch[1].tolist()

    def on_fit_end(self, trainer, pl_module):
        path = os.path.join(self.out_dir, f"rank{trainer.global_rank}.json")
        with open(path, "w") as f:
            json.dump({"epochs": self.epochs, "world_size": trainer.world_size}, f)
'''


def test_ddp_two_processes_read_every_sample_once_per_epoch(identity, tmp_path):
    tree, shards = identity
    (tmp_path / "record_ranks.py").write_text(textwrap.dedent(RECORD_RANKS))
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_epochs": 2,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "runs"),
                    "callbacks": [{"class_path": "record_ranks.RankSamples",
                                   "init_args": {"out_dir": str(tmp_path)}}]},
        "model": {"model_name": "se_preact_resnet110", "model_kwargs": TINY_MODEL, "lr": 0.05},
        "data": yaml.safe_load(data_config(tmp_path / "d.yaml", tree, format="shards",
                                           shards=str(shards)).read_text())["data"],
    }  # fmt: skip
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "sebench.cli", "fit", "--config", str(tmp_path / "ddp.yaml")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path), env.get("PYTHONPATH", "")])
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for epoch in range(2):
        seen = [ranks[r]["epochs"][epoch] for r in (0, 1)]
        assert len(seen[0]) == len(seen[1]) == IDENTITY_CLASSES // 2, seen
        assert not set(seen[0]) & set(seen[1]), f"epoch {epoch}: ranks overlap: {seen}"
        assert sorted(seen[0] + seen[1]) == list(range(IDENTITY_CLASSES)), seen
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1], "each epoch is shuffled anew"


def test_fit_and_test_on_shards_learn_as_the_folder_path_does(tmp_path):
    tree = write_tree(tmp_path / "tree", COLOURS, {"train": 8, "val": 4})
    assert prepare(tmp_path, tree, tmp_path / "shards", "--num-workers", "1") == 0
    errors = {}
    # The shards are read with the GPU path's code (decoding on the CPU device here).
    for name, options in {"folder": {}, "shards": {"format": "shards",
                          "shards": str(tmp_path / "shards"), "decode": "gpu"}}.items():  # fmt: skip
        L.seed_everything(0)
        data = ImageFolderDataModule(
            str(tree), **{**SMALL, "batch_size": 8, "crop_size": 16, "resize_size": 20}, **options
        )
        model = ClassificationModule("se_preact_resnet110", TINY_MODEL, data.num_classes,
                                     lr=0.05, schedule="constant")  # fmt: skip
        trainer = L.Trainer(**TRAINER, max_epochs=4, enable_checkpointing=False)
        trainer.fit(model, data)
        test = trainer.test(model, data, verbose=False)[0]
        errors[name] = test["test/top1_err"]
    # Four classes: chance is 75% error.
    assert errors["folder"] < 30 and errors["shards"] < 30, errors
