"""CIFAR data module: torchvision's on-disk format, errors, synthetic data, the two input paths.

The tests write tiny CIFAR-10 / CIFAR-100 pickles in torchvision's layout (the same dict keys the
official Python-2 pickles give under torchvision's ``encoding="latin1"``) and read them through
the data module, i.e. through torchvision's own ``CIFAR10`` / ``CIFAR100`` classes. Tiny files
cannot match the official md5 sums, so these tests pass ``verify_md5=False``; one test checks
that the default rejects them with a message naming the file.
"""

from __future__ import annotations

import json
import math
import pickle
import urllib.request
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import RandomSampler, SequentialSampler
from torchvision.datasets import CIFAR10, CIFAR100

from tasks.classification.data.cifar import (
    MEAN,
    STD,
    CIFARDataModule,
    GPUResidentLoader,
    make_synthetic_cifar,
    shard_indices,
)


def _rows(images: np.ndarray) -> np.ndarray:
    # [N, 32, 32, 3] -> [N, 3072]: the 1024 red values, then green, then blue, row-major.
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)


def _dump(path: Path, entry: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(entry, handle, protocol=2)


def write_cifar10(root: Path, train: tuple, test: tuple) -> Path:
    """``root/cifar-10-batches-py/``: data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (images, labels), (test_images, test_labels) = train, test
    for i, part in enumerate(np.array_split(np.arange(len(images)), 5), start=1):
        _dump(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": [int(v) for v in labels[part]],
                "data": _rows(images[part]),
                "filenames": [f"img_{j}.png" for j in part],
            },
        )
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in test_labels],
            "data": _rows(test_images),
            "filenames": [f"test_{j}.png" for j in range(len(test_images))],
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": 10000})
    return folder


def write_cifar100(root: Path, train: tuple, test: tuple) -> Path:
    """``root/cifar-100-python/``: train, test, meta."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, (images, labels) in (("train", train), ("test", test)):
        _dump(
            folder / name,
            {
                "filenames": [f"{name}_{j}.png" for j in range(len(images))],
                "batch_label": f"{name}ing batch 1 of 1",
                "fine_labels": [int(v) for v in labels],
                "coarse_labels": [int(v) // 5 for v in labels],
                "data": _rows(images),
            },
        )
    meta = {"fine_label_names": [f"c{i}" for i in range(100)]}
    _dump(folder / "meta", {**meta, "coarse_label_names": [f"s{i}" for i in range(20)]})
    return folder


def random_split(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, num_classes, n)


def gradient_image() -> np.ndarray:
    """Red rises along columns, green along rows (4..252, never 0): position is readable."""
    ramp = (np.arange(32) * 8 + 4).astype(np.uint8)
    image = np.empty((32, 32, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = ramp[None, :], ramp[:, None], 128
    return image


def module(root: Path, dataset: str = "cifar10", **kwargs) -> CIFARDataModule:
    kwargs = {"batch_size": 4, "num_workers": 0, "pin_memory": False, **kwargs}
    return CIFARDataModule(str(root), dataset, verify_md5=kwargs.pop("verify_md5", False), **kwargs)


def unnormalise(x: torch.Tensor, dataset: str = "cifar10") -> torch.Tensor:
    """Normalised NCHW batch -> pixel values 0..255 (float)."""
    mean = torch.tensor(MEAN[dataset]).view(1, 3, 1, 1)
    std = torch.tensor(STD[dataset]).view(1, 3, 1, 1)
    return (x * std + mean) * 255


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_files_read_by_torchvision(tmp_path: Path, dataset: str) -> None:
    classes = {"cifar10": 10, "cifar100": 100}[dataset]
    train, test = random_split(20, classes, 1), random_split(6, classes, 2)
    train[1][:2] = [0, classes - 1]  # both ends of the label range are valid
    (write_cifar10 if dataset == "cifar10" else write_cifar100)(tmp_path, train, test)
    dm = module(tmp_path, dataset)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.num_classes, dm.dataset_name, dm.synthetic) == (classes, dataset, False)
    reader = {"cifar10": CIFAR10, "cifar100": CIFAR100}[dataset]
    assert isinstance(dm._splits["train"], reader), "not read by torchvision's dataset class"
    assert (len(dm._splits["train"]), len(dm._splits["test"])) == (20, 6)

    images, labels = next(iter(dm.val_dataloader()))  # evaluation: normalisation only
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == test[1][:4].tolist()
    expected = torch.from_numpy(test[0][:4]).permute(0, 3, 1, 2).float()
    assert torch.allclose(unnormalise(images, dataset), expected, atol=1e-3), "not (x-mean)/std"

    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert sum(len(y) for _, y in dm.train_dataloader()) == 20, "drop_last must be off"

    # Worker settings (no iteration: starting worker processes is not what is tested here).
    dm = module(tmp_path, dataset, num_workers=2)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.num_workers == 2 and train.persistent_workers and val.persistent_workers
    assert isinstance(train.sampler, RandomSampler) and isinstance(val.sampler, SequentialSampler)


def test_official_md5_checked_by_default(tmp_path: Path) -> None:
    write_cifar10(tmp_path, random_split(10, 10, 0), random_split(2, 10, 1))
    dm = module(tmp_path, verify_md5=True)
    dm.prepare_data()  # presence only
    with pytest.raises(ValueError, match=r"data_batch_1: md5 .*--data.verify_md5 false"):
        dm.setup("fit")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_missing_data_names_layout_and_ways_out(tmp_path: Path, dataset: str) -> None:
    dm = module(tmp_path / "nowhere", dataset)
    files = {"cifar10": ["cifar-10-batches-py", "data_batch_5", "test_batch", "batches.meta"]}
    files["cifar100"] = ["cifar-100-python", "train", "test", "meta"]
    for call in (dm.prepare_data, lambda: dm.setup("fit")):  # setup too: every DDP process
        with pytest.raises(FileNotFoundError) as info:
            call()
        message = str(info.value)
        for part in [*files[dataset], "--data.download true", "--data.synthetic true"]:
            assert part in message, f"{part!r} missing from:\n{message}"


def test_one_missing_file_is_named(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, random_split(10, 10, 0), random_split(2, 10, 1))
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: test_batch\)"):
        module(tmp_path).prepare_data()


def test_unreachable_network_gives_the_same_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real download attempt through a proxy on a closed local port: refused at once, offline
    # or not, and never a 170 MB download on a machine that has a network (no_proxy would let
    # the request bypass the proxy, so it goes).
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    refused = {"http": "http://127.0.0.1:9", "https": "http://127.0.0.1:9"}
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler(refused)))
    try:
        with pytest.raises(FileNotFoundError) as info:
            module(tmp_path, download=True).prepare_data()
        message = str(info.value)
        assert "download failed" in message and "cifar-10-batches-py" in message
        assert "--data.download true" in message and "--data.synthetic true" in message
        # Files already there: download=True does not touch the network.
        write_cifar10(tmp_path, random_split(10, 10, 0), random_split(2, 10, 1))
        module(tmp_path, download=True).prepare_data()
    finally:
        urllib.request.install_opener(None)


