"""Every notebook runs under papermill with small parameters and records sane results.

A notebook in notebooks/ without quick parameters and bars (robustkit.course.bars)
fails here.
"""

from __future__ import annotations

import ast
import subprocess

import cifar_format
import nbformat
import pytest

from robustkit import datasets
from robustkit.course import bars, runner
from robustkit.utils import ROOT

NOTEBOOKS = runner.notebooks()
# Every notebook runs quick on each dataset; CIFAR-10 on a miniature in its on-disk
# format (tests/cifar_format.py), with the small CNN its quick set asks for.
DATASETS = datasets.names()


def test_every_notebook_has_quick_parameters_and_checks():
    found = {nb.name for nb in NOTEBOOKS}
    assert found, "no notebooks found"
    assert found == set(bars.QUICK) == set(bars.FULL)
    for nb in NOTEBOOKS:
        assert runner.parameter_file(nb, "quick").exists(), nb.name


def committed(path, root=ROOT) -> nbformat.NotebookNode:
    """The notebook as committed (git's HEAD); the file itself where it is not
    committed yet or there is no git. A learner's notebook saved with its outputs in
    `make lab` stays clean in git (nbstripout's filter) and here."""
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    try:
        shown = subprocess.run(["git", "-C", str(root), "show", f"HEAD:{rel}"],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    except OSError:  # no git
        return nbformat.read(path, as_version=4)
    if shown.returncode:
        return nbformat.read(path, as_version=4)
    return nbformat.reads(shown.stdout, as_version=4)


def test_a_learners_saved_outputs_do_not_fail_the_check_but_committed_ones_do(
    tmp_path,
):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    path = tmp_path / "nb.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nbformat.write(nb, path)
    subprocess.run([*git, "add", "nb.ipynb"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "clean"], check=True)
    nb.cells[0].outputs = [
        nbformat.v4.new_output("execute_result", {"text/plain": "2"})
    ]
    nb.cells[0].execution_count = 1
    nbformat.write(nb, path)  # opened in JupyterLab and saved
    assert committed(path, tmp_path).cells[0].outputs == []
    subprocess.run([*git, "commit", "-q", "-am", "outputs"], check=True)
    assert committed(path, tmp_path).cells[0].execution_count == 1  # caught


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterized(path):
    stored = committed(path)
    assert all(
        not c.outputs and c.execution_count is None
        for c in stored.cells
        if c.cell_type == "code"
    ), "strip outputs (make setup installs nbstripout's git filter)"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
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
    for name in ("quick", "gpu"):
        if runner.parameter_file(path, name).exists():
            assert set(runner.parameter_set(path, name)) <= assigned, (
                f"the {name} set sets unknown parameters"
            )


MAX_CELL_LINES = 15  # STYLE.md: one idea per screen


def long_cells(nb) -> list[str]:
    """Code cells over MAX_CELL_LINES lines, besides the three kinds a notebook
    holds by design: its imports, its one parameters cell (a literal config block,
    a line per parameter) and its results record (`results = {...}`, a key per
    number the bars check, with the run's own asserts)."""
    found = []
    for k, cell in enumerate(nb.cells):
        lines = cell.source.splitlines()
        if cell.cell_type != "code" or len(lines) <= MAX_CELL_LINES:
            continue
        statements = ast.parse(cell.source).body
        if (
            "parameters" in cell.metadata.get("tags", [])
            or all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in statements)
            or any(line.startswith("results = {") for line in lines)
        ):
            continue
        found.append(f"cell {k} ({len(lines)} lines): {lines[0][:60]}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_fit_on_a_screen(path):
    assert not long_cells(nbformat.read(path, as_version=4))


def test_a_long_cell_is_found():
    nb = nbformat.v4.new_notebook()
    body = "\n".join(f"x{k} = {k}" for k in range(MAX_CELL_LINES + 1))
    imports = "\n".join(f"import m{k}" for k in range(20))
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (imports, body, body[:20])]
    assert long_cells(nb) == [f"cell 1 ({MAX_CELL_LINES + 1} lines): x0 = 0"]


FRACTIONS = ("accuracy", "rate", "curve", "share", "robust")


def check_fractions(results):
    """Accuracies, rates, curves and shares are fractions in [0, 1], lists too."""
    for key, value in results.items():
        if any(word in key for word in FRACTIONS):
            for v in value if isinstance(value, list) else [value]:
                assert v is None or 0.0 <= v <= 1.0, (key, value)


def check_provenance(results, parameters, arch):
    run = results.pop("provenance")
    assert run["parameters"]["SEED"] == run["seed"] == parameters.get("SEED", 0)
    assert parameters.items() <= run["parameters"].items()
    assert run["threads"] >= 1 and run["torch"] and run["device"] == "cpu"
    dataset = parameters.get("DATASET", datasets.DEFAULT)
    assert run["dataset"] == run["parameters"]["DATASET"] == dataset
    assert run["arch"] == arch
    assert None not in run["parameters"].values()  # every default was set


@pytest.fixture(scope="session")
def cifar_miniature(tmp_path_factory):
    """A learnable CIFAR-10-format set and the ROBUSTKIT_DATASETS file declaring it."""
    root = tmp_path_factory.mktemp("cifar10")
    folder = cifar_format.miniature(root)
    return root, cifar_format.declare(folder, root / "datasets.json")


@pytest.mark.notebook
@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_records_results(path, dataset, tmp_path, request):
    """Quick, on each dataset: the relations hold on any of them; the absolute
    levels (measured on MNIST) are checked on MNIST."""
    if dataset == "cifar10":
        root, declared = request.getfixturevalue("cifar_miniature")
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("ROBUSTKIT_DATA", str(root))
        monkeypatch.setenv(datasets.ENV, str(declared))
    parameters = {"DATASET": dataset}
    results = runner.execute(
        path, tmp_path, quick=True, parameters=parameters, timeout=900
    )
    quick = runner.parameter_set(path, "quick")
    check_provenance(results, {**quick, **parameters}, quick["ARCH"])
    check_fractions(results)
    levels = dataset == datasets.DEFAULT
    assert not bars.broken(path.name, results, levels=levels), bars.margins(
        path.name, results, levels=levels
    )


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_at_teaching_defaults(path, tmp_path):
    """`make test-all`: the teaching run (minutes to an hour each on a CPU; seconds
    where shipped models match), checked against the issues' full-size bars."""
    results = runner.execute(path, tmp_path, quick=False, timeout=4 * 3600)
    check_provenance(results, {}, datasets.get(datasets.DEFAULT).arch)
    check_fractions(results)
    broken = bars.broken(path.name, results, full=True)
    assert not broken, bars.margins(path.name, results, full=True)
