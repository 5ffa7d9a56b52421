"""Datasets as tensors in [0, 1], and batches sliced from them.

MNIST ships with the repository (`data/mnist/`, the four official IDX files) and
loads offline. Fashion-MNIST and CIFAR-10 go through torchvision's downloader into
`ROBUSTKIT_DATA` (default `<repo>/data/downloads`). Every load verifies the files:
their checksums (SHA-256 for the shipped MNIST, torchvision's MD5s for the
downloads) and the official counts, image shape and label range. Loaders never
normalize: the model's first layer does (`models.Normalize`), so `eps` is always in
pixel units.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from robustkit.types import Device
from robustkit.utils import ROOT

SHIPPED = ROOT / "data"

# SHA-256 of the official files (data/SOURCES.md has their provenance and MD5s).
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
# Examples per split (train, test) and the shape of one image, checked on every load.
COUNTS = {
    "mnist": (60_000, 10_000),
    "fashion_mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
}
SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
FASHION_URL = "https://github.com/zalandoresearch/fashion-mnist"

CLASSES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}
# Per-channel training-set statistics, for models.Normalize.
MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
DOWNLOAD_HELP = {
    "fashion_mnist": "the four files train-images-idx3-ubyte.gz,"
    " train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from"
    f" {FASHION_URL} (folder data/fashion)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted so"
    " that the folder cifar-10-batches-py sits",
}


class DataFileError(RuntimeError):
    """A data file is missing, truncated or corrupt; the message says how to fix it."""


class DataSplits(NamedTuple):
    """Train / validation / test splits: x float (N, C, H, W) in [0, 1], y int64 (N,)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]


def download_dir() -> Path:
    """Folder for downloaded datasets (`ROBUSTKIT_DATA` overrides the default)."""
    return Path(os.environ.get("ROBUSTKIT_DATA", SHIPPED / "downloads"))


