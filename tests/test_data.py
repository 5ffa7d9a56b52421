import gzip
import hashlib
import pickle
import shutil
import urllib.error

import numpy as np
import pytest
import torch

from robustkit import data


def write_idx(path, array, compress=True):
    """Write a uint8 array in the IDX format (big-endian dims after a 4-byte magic)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_fake_idx_dataset(folder, n_train=30, n_test=20, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + suffix), array, compress)
    return arrays


def write_fake_cifar(folder, n_per_batch=6):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in data.CIFAR_FILES:
        batch = {
            "data": rng.integers(0, 256, (n_per_batch, 3072)).astype(np.uint8),
            "labels": rng.integers(0, 10, n_per_batch).tolist(),
            "batch_label": name,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


@pytest.fixture
def official(monkeypatch):
    """Pass the small fake files of a test off as the official ones: bless(folder)
    puts their MD5s in place of torchvision's table, and the official counts become
    those the write_fake_* helpers use by default."""
    table = {}
    monkeypatch.setattr(data, "official_md5", lambda name: table)
    counts = {"fashion_mnist": (30, 20), "cifar10": (30, 6)}
    monkeypatch.setattr(data, "COUNTS", {**data.COUNTS, **counts})

    def bless(folder):
        for path in folder.iterdir():
            table[path.name] = hashlib.md5(path.read_bytes()).hexdigest()

    return bless


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
    """A private copy of data/mnist that a test may damage."""
    shutil.copytree(data.SHIPPED / "mnist", tmp_path / "mnist")
    monkeypatch.setattr(data, "SHIPPED", tmp_path)
    return tmp_path / "mnist"


def test_mnist_checksum_failure_names_file_and_fix(shipped_copy):
    path = shipped_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataFileError, match="t10k-labels.*SHA-256.*git checkout"):
        data.load("mnist")


def test_mnist_missing_file_names_file_and_fix(shipped_copy):
    (shipped_copy / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(data.DataFileError, match="train-images.*missing.*git checkout"):
        data.load("mnist")


def test_truncated_idx_is_a_clear_error(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.zeros((5, 28, 28)), compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DataFileError, match="x.idx.*truncated"):
        data.read_idx(path)
    gz = tmp_path / "y.gz"
    write_idx(gz, np.zeros((5, 28, 28)))
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(data.DataFileError, match="y.gz.*truncated or corrupt"):
        data.read_idx(gz)


# ------------------------------------------------- downloaded datasets (fake files)


def test_fashion_mnist_from_files_in_the_torchvision_layout(
    tmp_path, monkeypatch, official
):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    arrays = write_fake_idx_dataset(tmp_path / "FashionMNIST" / "raw")
    official(tmp_path / "FashionMNIST" / "raw")
    d = data.load("fashion_mnist", n_val=5, device="cpu", download=False)
    assert d.x_train.shape == (25, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255
    assert torch.equal(d.x_test[:, 0], expected)  # full test set, official order
    assert d.classes[0] == "T-shirt/top"


def test_fashion_mnist_uncompressed_files_also_load(tmp_path, monkeypatch, official):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    write_fake_idx_dataset(tmp_path / "FashionMNIST" / "raw", compress=False)
    assert len(data.load("fashion_mnist", download=False).x_train) == 30


def test_corrupt_download_names_file_and_fix(tmp_path, monkeypatch, official):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fake_idx_dataset(raw)
    path = raw / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-4])
    official(raw)  # its checksum matches: the gzip reader must catch the truncation
    with pytest.raises(data.DataFileError, match="train-labels.*re-download"):
        data.load("fashion_mnist", download=False)


def test_offline_without_download_says_what_to_get_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    with pytest.raises(
        data.DataFileError, match="train-images-idx3-ubyte.gz.*FashionMNIST"
    ):
        data.load("fashion_mnist", download=False)


def test_failed_download_says_what_to_get_and_where(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(
        data.DataFileError, match="could not download cifar10.*offline.*cifar-10"
    ):
        data.load("cifar10")


def test_cifar10_from_files_in_the_torchvision_layout(tmp_path, monkeypatch, official):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    official(tmp_path / "cifar-10-batches-py")
    d = data.load("cifar10", n_test=4, download=False)
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1 and d.classes[-1] == "truck"


def test_cifar_pickle_with_code_is_refused(tmp_path, monkeypatch, official):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": print, "labels": []}, f)  # a global that is not an array
    official(folder)  # past the checksum: the unpickler itself must refuse it
    with pytest.raises(data.DataFileError, match="test_batch.*re-download"):
        data.load("cifar10", download=False)


# ------------------------------------------------ verified against official tables


def test_mnist_files_in_the_fashion_mnist_folder_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    raw = tmp_path / "FashionMNIST" / "raw"
    shutil.copytree(data.SHIPPED / "mnist", raw)  # the right names, the wrong data
    with pytest.raises(
        data.DataFileError, match="train-images-idx3-ubyte.gz fails its MD5.*re-down"
    ):
        data.load("fashion_mnist", download=False)


def test_official_md5_tables_are_torchvisions():
    import torchvision.datasets as tvd

    fashion = data.official_md5("fashion_mnist")
    assert set(fashion) == {s + ".gz" for s in data.IDX_STEMS}
    assert fashion == dict(tvd.FashionMNIST.resources)
    assert set(data.official_md5("cifar10")) == set(data.CIFAR_FILES)


def test_fake_files_fail_the_official_checksums(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(data.DataFileError, match="data_batch_1 fails its MD5"):
        data.load("cifar10", download=False)


@pytest.mark.parametrize("compress", [True, False])
def test_a_fashion_mnist_count_unlike_the_official_one_is_refused(
    tmp_path, monkeypatch, compress
):
    """Uncompressed IDX files have no official checksum; their counts are checked."""
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    monkeypatch.setattr(data, "official_md5", lambda name: {})  # past the checksums
    write_fake_idx_dataset(tmp_path / "FashionMNIST" / "raw", compress=compress)
    with pytest.raises(
        data.DataFileError, match="train-images.* 30 images where fashion_mnist has"
    ):
        data.load("fashion_mnist", download=False)


def test_images_and_labels_of_different_counts_are_refused(
    tmp_path, monkeypatch, official
):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fake_idx_dataset(raw)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(19) % 10)
    official(raw)
    with pytest.raises(
        data.DataFileError, match="t10k-images.* 20 images but .*t10k-labels.* 19 lab"
    ):
        data.load("fashion_mnist", download=False)


def test_labels_outside_the_classes_are_refused(tmp_path, monkeypatch, official):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fake_idx_dataset(raw)
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(30) % 12)
    official(raw)
    with pytest.raises(
        data.DataFileError, match="train-labels.*labels outside 0-9 .*max 11"
    ):
        data.load("fashion_mnist", download=False)


def test_cifar_labels_and_counts_are_checked(tmp_path, monkeypatch, official):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path))
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder)
    batch = {"data": np.zeros((6, 3072), np.uint8), "labels": [0, 1, 2, 3, 4, 10]}
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    official(folder)
    with pytest.raises(data.DataFileError, match="test_batch has labels outside 0-9"):
        data.load("cifar10", download=False)
    write_fake_cifar(folder, n_per_batch=7)
    official(folder)
    with pytest.raises(data.DataFileError, match="35 images where cifar10 has 30"):
        data.load("cifar10", download=False)


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
