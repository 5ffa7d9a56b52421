import gzip
import hashlib
import json
import pickle
import shutil
import urllib.error
import warnings

import cifar_format
import numpy as np
import pytest
import torch

from robustkit import data, datasets

SHIPPED = [name for name in datasets.names() if datasets.get(name).shipped]


def write_idx(path, array):
    """Write a uint8 array as a gzip-compressed IDX file (big-endian dims after a
    4-byte magic)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fake_idx_dataset(folder, n_train=30, n_test=20):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return arrays


def declare(monkeypatch, tmp_path, name, folder, splits):
    """Declare the files in `folder` as dataset `name` (ROBUSTKIT_DATASETS): their
    checksums and split sizes, the way a local variant of a dataset is declared."""
    digest = hashlib.sha256 if datasets.get(name).shipped else hashlib.md5
    files = {p.name: digest(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({name: {"files": files, "splits": list(splits)}}))
    monkeypatch.setenv(datasets.ENV, str(path))


# ------------------------------------------------------------------ MNIST (shipped)


def test_mnist_full_shapes_range_and_dtypes():
    d = data.load("mnist")
    assert d.x_train.shape == (60_000, 1, 28, 28) and d.x_test.shape == (
        10_000,
        1,
        28,
        28,
    )
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.min() == 0 and d.x_train.max() == 1
    assert len(d.x_val) == 0 and d.classes == tuple("0123456789")
    # the official label counts of the training set (data/SOURCES.md)
    counts = torch.bincount(d.y_train).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    # the full test set keeps its official order
    assert d.y_test[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]


def test_mnist_subsets_are_seeded_and_disjoint():
    a = data.load("mnist", n_train=500, n_val=100, n_test=50, seed=1)
    b = data.load("mnist", n_train=500, n_val=100, n_test=50, seed=1)
    c = data.load("mnist", n_train=500, n_val=100, n_test=50, seed=2)
    assert len(a.x_train) == 500 and len(a.x_val) == 100 and len(a.x_test) == 50
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)

    def flat(x):
        return {bytes(row) for row in (x * 255).to(torch.uint8).flatten(1).numpy()}

    assert not flat(a.x_train) & flat(a.x_val)  # validation is held out of training


def test_mnist_subset_independent_of_global_rng():
    torch.manual_seed(0)
    a = data.load("mnist", n_train=10, n_test=10)
    torch.manual_seed(123)
    b = data.load("mnist", n_train=10, n_test=10)
    assert torch.equal(a.y_train, b.y_train)


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_train=-1), dict(n_train=60_001), dict(n_test=10.5), dict(n_val=70_000)],
)
def test_bad_subset_sizes_name_the_value(kwargs):
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=f"{name}={value}"):
        data.load("mnist", **kwargs)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="imagenet"):
        data.load("imagenet")


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """Private copies of the shipped datasets that a test may damage, and a private
    cache for their decompressed copies. The label files are copies; the image
    files (tens of MB) are symbolic links to the shipped ones, which a test may
    delete or replace but must never write through."""
    for name in SHIPPED:
        folder = datasets.get(name).shipped
        (tmp_path / "data" / folder).mkdir(parents=True)
        for file in (data.SHIPPED / folder).iterdir():
            target = tmp_path / "data" / folder / file.name
            if "images" in file.name:
                target.symlink_to(file.resolve())
            else:
                shutil.copy(file, target)
    monkeypatch.setattr(data, "SHIPPED", tmp_path / "data")
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "data"


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_file_that_fails_its_checksum_names_file_and_fix(shipped_copy, name):
    path = shipped_copy / datasets.get(name).shipped / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataFileError, match="t10k-labels.*SHA-256.*git checkout"):
        data.load(name)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_missing_shipped_file_names_file_and_fix(shipped_copy, name):
    (shipped_copy / datasets.get(name).shipped / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(data.DataFileError, match="train-images.*missing.*git checkout"):
        data.load(name)


def test_mnist_files_in_the_fashion_mnist_folder_are_refused(shipped_copy):
    fashion = shipped_copy / datasets.get("fashion_mnist").shipped
    shutil.rmtree(fashion)
    shutil.copytree(shipped_copy / "mnist", fashion)  # the right names, the wrong data
    with pytest.raises(
        data.DataFileError, match="Fashion-MNIST file .*train-images.*SHA-256"
    ):
        data.load("fashion_mnist")


def test_fashion_mnist_ships_and_loads_offline():
    d = data.load("fashion_mnist")
    assert d.x_train.shape == (60_000, 1, 28, 28) and d.x_test.shape == (
        10_000,
        1,
        28,
        28,
    )
    assert d.classes[0] == "T-shirt/top" and d.classes[-1] == "Ankle boot"
    # every class has 6,000 training and 1,000 test images (data/SOURCES.md)
    assert torch.bincount(d.y_train).tolist() == [6_000] * 10
    assert torch.bincount(d.y_test).tolist() == [1_000] * 10
    assert d.y_test[:5].tolist() == [9, 2, 1, 1, 6]  # the official order
    assert abs(d.x_train.mean().item() - datasets.get("fashion_mnist").mean[0]) < 1e-3


def test_a_corrupt_decompressed_copy_is_reported_and_rebuilt(shipped_copy):
    first = data.load("mnist", n_train=100, n_test=100)
    (raw,) = (shipped_copy.parent / "cache" / "data").glob("mnist-*/MNIST/raw")
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])  # truncated, as by a killed process
    with pytest.warns(UserWarning, match="decompressed copy of MNIST.*corrupt"):
        again = data.load("mnist", n_train=100, n_test=100)
    assert torch.equal(first.x_test, again.x_test)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: the next load is silent
        data.load("mnist", n_train=0, n_test=10)


def test_the_count_and_label_checks_hold_for_a_declared_variant(
    shipped_copy, tmp_path, monkeypatch
):
    """Files that pass their checksums are still checked for counts and labels."""
    folder = shipped_copy / "mnist"
    shutil.rmtree(folder)
    write_fake_idx_dataset(folder)
    declare(monkeypatch, tmp_path, "mnist", folder, (31, 20))
    with pytest.raises(
        data.DataFileError, match="train-images.* 30 images where mnist"
    ):
        data.load("mnist")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(19) % 10)
    declare(monkeypatch, tmp_path, "mnist", folder, (30, 20))
    with pytest.raises(
        data.DataFileError, match="t10k-images.* 20 images but .*t10k-labels.* 19 lab"
    ):
        data.load("mnist")
    write_fake_idx_dataset(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(30) % 12)
    declare(monkeypatch, tmp_path, "mnist", folder, (30, 20))
    with pytest.raises(
        data.DataFileError, match="train-labels.*labels outside 0-9 .*max 11"
    ):
        data.load("mnist")


# ----------------------------------------- CIFAR-10 (downloaded; files in its format)


def test_offline_without_download_says_what_to_get_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    with pytest.raises(
        data.DataFileError, match="cifar10 is not in .*download=False.*cifar-10-python"
    ):
        data.load("cifar10", download=False)


def test_failed_download_says_what_to_get_and_where(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(
        data.DataFileError, match="could not download cifar10.*offline.*cifar-10"
    ):
        data.load("cifar10")


def test_cifar10_from_files_in_its_format(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    folder = cifar_format.random(tmp_path)
    declare(monkeypatch, tmp_path, "cifar10", folder, (30, 6))
    d = data.load("cifar10", n_test=4, download=False)
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1 and d.classes[-1] == "truck"
    with open(folder / "data_batch_1", "rb") as f:  # channel-first, as written
        first = np.asarray(pickle.load(f)["data"][0]).reshape(3, 32, 32)
    every = data.load("cifar10", download=False)
    match = (every.x_train * 255).round().to(torch.uint8)
    assert any(torch.equal(m, torch.from_numpy(first)) for m in match)


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_batch_that_is_not_the_declared_file_is_never_unpickled(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    folder = cifar_format.random(tmp_path)
    declare(monkeypatch, tmp_path, "cifar10", folder, (30, 6))
    marker = tmp_path / "code-ran"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _Payload(marker), "labels": []}, f)
    with pytest.raises(data.DataFileError, match="test_batch fails its MD5.*re-down"):
        data.load("cifar10", download=False)
    assert not marker.exists()


def test_the_table_has_torchvisions_cifar10_checksums():
    import torchvision.datasets as tvd

    table = datasets.TABLE["cifar10"].files
    expected = dict(tvd.CIFAR10.train_list + tvd.CIFAR10.test_list)
    expected[tvd.CIFAR10.meta["filename"]] = tvd.CIFAR10.meta["md5"]
    assert table == expected
    fashion = dict(tvd.FashionMNIST.resources)  # MD5s of the shipped files
    folder = data.SHIPPED / datasets.get("fashion_mnist").shipped
    for fname, md5 in fashion.items():
        assert hashlib.md5((folder / fname).read_bytes()).hexdigest() == md5


def test_files_in_the_format_fail_the_official_checksums(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    cifar_format.random(tmp_path)
    with pytest.raises(data.DataFileError, match="data_batch_1 fails its MD5"):
        data.load("cifar10", download=False)


def test_cifar_labels_and_counts_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    folder = cifar_format.random(tmp_path)
    batch = {"data": np.zeros((6, 3072), np.uint8), "labels": [0, 1, 2, 3, 4, 10]}
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    declare(monkeypatch, tmp_path, "cifar10", folder, (30, 6))
    with pytest.raises(data.DataFileError, match="test_batch has labels outside 0-9"):
        data.load("cifar10", download=False)
    cifar_format.random(tmp_path, n_per_batch=7)
    declare(monkeypatch, tmp_path, "cifar10", folder, (30, 7))
    with pytest.raises(data.DataFileError, match="35 images where cifar10 has 30"):
        data.load("cifar10", download=False)


def test_crop_flip_moves_each_image_within_its_padding():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = data.crop_flip(x, pad=2)
    assert out.shape == x.shape and not torch.equal(out, x)
    # each output is a shifted (and maybe mirrored) copy of its own input
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        views = [
            v[:, a : a + 8, b : b + 8]
            for v in (padded[i], padded[i].flip(2))
            for a in range(5)
            for b in range(5)
        ]
        assert any(torch.equal(out[i], v) for v in views)
    flips = sum(
        not any(
            torch.equal(out[i], padded[i][:, a : a + 8, b : b + 8])
            for a in range(5)
            for b in range(5)
        )
        for i in range(len(x))
    )
    assert 10 < flips < 54  # about half are mirrored


# ------------------------------------------------------------------------ batches


def test_batches_cover_every_example_once_and_reshuffle():
    x, y = torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10)
    loader = data.Batches(x, y, batch_size=4, shuffle=True)
    assert len(loader) == 3
    first = torch.cat([yb for _, yb in loader])
    second = torch.cat([yb for _, yb in loader])
    assert sorted(first.tolist()) == list(range(10)) and not torch.equal(first, second)
    for xb, yb in loader:
        assert torch.equal(xb.view(-1).long(), yb)  # pairs stay together
    assert [len(yb) for _, yb in data.Batches(x, y, batch_size=4)] == [4, 4, 2]


def test_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        data.Batches(torch.zeros(3), torch.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="3 examples but y has 2"):
        data.Batches(torch.zeros(3), torch.zeros(2))
