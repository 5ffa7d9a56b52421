"""Datasets as tensors in [0, 1], and batches sliced from them.

What a dataset is (shape, classes, files, checksums, split sizes) is one row of
`robustkit.datasets`; this module only reads the files, through torchvision's
dataset classes. MNIST and Fashion-MNIST ship with the repository (`data/mnist/`,
`data/fashion-mnist/`, the official gzip files): their SHA-256 is checked on every
load, and torchvision reads a decompressed copy kept in the cache. CIFAR-10 goes
through torchvision's downloader into `ROBUSTKIT_DATA` (default
`<repo>/data/downloads`), its batches checked against their MD5s. Every load also
checks the official counts, image shape and label range. Loaders never normalize:
the model's first layer does (`models.Normalize`), so `eps` is in pixel units.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor

from robustkit import datasets
from robustkit.types import Device
from robustkit.utils import ROOT, cache_dir

SHIPPED = ROOT / "data"


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
    name: str,
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
        name: A dataset of `robustkit.datasets` ("mnist" and "fashion_mnist" ship
            offline; "cifar10" is downloaded on first use).
        n_train: Training examples kept (None: all that remain after validation).
        n_val: Validation examples held out of the training set.
        n_test: Test examples kept (None: all).
        seed: Seed of the subset draw.
        device: Where the tensors live; batches are later sliced there.
        download: Allow torchvision to download a missing dataset.

    Returns:
        DataSplits with x float32 (N, C, H, W) in [0, 1] and y int64 (N,).
    """
    ds = datasets.get(name)
    n_train_all, n_test_all = ds.splits
    for label, n, limit in [
        ("n_val", n_val, n_train_all),
        ("n_train", n_train, n_train_all - (n_val if isinstance(n_val, int) else 0)),
        ("n_test", n_test, n_test_all),
    ]:
        if n is not None and not (
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= limit
        ):
            raise ValueError(f"{label}={n!r} must be an int in [0, {limit}] for {name}")
    x_train, y_train, x_test, y_test = _read(ds, download)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x_train), generator=gen)
    val_idx, train_idx = order[:n_val], order[n_val:][:n_train]
    test_idx = torch.randperm(len(x_test), generator=gen)[:n_test]
    if n_test is None:
        test_idx = test_idx.sort().values  # the full test set keeps its official order

    def to_tensors(x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        return x[idx].to(device).float().div_(255), y[idx].to(device)

    return DataSplits(
        *to_tensors(x_train, y_train, train_idx),
        *to_tensors(x_train, y_train, val_idx),
        *to_tensors(x_test, y_test, test_idx),
        ds.classes,
    )


class Batches:
    """Mini-batches sliced from tensors already in memory (or on the GPU).

    Re-iterable; with `shuffle=True` each pass draws a new order from the global
    torch RNG, and `transform(x)` (e.g. `crop_flip`) is applied to each batch. No
    per-image Python work, so small models are not starved.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.transform = transform

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        x, y = self.x, self.y
        if self.shuffle:
            perm = torch.randperm(len(x)).to(x.device)
            x, y = x[perm], y[perm]
        for i in range(0, len(x), self.batch_size):
            xb = x[i : i + self.batch_size]
            yield (
                (xb if self.transform is None else self.transform(xb)),
                y[i : i + self.batch_size],
            )


def crop_flip(x: Tensor, pad: int = 4) -> Tensor:
    """Random crops and horizontal flips, a different one per image (the CIFAR-10
    augmentation of He et al. 2016): each image is zero-padded by `pad` pixels,
    cropped back to its size at a uniform offset, and mirrored with probability 1/2.
    (torchvision's RandomCrop and RandomHorizontalFlip draw one for a whole batch.)
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=x.device)
    left = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=x.device)
    rows = (top + torch.arange(h, device=x.device).view(1, h, 1)).expand(n, h, w)
    cols = (left + torch.arange(w, device=x.device).view(1, 1, w)).expand(n, h, w)
    flip = torch.rand(n, 1, 1, device=x.device) < 0.5
    cols = torch.where(flip, left + (w - 1) - (cols - left), cols)
    idx = (rows * (w + 2 * pad) + cols).flatten(1)  # (N, H * W) into the padded plane
    flat = padded.flatten(2)  # (N, C, (H + 2 pad) (W + 2 pad))
    out = flat.gather(2, idx[:, None].expand(-1, x.shape[1], -1))
    return out.view_as(x)


# ---------------------------------------------------------------- file readers