def load(
    name: str = "mnist",
    *,
    n_train: int | None = None,
    n_val: int = 0,
    n_test: int | None = None,
    seed: int = 0,
    device: Device = "cpu",
    download: bool = True,
) -> DataSplits:
    """Load a dataset as tensors in [0, 1] on `device`, with seeded subsets.

    The validation set is drawn from the training set and is disjoint from it.
    Subsets are drawn with a generator seeded by `seed`, so the same arguments give
    the same examples on every machine, whatever the global RNG state.

    Args:
        name: "mnist" (ships offline), "fashion_mnist" or "cifar10" (downloaded).
        n_train: Training examples kept (None: all that remain after validation).
        n_val: Validation examples held out of the training set.
        n_test: Test examples kept (None: all).
        seed: Seed of the subset draw.
        device: Where the tensors live; batches are later sliced there.
        download: Allow torchvision to download a missing dataset.

    Returns:
        DataSplits with x float32 (N, C, H, W) in [0, 1] and y int64 (N,).
    """
    if name not in CLASSES:
        raise ValueError(f"unknown dataset {name!r}: use one of {sorted(CLASSES)}")
    readers = {
        "mnist": _read_mnist,
        "fashion_mnist": _read_fashion,
        "cifar10": _read_cifar,
    }
    x_train, y_train, x_test, y_test = readers[name](download)
    n_pool = len(x_train) - n_val
    for label, n, limit in [
        ("n_val", n_val, len(x_train)),
        ("n_train", n_train, n_pool),
        ("n_test", n_test, len(x_test)),
    ]:
        if n is not None and not (isinstance(n, int) and 0 <= n <= limit):
            raise ValueError(f"{label}={n!r} must be an int in [0, {limit}] for {name}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x_train), generator=gen).numpy()
    val_idx, train_idx = order[:n_val], order[n_val:][:n_train]
    test_idx = torch.randperm(len(x_test), generator=gen).numpy()[:n_test]
    if n_test is None:
        test_idx = np.sort(test_idx)  # the full test set keeps its official order

    def to_tensors(
        x: np.ndarray, y: np.ndarray, idx: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        x_u8 = torch.from_numpy(np.ascontiguousarray(x[idx])).to(device)
        return x_u8.float().div_(255), torch.from_numpy(y[idx].astype(np.int64)).to(
            device
        )

    return DataSplits(
        *to_tensors(x_train, y_train, train_idx),
        *to_tensors(x_train, y_train, val_idx),
        *to_tensors(x_test, y_test, test_idx),
        CLASSES[name],
    )


class Batches:
    """Mini-batches sliced from tensors already in memory (or on the GPU).

    Re-iterable; with `shuffle=True` each pass draws a new order from the global
    torch RNG. No per-image Python work, so small models are not starved.
    """

    def __init__(
        self, x: Tensor, y: Tensor, *, batch_size: int = 128, shuffle: bool = False
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        x, y = self.x, self.y
        if self.shuffle:
            perm = torch.randperm(len(x)).to(x.device)
            x, y = x[perm], y[perm]
        for i in range(0, len(x), self.batch_size):
            yield x[i : i + self.batch_size], y[i : i + self.batch_size]


# ---------------------------------------------------------------- file readers


def read_idx(path: Path, fix: str = "replace it with the original file") -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not) into a uint8 array of its shape.

    `fix` ends the error message of a truncated or corrupt file: how to restore it.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataFileError(f"{path} is truncated or corrupt ({err}): {fix}") from err
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataFileError(f"{path} is not an IDX file of bytes (bad header): {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header + int(np.prod(dims)):
        raise DataFileError(
            f"{path} holds {len(raw) - header} bytes of data but its header announces "
            f"shape {tuple(dims)}: the file is truncated or corrupt; {fix}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def sha256(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def official_md5(name: str) -> dict[str, str]:
    """MD5 of each official file of a downloaded dataset ("fashion_mnist": the .gz
    files, "cifar10": the batch files), from the tables torchvision's downloader
    checks against."""
    import torchvision.datasets as tvd

    if name == "fashion_mnist":
        return dict(tvd.FashionMNIST.resources)
    return dict(tvd.CIFAR10.train_list + tvd.CIFAR10.test_list)


def _read_mnist(download: bool) -> tuple[np.ndarray, ...]:
    folder = SHIPPED / "mnist"
    restore = (
        f"restore it with `git checkout -- data/mnist` (see {SHIPPED / 'SOURCES.md'})"
    )
    for fname, digest in MNIST_SHA256.items():
        path = folder / fname
        if not path.exists():
            raise DataFileError(f"MNIST file {path} is missing: {restore}")
        if sha256(path) != digest:
            raise DataFileError(f"MNIST file {path} fails its SHA-256 check: {restore}")
    return _idx_arrays("mnist", folder, ".gz", restore)


def _idx_arrays(
    name: str, folder: Path, suffix: str, fix: str
) -> tuple[np.ndarray, ...]:
    paths = [folder / (s + suffix) for s in IDX_STEMS]
    x_train, y_train, x_test, y_test = (read_idx(path, fix) for path in paths)
    arrays = x_train[:, None], y_train, x_test[:, None], y_test  # (N, 1, 28, 28)
    _check_splits(name, arrays, paths, fix)
    return arrays


def _read_fashion(download: bool) -> tuple[np.ndarray, ...]:
    raw = download_dir() / "FashionMNIST" / "raw"
    suffix = _present(raw, IDX_STEMS, (".gz", ""))
    if suffix is None:
        _download("fashion_mnist", raw, download)
        suffix = _present(raw, IDX_STEMS, (".gz", ""))
    fix = (
        "delete it and load again to re-download it, or put the official file "
        f"from {FASHION_URL} there"
    )
    # only the .gz files have official checksums; uncompressed ones get the counts
    _check_md5("fashion_mnist", [raw / (s + suffix) for s in IDX_STEMS], fix)
    return _idx_arrays("fashion_mnist", raw, suffix, fix)


def _read_cifar(download: bool) -> tuple[np.ndarray, ...]:
    folder = download_dir() / "cifar-10-batches-py"
    if _present(folder, CIFAR_FILES, ("",)) is None:
        _download("cifar10", folder, download)
    fix = f"delete {folder} and load again to re-download it"
    _check_md5("cifar10", [folder / f for f in CIFAR_FILES], fix)
    parts = [_read_cifar_batch(folder / f) for f in CIFAR_FILES]
    x_train = np.concatenate([x for x, _ in parts[:5]])
    y_train = np.concatenate([y for _, y in parts[:5]])
    arrays = x_train, y_train, *parts[5]
    train, test = folder / "data_batch_[1-5]", folder / "test_batch"
    _check_splits("cifar10", arrays, [train, train, test, test], fix)
    return arrays


def _check_md5(name: str, paths: list[Path], fix: str) -> None:
    """Refuse a file whose MD5 differs from the official one (where there is one)."""
    from torchvision.datasets.utils import check_integrity

    table = official_md5(name)
    for path in paths:
        if path.name in table and not check_integrity(path, table[path.name]):
            raise DataFileError(
                f"{path} fails its MD5 check: it is not the official {name} file "
                f"(another dataset's, or a damaged download); {fix}"
            )


def _check_splits(
    name: str, arrays: tuple[np.ndarray, ...], paths: list[Path], fix: str
) -> None:
    """Refuse splits (x_train, y_train, x_test, y_test), read from `paths`, whose
    sizes, image shape or labels are not those of dataset `name`."""
    k, shape = len(CLASSES[name]), SHAPES[name]
    splits = zip((arrays[:2], arrays[2:]), (paths[:2], paths[2:]), COUNTS[name])
    for (x, y), (x_path, y_path), n in splits:
        y_lo, y_hi = int(y.min(initial=0)), int(y.max(initial=0))
        if len(x) != len(y):
            problem = f"{x_path} has {len(x):,} images but {y_path} {len(y):,} labels"
        elif len(x) != n:
            problem = f"{x_path} has {len(x):,} images where {name} has {n:,}"
        elif x.shape[1:] != shape:
            problem = f"{x_path} has images of shape {x.shape[1:]}, not {shape}"
        elif y_lo < 0 or y_hi >= k:
            problem = f"{y_path} has labels outside 0-{k - 1} (min {y_lo}, max {y_hi})"
        else:
            continue
        raise DataFileError(f"{problem}: {fix}")


def _present(
    folder: Path, stems: tuple[str, ...], suffixes: tuple[str, ...]
) -> str | None:
    for suffix in suffixes:
        if all((folder / (s + suffix)).exists() for s in stems):
            return suffix
    return None


def _download(name: str, folder: Path, download: bool) -> None:
    where = (
        f"Download {DOWNLOAD_HELP[name]} in {folder.parent}"
        if name == "cifar10"
        else f"Put {DOWNLOAD_HELP[name]} in {folder}"
    )
    if not download:
        raise DataFileError(f"{name} is not in {folder} and download=False. {where}.")
    import torchvision.datasets as tvd

    dataset_cls = {"fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        dataset_cls(str(download_dir()), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - urllib, HTTP and checksum errors all land here
        raise DataFileError(
            f"could not download {name} ({type(err).__name__}: {err}). If this machine "
            f"is offline, {where[0].lower() + where[1:]} (or set ROBUSTKIT_DATA)."
        ) from err


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's dicts of NumPy arrays and refuses every other global."""

    ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fix = f"delete {path.parent} and load again to re-download it"
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
        x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
        raise DataFileError(f"{path} is truncated or corrupt ({err}): {fix}") from err
    if len(x) != len(y):
        raise DataFileError(f"{path} has {len(x)} images but {len(y)} labels: {fix}")
    return x, y
