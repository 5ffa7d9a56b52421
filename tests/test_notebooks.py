"""Every notebook runs under papermill with small parameters and records sane results.

A notebook in notebooks/ without an entry in runner.QUICK and CHECKS fails here.
"""

from __future__ import annotations

import ast

import nbformat
import pytest

from robustkit import runner

NOTEBOOKS = runner.notebooks()


def check_00(r):
    assert r["test_accuracy"] >= 0.95  # quick baseline: a few thousand images
    assert r["final_train_loss"] < r["first_train_loss"]
    assert r["n_train"] == 5_000 and r["n_test"] == 1_000


CHECKS = {
    "00_setup_and_tour.ipynb": check_00,
}


def test_every_notebook_has_quick_parameters_and_checks():
    found = {nb.name for nb in NOTEBOOKS}
    assert found, "no notebooks found"
    assert found == set(runner.QUICK) == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterized(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        "strip outputs"
    )
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse(params[0].source)
    assigned = set()
    for stmt in tree.body:
        assert isinstance(stmt, ast.AnnAssign), "parameters are annotated assignments"
        assert isinstance(stmt.value, ast.Constant) or (
            isinstance(stmt.value, (ast.List, ast.Tuple))
            and all(isinstance(e, ast.Constant) for e in stmt.value.elts)
        ), f"{stmt.target.id} is not a literal"
        assert stmt.target.id.isupper()
        assigned.add(stmt.target.id)
    assert {"SEED", "DEVICE", "RESULTS_PATH"} <= assigned
    lines = params[0].source.splitlines()
    assert all("#" in line for line in lines if line.strip()), (
        "a comment on every parameter"
    )
    for cell in code:
        assert "import *" not in cell.source and "sys.path" not in cell.source
        assert not any(
            line.lstrip().startswith(("%", "!")) for line in cell.source.splitlines()
        )
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"]
    for section in ("## Results", "## Exercises"):
        assert any(h.startswith(section) for h in headings), f"missing {section}"
    assert any(
        "## References" in c.source for c in nb.cells if c.cell_type == "markdown"
    )
    assert set(runner.QUICK.get(path.name, {})) <= assigned, (
        "QUICK sets unknown parameters"
    )


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_records_results(path, tmp_path):
    results = runner.execute(path, tmp_path, quick=True, timeout=600)
    assert results, "no results recorded"
    for key, value in results.items():
        if key.endswith("accuracy") and isinstance(value, float):
            assert 0.0 <= value <= 1.0, key
    CHECKS[path.name](results)