def sha256(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read(ds: datasets.Dataset, download: bool) -> tuple[Tensor, ...]:
    """(x_train, y_train, x_test, y_test): uint8 (N, C, H, W) and int64 (N,)."""
    if ds.shipped is not None:
        arrays, paths, fix = _read_shipped(ds)
    else:
        arrays, paths, fix = _read_downloaded(ds, download)
    _check_splits(ds, arrays, paths, fix)
    return arrays


def _read_shipped(ds: datasets.Dataset):
    """A shipped dataset: its files' SHA-256, then torchvision on a decompressed copy
    in the cache (made once per version of the files; a copy torchvision cannot read
    is made again)."""
    import torchvision.datasets as tvd

    folder = SHIPPED / ds.shipped
    fix = (
        f"restore it with `git checkout -- data/{ds.shipped}` "
        f"(see {SHIPPED / 'SOURCES.md'})"
    )
    for fname, digest in ds.files.items():
        path = folder / fname
        if not path.exists():
            raise DataFileError(f"{ds.title} file {path} is missing: {fix}")
        if sha256(path) != digest:
            raise DataFileError(
                f"{ds.title} file {path} fails its SHA-256 check: {fix}"
            )
    # one decompressed copy per version of the files: a changed file never meets a
    # stale copy
    version = hashlib.sha256("".join(sorted(ds.files.values())).encode()).hexdigest()
    root = cache_dir() / "data" / f"{ds.name}-{version[:12]}"
    raw = root / ds.torchvision / "raw"
    cls = getattr(tvd, ds.torchvision)
    with FileLock(f"{raw}.lock"):  # parallel notebooks decompress it once
        for attempt in range(2):
            if attempt or not all((raw / _stem(f)).exists() for f in ds.files):
                _decompress(folder, list(ds.files), raw)
            try:
                parts = [cls(str(root), train=train) for train in (True, False)]
                break
            except (AssertionError, RuntimeError, ValueError, OSError) as err:
                if attempt:
                    raise DataFileError(
                        f"torchvision cannot read {ds.title} from {raw} "
                        f"({type(err).__name__}: {err}) even after decompressing "
                        f"it again: {fix}"
                    ) from err
                warnings.warn(
                    f"the decompressed copy of {ds.title} in {raw} is corrupt "
                    f"({type(err).__name__}: {err}); decompressing it again",
                    stacklevel=4,
                )
    arrays = tuple(
        t for part in parts for t in (part.data[:, None], part.targets.long())
    )  # (N, 1, H, W)
    paths = [raw / f"{split}-{kind}-ubyte" for split in ("train", "t10k")
             for kind in ("images-idx3", "labels-idx1")]  # fmt: skip
    return arrays, paths, fix


def _stem(fname: str) -> str:
    return fname.removesuffix(".gz")


def _decompress(folder: Path, files: list[str], raw: Path) -> None:
    """Decompress the shipped .gz files into `raw` (atomically, with torchvision's
    extract_archive)."""
    from torchvision.datasets.utils import extract_archive

    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw.parent) as tmp:
        for fname in files:
            extract_archive(str(folder / fname), tmp)
            os.replace(Path(tmp) / _stem(fname), raw / _stem(fname))


def _read_downloaded(ds: datasets.Dataset, download: bool):
    """A downloaded dataset (CIFAR-10's pickled batches): checked against the MD5s of
    the table before torchvision unpickles anything."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    root = download_dir()
    base = getattr(tvd, ds.torchvision)
    folder = root / base.base_folder
    where = f"Download {ds.download_help} in {root}"
    if not all((folder / f).exists() for f in ds.files):
        if not download:
            raise DataFileError(
                f"{ds.name} is not in {folder} and download=False. {where}."
            )
        try:
            base(str(root), train=True, download=True)
        except Exception as err:  # noqa: BLE001 - urllib, HTTP and checksum errors all land here
            raise DataFileError(
                f"could not download {ds.name} ({type(err).__name__}: {err}). If this "
                f"machine is offline, {where[0].lower() + where[1:]} "
                "(or set ROBUSTKIT_DATA)."
            ) from err
    fix = f"delete {folder} and load again to re-download it"
    for fname, md5 in ds.files.items():
        if not check_integrity(str(folder / fname), md5):
            raise DataFileError(
                f"{folder / fname} fails its MD5 check: it is not the official "
                f"{ds.name} file (another dataset's, or a damaged download); {fix}"
            )
    # the table's checksums (overrides included) are the ones torchvision checks
    table = {
        "train_list": [[f, ds.files[f]] for f, _ in base.train_list],
        "test_list": [[f, ds.files[f]] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": ds.files[base.meta["filename"]]},
    }
    cls = type(base.__name__, (base,), table)
    parts = [cls(str(root), train=train) for train in (True, False)]
    arrays = tuple(
        t
        for part in parts
        for t in (
            torch.from_numpy(np.ascontiguousarray(part.data.transpose(0, 3, 1, 2))),
            torch.tensor(part.targets, dtype=torch.int64),
        )
    )  # HWC -> (N, C, H, W)
    train = folder / "data_batch_[1-5]"
    return arrays, [train, train, folder / "test_batch", folder / "test_batch"], fix


def _check_splits(
    ds: datasets.Dataset, arrays: tuple[Tensor, ...], paths: list[Path], fix: str
) -> None:
    """Refuse splits (x_train, y_train, x_test, y_test), read from `paths`, whose
    sizes, image shape or labels are not those of the dataset's row."""
    k, shape = ds.n_classes, ds.shape
    splits = zip((arrays[:2], arrays[2:]), (paths[:2], paths[2:]), ds.splits)
    for (x, y), (x_path, y_path), n in splits:
        y_lo = int(y.min()) if len(y) else 0
        y_hi = int(y.max()) if len(y) else 0
        if len(x) != len(y):
            problem = f"{x_path} has {len(x):,} images but {y_path} {len(y):,} labels"
        elif len(x) != n:
            problem = f"{x_path} has {len(x):,} images where {ds.name} has {n:,}"
        elif tuple(x.shape[1:]) != shape:
            problem = f"{x_path} has images of shape {tuple(x.shape[1:])}, not {shape}"
        elif y_lo < 0 or y_hi >= k:
            problem = f"{y_path} has labels outside 0-{k - 1} (min {y_lo}, max {y_hi})"
        else:
            continue
        raise DataFileError(f"{problem}: {fix}")