def test_labels_outside_num_classes(tmp_path: Path) -> None:
    images, labels = random_split(10, 10, 0)
    labels[5] = 10  # array_split puts index 5 into data_batch_3
    write_cifar10(tmp_path / "c10", (images, labels), random_split(2, 10, 1))
    with pytest.raises(ValueError, match=r"data_batch_3: label 10 is outside 0\.\.9"):
        module(tmp_path / "c10").setup("fit")

    test_images, test_labels = random_split(3, 100, 1)
    test_labels[2] = 100
    write_cifar100(tmp_path / "c100", random_split(4, 100, 0), (test_images, test_labels))
    with pytest.raises(ValueError, match=r"cifar-100-python/test: label 100 is outside 0\.\.99"):
        module(tmp_path / "c100", "cifar100").setup("test")


def test_unreadable_pickle_is_named(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, random_split(10, 10, 0), random_split(2, 10, 1))
    (folder / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"data_batch_2: not a CIFAR pickle"):
        module(tmp_path).setup("fit")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"data.dataset must be one of .*'cifar1000'"):
        CIFARDataModule(dataset="cifar1000")
    with pytest.raises(ValueError, match=r"data.cutout must be at least 0, got -1"):
        CIFARDataModule(cutout=-1)


def test_synthetic_is_offline_deterministic_and_learnable(tmp_path: Path) -> None:
    dm = CIFARDataModule(str(tmp_path / "absent"), "cifar100", synthetic=True, synthetic_size=50)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.synthetic and dm.num_classes == 100
    assert (len(dm._splits["train"]), len(dm._splits["test"])) == (50, 10)

    data, targets = make_synthetic_cifar(600, 10, seed=3, train=True)
    assert data.shape == (600, 32, 32, 3) and data.dtype == np.uint8
    assert np.bincount(targets).tolist() == [60] * 10, "labels must be balanced"
    again, _ = make_synthetic_cifar(600, 10, seed=3, train=True)
    other, _ = make_synthetic_cifar(600, 10, seed=4, train=True)
    assert np.array_equal(data, again) and not np.array_equal(data, other)

    # Class-dependent: the mean colour alone, nearest class mean, beats chance (10%) by far.
    test, test_targets = make_synthetic_cifar(200, 10, seed=3, train=False)
    centres = np.stack([data[targets == c].mean((0, 1, 2)) for c in range(10)])
    distance = ((test.mean((1, 2))[:, None] - centres[None]) ** 2).sum(-1)
    accuracy = (distance.argmin(1) == test_targets).mean()
    assert accuracy > 0.8, f"nearest-mean accuracy {accuracy:.2f}: classes not separable"


