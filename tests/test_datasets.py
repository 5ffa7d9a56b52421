"""The dataset table: every row complete and consistent, the only place a dataset
is named, and its overrides checked."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from robustkit import data, datasets, models, recipes
from robustkit.utils import ROOT


@pytest.mark.parametrize("name", datasets.names())
def test_every_row_is_complete_and_consistent(name):
    ds = datasets.get(name)
    assert ds.name == name and ds.title
    channels, height, width = ds.shape
    assert len(ds.mean) == len(ds.std) == channels and all(s > 0 for s in ds.std)
    assert ds.n_classes == len(set(ds.classes)) >= 2
    assert all(n > 0 for n in ds.splits) and ds.files
    assert ds.sizes["n_train"] + ds.sizes["n_val"] <= ds.splits[0]
    assert ds.sizes["n_test"] <= ds.splits[1]
    assert 0 < ds.eps_small <= ds.eps <= 1 and 0 < ds.alpha <= ds.eps
    assert 0 < ds.eps_l2 <= math.sqrt(channels * height * width)
    assert ds.arch in models.ARCHITECTURES and ds.arch in recipes.ARCH_OPTIMIZER
    assert ds.source.startswith("http") and ds.licence and ds.citation
    assert ds.shipped or ds.download_help, "a downloaded dataset says what to fetch"
    models.check_fits(ds.arch, name)
    recipes.config("pgd", dataset=name)  # its defaults make a valid config


@pytest.mark.parametrize(
    "name", [n for n in datasets.names() if datasets.get(n).shipped]
)
def test_a_shipped_dataset_ships_its_files_with_their_provenance(name):
    ds = datasets.get(name)
    for fname, digest in ds.files.items():
        assert data.sha256(data.SHIPPED / ds.shipped / fname) == digest
    sources = (data.SHIPPED / "SOURCES.md").read_text()
    assert f"`{ds.shipped}/`" in sources and ds.licence.split()[0] in sources


def test_the_conventional_budgets():
    """The threat models the field reports (Madry et al. 2018, RobustBench)."""
    assert datasets.get("mnist").eps == 0.3 and datasets.get("mnist").eps_small == 0.1
    assert datasets.get("fashion_mnist").eps == 0.1
    assert datasets.get("cifar10").eps == 8 / 255
    assert datasets.get("cifar10").eps_l2 == 0.5
    assert datasets.get("cifar10").arch == "preact_resnet18"


def _named_datasets(path: Path) -> list[str]:
    """String constants of a module that are dataset names (docstrings aside)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    names = set(datasets.names())
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and id(node) not in docstrings
        and node.value in names
    ]


def test_no_module_but_the_table_names_a_dataset():
    found = [
        hit
        for path in sorted((ROOT / "robustkit").rglob("*.py"))
        if path.name != "datasets.py"
        for hit in _named_datasets(path)
    ]
    assert not found, f"read these from robustkit.datasets instead: {found}"


def test_overrides_change_only_what_they_may(tmp_path, monkeypatch):
    path = tmp_path / "datasets.json"
    monkeypatch.setenv(datasets.ENV, str(path))
    path.write_text(json.dumps({"cifar10": {"splits": [10, 5]}}))
    assert datasets.get("cifar10").splits == (10, 5)
    assert datasets.get("mnist") is datasets.TABLE["mnist"]
    for bad, match in [
        ({"cifar10": {"eps": 0.5}}, "'cifar10' \\['eps'\\] cannot be overridden"),
        ({"svhn": {"splits": [1, 1]}}, "'svhn'.*cannot be overridden"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            datasets.get("cifar10")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="ROBUSTKIT_DATASETS=.*not a readable JSON"):
        datasets.get("mnist")


def test_an_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'svhn': use one of"):
        datasets.get("svhn")
