"""Small datasets in CIFAR-10's on-disk format (cifar-10-batches-py), for the tests.

CIFAR-10 is not shipped and this machine is offline, so its path through torchvision
is tested with files written here in exactly its format: five pickled training
batches, a test batch and `batches.meta`. `declare` writes the ROBUSTKIT_DATASETS
overrides (the files' MD5s and split sizes) that let `data.load("cifar10")` accept
them; everything else about loading is the real code path.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np

from robustkit import datasets

FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def write(root: Path, x_train, y_train, x_test, y_test) -> Path:
    """Write uint8 images (N, 3, 32, 32) and labels as CIFAR-10 batches under
    `root/cifar-10-batches-py`; return that folder."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    parts = zip(np.array_split(x_train, 5), np.array_split(y_train, 5))
    for name, (x, y) in zip(TRAIN, parts):
        _dump(folder / name, x, y, name)
    _dump(folder / "test_batch", x_test, y_test, "testing batch 1 of 1")
    meta = {"label_names": list(datasets.TABLE["cifar10"].classes)}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return folder


def _dump(path: Path, x, y, label: str) -> None:
    batch = {
        "batch_label": label,
        "data": np.asarray(x, dtype=np.uint8).reshape(len(x), -1),
        "labels": [int(v) for v in y],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f)


def declare(folder: Path, overrides_path: Path) -> Path:
    """Write the ROBUSTKIT_DATASETS file declaring the files in `folder` as cifar10
    (their MD5s, their split sizes); return its path."""
    files = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    n_train = sum(_count(folder / name) for name in TRAIN)
    n_test = _count(folder / "test_batch")
    table = {"cifar10": {"files": files, "splits": [n_train, n_test]}}
    overrides_path.write_text(json.dumps(table))
    return overrides_path


def _count(path: Path) -> int:
    with open(path, "rb") as f:
        return len(pickle.load(f)["labels"])


def random(root: Path, n_per_batch: int = 6, seed: int = 0) -> Path:
    """Random images and labels: 5 x n_per_batch training, n_per_batch test."""
    rng = np.random.default_rng(seed)
    n = 5 * n_per_batch
    return write(
        root,
        rng.integers(0, 256, (n, 3, 32, 32)),
        np.arange(n) % 10,
        rng.integers(0, 256, (n_per_batch, 3, 32, 32)),
        np.arange(n_per_batch) % 10,
    )


def miniature(root: Path, n_train: int = 10_000, n_test: int = 1_000) -> Path:
    """A learnable CIFAR-10-format miniature: Fashion-MNIST images (a seeded draw of
    n_train training and n_test test images, their labels kept), placed at a random
    offset of 1-3 pixels in a 32x32 frame of random dark colour and tinted with a
    random dim colour per image, so a model has to cope with three channels, a
    shifted object and colours that carry no label information. The low contrast
    makes 4/255 and 8/255 matter as on CIFAR-10: a quick baseline keeps about 17%
    of its 72% under PGD at 4/255, a quick PGD-trained model about 35% of 49%."""
    from robustkit import data

    splits = data.load("fashion_mnist", n_train=n_train, n_test=n_test)
    rng = np.random.default_rng(0)

    def colour(x) -> np.ndarray:
        x = x.numpy()  # (N, 1, 28, 28) in [0, 1]
        n = len(x)
        frame = rng.uniform(0, 0.2, (n, 3, 1, 1)) * np.ones((n, 3, 32, 32))
        tint = rng.uniform(0.3, 0.55, (n, 3, 1, 1))
        for i, (dy, dx) in enumerate(rng.integers(1, 4, (n, 2))):
            patch = frame[i, :, dy : dy + 28, dx : dx + 28]
            frame[i, :, dy : dy + 28, dx : dx + 28] = np.maximum(patch, tint[i] * x[i])
        return np.round(frame * 255).astype(np.uint8)

    return write(
        root,
        colour(splits.x_train),
        splits.y_train.numpy(),
        colour(splits.x_test),
        splits.y_test.numpy(),
    )