def _samples(dm: CIFARDataModule, epochs: int) -> torch.Tensor:
    loader = dm.train_dataloader()
    batches = []
    for epoch in range(epochs):
        if isinstance(loader, GPUResidentLoader):
            loader.set_epoch(epoch)
        for images, labels in loader:
            assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
            assert labels.dtype == torch.int64 and images.device.type == "cpu"
            batches.append(images)
    return torch.cat(batches)


@pytest.fixture(scope="module")
def gradient_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gradient")
    images = np.repeat(gradient_image()[None], 50, axis=0)
    write_cifar10(root, (images, np.arange(50) % 10), (images[:4], np.arange(4)))
    return root


@pytest.fixture(scope="module")
def crops(gradient_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path, resident in (("dataloader", False), ("resident", True)):
        dm = module(gradient_dir, gpu_resident=resident, batch_size=25)
        dm.setup("fit")
        out[path] = _samples(dm, epochs=8)  # 400 crops
    return out


@pytest.mark.parametrize("path", ["dataloader", "resident"])
def test_crop_and_flip_distribution(crops: dict[str, torch.Tensor], path: str) -> None:
    pixels = unnormalise(crops[path]).round()
    red, green = pixels[:, 0, 16], pixels[:, 1, :, 16]  # a row and a column through the centre
    # The centre always comes from the image (offsets move it by at most 4), so its colour
    # tells the original position; the gradient's direction tells the flip.
    flipped = red[:, 17] < red[:, 16]
    column = (red[:, 16] - 4) / 8
    dx = torch.where(flipped, column - 11, column - 12).long()
    dy = ((green[:, 16] - 4) / 8 - 12).long()
    n = len(pixels)
    assert 0.4 < flipped.float().mean() < 0.6, f"{path}: flip rate {flipped.float().mean():.2f}"
    for name, offsets in (("dx", dx), ("dy", dy)):
        counts = torch.bincount(offsets, minlength=9)
        assert len(counts) == 9 and counts.min() > 0.4 * n / 9, f"{path} {name}: {counts}"
    # Padding is zero *before* normalisation, as torchvision's RandomCrop pads the raw image.
    assert pixels.min() == 0 and pixels.max() == 252


def test_both_paths_same_value_range(crops: dict[str, torch.Tensor]) -> None:
    low = {path: x.amin((0, 2, 3)) for path, x in crops.items()}
    high = {path: x.amax((0, 2, 3)) for path, x in crops.items()}
    assert torch.allclose(low["dataloader"], low["resident"], atol=1e-5), low
    assert torch.allclose(high["dataloader"], high["resident"], atol=1e-5), high
    means = {path: x.mean((0, 2, 3)) for path, x in crops.items()}
    assert torch.allclose(means["dataloader"], means["resident"], atol=0.05), means


@pytest.mark.parametrize("resident", [False, True], ids=["dataloader", "resident"])
def test_cutout_zeroes_a_clipped_square(gradient_dir: Path, resident: bool) -> None:
    dm = module(gradient_dir, gpu_resident=resident, batch_size=25, cutout=8)
    dm.setup("fit")
    masks = (_samples(dm, epochs=4) == 0).all(1)  # no image or padding pixel normalises to 0
    rows, cols = masks.any(2), masks.any(1)
    assert torch.equal(masks, rows[:, :, None] & cols[:, None, :]), "cut-out area not a rectangle"
    height, width = rows.sum(1), cols.sum(1)
    assert height.max() == 8 and width.max() == 8 and height.min() >= 4 and width.min() >= 4
    # Centre uniform over the image: the square is whole in (25/32)^2 = 61% of the images.
    whole = ((height == 8) & (width == 8)).float().mean()
    assert 0.45 < whole < 0.77, f"whole squares in {whole:.2f} of the images"
    tops = rows.float().argmax(1)
    assert tops.min() == 0 and (tops + height).max() == 32, "squares never reach the borders"


def _resident(n: int, **kwargs) -> GPUResidentLoader:
    """n images of constant value i, labelled i (labels serve as identities here)."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 32, 32, 3)
    kwargs = {"batch_size": 4, "mean": MEAN["cifar10"], "std": STD["cifar10"], **kwargs}
    return GPUResidentLoader(images.contiguous(), torch.arange(n), **{"train": True, **kwargs})


def test_each_epoch_is_a_new_permutation() -> None:
    loader = _resident(13, cutout=4)
    assert len(loader) == 4
    epochs = [torch.cat([labels for _, labels in loader]) for _ in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(13)), "not each example exactly once"
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    # Reproducible from (seed, epoch): a fresh loader set to epoch 1 repeats epoch 1 exactly,
    # augmentation included, which is what an exact resume needs.
    first, fresh = _resident(13, cutout=4), _resident(13, cutout=4)
    list(first)
    fresh.set_epoch(1)
    for (a, la), (b, lb) in zip(first, fresh, strict=True):
        assert torch.equal(la, lb) and torch.equal(a, b)


def test_resident_batches_need_no_layout_copy() -> None:
    # Built channels-last on the device; left so unless a format is asked for, since the module
    # converts once to the model's own format.
    images, _ = next(iter(_resident(8)))
    assert images.shape == (4, 3, 32, 32)
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    nchw, _ = next(iter(_resident(8, memory_format=torch.contiguous_format)))
    assert nchw.is_contiguous() and torch.equal(nchw, images)


def test_data_seed_follows_seed_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test

    def first_batch(data: CIFARDataModule) -> torch.Tensor:
        data.setup("fit")
        return next(iter(data.train_dataloader()))[0]

    options = dict(synthetic=True, synthetic_size=32, batch_size=8, gpu_resident=True)
    L.seed_everything(3)
    following = CIFARDataModule(str(tmp_path), **options)
    assert following.seed == 3 and CIFARDataModule(str(tmp_path), seed=5, **options).seed == 5
    batch_3 = first_batch(following)
    L.seed_everything(4)
    assert following.seed == 4
    assert not torch.equal(first_batch(CIFARDataModule(str(tmp_path), **options)), batch_3)


def test_evaluation_order_is_fixed_and_unaugmented() -> None:
    loader = _resident(6, batch_size=4, train=False)
    images, labels = next(iter(loader))
    assert labels.tolist() == [0, 1, 2, 3]
    pixels = unnormalise(images)
    assert torch.allclose(pixels, labels.view(4, 1, 1, 1).float().expand_as(pixels), atol=1e-3)


@pytest.mark.parametrize("n", [12, 10])
def test_ddp_shards(n: int) -> None:
    world = 3
    shards = [shard_indices(torch.arange(n), rank=rank, world_size=world) for rank in range(world)]
    size = math.ceil(n / world)
    assert all(len(s) == size for s in shards), "every process needs the same number of steps"
    everything = torch.cat(shards).tolist()
    assert set(everything) == set(range(n))
    if n % world == 0:
        assert len(set(everything)) == n, "shards overlap"
    # The loaders of the three processes agree on the epoch's permutation and split it.
    loaders = [_resident(n, rank=rank, world_size=world, batch_size=3) for rank in range(world)]
    assert all(len(loader) == math.ceil(size / 3) for loader in loaders)
    seen = [int(i) for loader in loaders for _, labels in loader for i in labels]
    assert len(seen) == size * world and set(seen) == set(range(n))
    if n % world == 0:
        assert sorted(seen) == list(range(n)), "shards overlap"


class _Recorder(L.LightningModule):
    """Mean colour -> linear classifier; records what each process and epoch sees."""

    def __init__(self, out_dir: str = "") -> None:
        super().__init__()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
        self.out_dir = out_dir
        self.seen: dict[int, list[int]] = {}
        self.loader_types: set[str] = set()
        self.correct = self.total = 0

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        self.seen.setdefault(self.current_epoch, []).extend(labels.tolist())
        self.loader_types.add(type(self.trainer.train_dataloader).__name__)
        return nn.functional.cross_entropy(self.head(images), labels)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, labels = batch
        self.correct += int((self.head(images).argmax(1) == labels).sum())
        self.total += len(labels)

    def on_validation_epoch_start(self) -> None:
        self.correct = self.total = 0

    def on_train_end(self) -> None:
        if self.out_dir:
            record = {"seen": self.seen, "types": sorted(self.loader_types)}
            Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(record))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1.0, momentum=0.9)


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


@pytest.mark.parametrize("resident", [False, True], ids=["dataloader", "resident"])
def test_trainer_fit_on_synthetic(resident: bool) -> None:
    dm = CIFARDataModule(
        synthetic=True, synthetic_size=400, batch_size=20, num_workers=0, gpu_resident=resident
    )
    model = _Recorder()
    _trainer(max_epochs=3).fit(model, datamodule=dm)
    expected = sorted(dm._splits["train"].targets)
    for epoch, labels in model.seen.items():
        assert sorted(labels) == expected, f"epoch {epoch} did not see every image once"
    assert model.seen[0] != model.seen[1], "same order in two epochs"
    if resident:
        assert model.loader_types == {"GPUResidentLoader"}, "Lightning wrapped the loader"
    accuracy = model.correct / model.total
    assert accuracy > 0.5, f"validation accuracy {accuracy:.2f} on an easy task (chance 0.1)"


def test_resident_loader_under_ddp(tmp_path: Path) -> None:
    # Two real processes (gloo): Lightning leaves the iterable alone and the ranks split it.
    dm = CIFARDataModule(synthetic=True, synthetic_size=24, batch_size=4, gpu_resident=True)
    model = _Recorder(str(tmp_path))
    _trainer(max_epochs=1, devices=2, strategy="ddp_spawn", limit_val_batches=0).fit(model, dm)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["types"] == ["GPUResidentLoader"] for r in records), records
    rank0, rank1 = (sorted(r["seen"]["0"]) for r in records)
    assert len(rank0) == len(rank1) == 12, "each rank takes half of the 24 images"
    # Labels repeat (24 images, 10 classes: counts 3,3,3,3,2,...), so the union's label counts
    # show that the ranks took complementary halves, not the same one twice.
    expected = make_synthetic_cifar(24, 10, seed=0, train=True)[1]
    assert sorted(rank0 + rank1) == sorted(expected.tolist())


@pytest.mark.parametrize("cutout", [0, 8])
def test_resident_path_resumes_exactly(tmp_path: Path, cutout: int) -> None:
    # The loader reads the epoch from the trainer, so epoch 2 after a resume draws the same
    # permutation and augmentation as epoch 2 of an uninterrupted run.
    def fit(epochs: int, ckpt_path: str | None = None) -> L.Trainer:
        L.seed_everything(0)
        kwargs = {"synthetic_size": 60, "batch_size": 8, "cutout": cutout}
        dm = CIFARDataModule(synthetic=True, gpu_resident=True, **kwargs)
        trainer = _trainer(max_epochs=epochs, limit_val_batches=0)
        trainer.fit(_Recorder(), dm, ckpt_path=ckpt_path)
        return trainer

    straight = fit(2).lightning_module
    first = fit(1)
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = fit(2, str(tmp_path / "epoch1.ckpt")).lightning_module
    assert resumed.seen[1] == straight.seen[1], "epoch 2 saw another order after resuming"
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resuming"
