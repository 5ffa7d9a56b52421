"""Every notebook runs under papermill with small parameters and records sane results.

A notebook in notebooks/ without an entry in runner.QUICK and robustkit.bars fails here.
"""

from __future__ import annotations

import ast

import nbformat
import pytest

from robustkit import bars, runner

NOTEBOOKS = runner.notebooks()


def test_every_notebook_has_quick_parameters_and_checks():
    found = {nb.name for nb in NOTEBOOKS}
    assert found, "no notebooks found"
    assert found == set(runner.QUICK) == set(bars.QUICK) == set(bars.FULL)


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


FRACTIONS = ("accuracy", "rate", "curve", "share", "robust")


def check_fractions(results):
    """Accuracies, rates, curves and shares are fractions in [0, 1], lists too."""
    for key, value in results.items():
        if any(word in key for word in FRACTIONS):
            for v in value if isinstance(value, list) else [value]:
                assert v is None or 0.0 <= v <= 1.0, (key, value)


def check_provenance(results, path, parameters):
    run = results.pop("provenance")
    assert run["parameters"]["SEED"] == run["seed"] == parameters.get("SEED", 0)
    assert parameters.items() <= run["parameters"].items()
    assert run["threads"] >= 1 and run["torch"] and run["device"] == "cpu"
    assert run["dataset"] == "mnist" and run["arch"] == "small_cnn"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_records_results(path, tmp_path):
    results = runner.execute(path, tmp_path, quick=True, timeout=600)
    check_provenance(results, path, runner.QUICK[path.name])
    check_fractions(results)
    assert not bars.broken(path.name, results), bars.margins(path.name, results)


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_at_teaching_defaults(path, tmp_path):
    """`make test-all`: the teaching run (minutes to an hour each on a CPU; seconds
    where shipped models match), checked against the issues' full-size bars."""
    results = runner.execute(path, tmp_path, quick=False, timeout=4 * 3600)
    check_provenance(results, path, {})
    check_fractions(results)
    broken = bars.broken(path.name, results, full=True)
    assert not broken, bars.margins(path.name, results, full=True)
