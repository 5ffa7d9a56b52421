"""The one table of datasets: what each is, where it comes from, and its conventions.

Everything else in the kit reads a dataset's facts from here (`datasets.get(name)`):
its image shape and classes for the models, its statistics for `models.Normalize`,
its files, checksums and split sizes for `data.load`, and its conventional threat
model and sizes for the training recipes, the zoo and the notebooks. A new dataset
is one more row of TABLE (plus its files).

`ROBUSTKIT_DATASETS` may name a JSON file of per-dataset overrides, e.g.
`{"cifar10": {"splits": [10000, 1000], "files": {"data_batch_1": "<md5>", ...}}}`:
a local variant of a dataset in the same on-disk format (the notebook tests use it
for CIFAR-10-format miniatures). Only the fields in OVERRIDABLE may change; the
files are still checked against the checksums given.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT = "mnist"  # the dataset a notebook or a config uses when none is named
OVERRIDABLE = {"splits", "files"}
ENV = "ROBUSTKIT_DATASETS"


@dataclass(frozen=True)
class Dataset:
    """One row of the table. Budgets are in pixel units (images lie in [0, 1])."""

    name: str  # the key everywhere (configs, notebook parameter DATASET)
    title: str  # as written in prose
    shape: tuple[int, int, int]  # (C, H, W) of one image
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per-channel training-set statistics (models.Normalize)
    std: tuple[float, ...]
    splits: tuple[int, int]  # official (train, test) sizes, checked on every load
    torchvision: str  # the torchvision.datasets class that reads the files
    files: dict[str, str]  # official file -> checksum (SHA-256 shipped, else MD5)
    shipped: str | None  # folder under data/ holding the files; None: downloaded
    source: str
    licence: str
    citation: str
    eps: float  # the conventional L-inf budget of robust training and evaluation
    eps_small: float  # a budget that already breaks an undefended model
    eps_l2: float  # the conventional L2 budget
    arch: str  # default architecture (models.ARCHITECTURES; recipes.ARCH_OPTIMIZER)
    batch_size: int
    epochs: int  # epochs of the adversarial recipes
    attack_steps: int  # PGD steps of PGD-AT and TRADES
    alpha: float  # their step size
    augment: bool  # random crops and flips while training (natural images)
    sizes: dict[str, int] = field(default_factory=dict)  # teaching sizes
    download_help: str = ""  # what to fetch, offline, and where it goes

    @property
    def n_classes(self) -> int:
        return len(self.classes)


_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                    "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                  "horse", "ship", "truck")  # fmt: skip
_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # fmt: skip
_GRAY_SIZES = dict(n_train=55_000, n_val=5_000, n_test=10_000)

TABLE: dict[str, Dataset] = {
    row.name: row
    for row in [
        Dataset(
            name="mnist",
            title="MNIST",
            shape=(1, 28, 28),
            classes=tuple(str(d) for d in range(10)),
            mean=(0.1307,),
            std=(0.3081,),
            splits=(60_000, 10_000),
            torchvision="MNIST",
            files=dict(
                zip(
                    _IDX,
                    (
                        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                    ),
                )
            ),  # fmt: skip
            shipped="mnist",
            source="http://yann.lecun.com/exdb/mnist/",
            licence="CC BY-SA 3.0 (Yann LeCun and Corinna Cortes)",
            citation="LeCun et al., Gradient-based learning applied to document "
            "recognition, Proc. IEEE 1998",
            eps=0.3,  # Madry et al. 2018
            eps_small=0.1,
            eps_l2=1.5,
            arch="small_cnn",
            batch_size=100,
            epochs=10,
            attack_steps=40,  # Madry et al.: 40 steps of 0.01
            alpha=0.01,
            augment=False,
            sizes=_GRAY_SIZES,
        ),
        Dataset(
            name="fashion_mnist",
            title="Fashion-MNIST",
            shape=(1, 28, 28),
            classes=_FASHION_CLASSES,
            mean=(0.2860,),
            std=(0.3530,),
            splits=(60_000, 10_000),
            torchvision="FashionMNIST",
            files=dict(
                zip(
                    _IDX,
                    (
                        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                    ),
                )
            ),  # fmt: skip
            shipped="fashion-mnist",
            source="https://github.com/zalandoresearch/fashion-mnist",
            licence="MIT (Zalando Research)",
            citation="Xiao, Rasul & Vollgraf, Fashion-MNIST, arXiv:1708.07747",
            eps=0.1,  # the usual Fashion-MNIST budget (e.g. Croce & Hein 2020)
            eps_small=0.1,
            eps_l2=1.5,
            arch="small_cnn",
            batch_size=100,
            epochs=10,
            attack_steps=40,  # MNIST's recipe, scaled to the budget
            alpha=0.1 / 30,
            augment=False,
            sizes=_GRAY_SIZES,
        ),
        Dataset(
            name="cifar10",
            title="CIFAR-10",
            shape=(3, 32, 32),
            classes=_CIFAR_CLASSES,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            splits=(50_000, 10_000),
            torchvision="CIFAR10",
            # torchvision's MD5s of the batches (torchvision.datasets.CIFAR10)
            files={
                "data_batch_1": "c99cafc152244af753f735de768cd75f",
                "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                "test_batch": "40351d587109b95175f43aff81a1287e",
                "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
            },
            shipped=None,
            source="https://www.cs.toronto.edu/~kriz/cifar.html",
            licence="no licence stated; cite the technical report",
            citation="Krizhevsky, Learning Multiple Layers of Features from Tiny "
            "Images, 2009",
            eps=8 / 255,  # Madry et al. 2018, Wong et al. 2020, RobustBench
            eps_small=8 / 255,
            eps_l2=0.5,  # RobustBench's L2 track
            arch="preact_resnet18",
            batch_size=128,  # Wong et al. 2020: batch 128, 15 epochs
            epochs=15,
            attack_steps=10,  # Rice et al. 2020: PGD-10 of 2/255
            alpha=2 / 255,
            augment=True,
            sizes=dict(n_train=45_000, n_val=5_000, n_test=10_000),
            download_help="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz,"
            " extracted so that the folder cifar-10-batches-py sits",
        ),
    ]
}


def names() -> list[str]:
    """The datasets of the table, in its order."""
    return list(TABLE)


def get(name: str) -> Dataset:
    """The row of dataset `name` (with ROBUSTKIT_DATASETS overrides applied).

    Raises ValueError naming the unknown value and the known ones.
    """
    if not (isinstance(name, str) and name in TABLE):
        raise ValueError(f"unknown dataset {name!r}: use one of {names()}")
    changes = _overrides().get(name)
    return dataclasses.replace(TABLE[name], **changes) if changes else TABLE[name]


def _overrides() -> dict[str, dict[str, Any]]:
    path = os.environ.get(ENV)
    if not path:
        return {}
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{ENV}={path!r} is not a readable JSON file ({err})") from err
    for name, changes in table.items():
        bad = set(changes) - OVERRIDABLE if isinstance(changes, dict) else {changes}
        if name not in TABLE or bad:
            raise ValueError(
                f"{ENV}={path!r}: {name!r} {sorted(map(str, bad))} cannot be "
                f"overridden; use datasets {names()} and fields {sorted(OVERRIDABLE)}"
            )
        if "splits" in changes:
            changes["splits"] = tuple(changes["splits"])
    return table
