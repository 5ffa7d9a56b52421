"""Notebook parameters: every one is declared with a type and range, bad values and
unknown names stop a run before any work, and results say what produced them."""

from __future__ import annotations

import ast
import json

import nbformat
import papermill as pm
import pytest
import torch

from robustkit import parameters, runner, sweep, utils

NOTEBOOKS = runner.notebooks()
TYPES = {"int": int, "float": float, "str": str, "list": list, "bool": bool}


def declared(path):
    """{name: (annotation, default)} of a notebook's parameters cell."""
    nb = nbformat.read(path, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return {
        stmt.target.id: (stmt.annotation.id, ast.literal_eval(stmt.value))
        for stmt in ast.parse(cell.source).body
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_parameter_has_a_spec_of_its_annotated_type(path):
    for name, (annotation, default) in declared(path).items():
        assert name in parameters.SPECS, f"{name}: add it to parameters.SPECS"
        assert parameters.SPECS[name].kind is TYPES[annotation], name
        parameters.check_value(name, default)  # the teaching defaults are allowed
    for name, value in runner.QUICK[path.name].items():
        parameters.check_value(name, value)


def test_every_notebook_checks_its_parameters_before_any_work():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        tags = [c.metadata.get("tags", []) for c in code]
        (i,) = [i for i, t in enumerate(tags) if "parameters" in t]
        first = code[i + 1].source.splitlines()[0]
        assert first.startswith("params = parameters.check(globals())"), path.name
        assert any("provenance=provenance" in c.source for c in code), path.name


# What papermill's -p would pass, and what each used to do.
BAD = [
    ("EPS", "abc", "EPS must be a number in \\(0, 1\\].*'abc'"),  # TypeError later
    ("EPS", 2, "EPS must be a number in \\(0, 1\\]"),  # ran, ball > pixel range
    ("EPS", float("nan"), "EPS must be"),
    ("EPS", True, "EPS must be"),
    ("STEPS", 0, "STEPS must be an int >= 1"),
    ("STEPS", 2.5, "STEPS must be an int >= 1"),
    ("N_TEST", 0, "N_TEST must be an int >= 1"),  # showed an accuracy of 0.0
    ("EPOCHS", 0, "EPOCHS must be an int >= 1"),  # cached an untrained model
    ("EPS_VALUES", 0.1, "EPS_VALUES must be a non-empty list"),
    ("EPS_VALUES", [0.1, 0.05], "not increasing"),
    ("EPS_VALUES", [0.0, 1.5], "budgets in \\[0, 1\\]"),
    ("TEMPERATURES", [], "TEMPERATURES must be a non-empty list"),
    ("DEVICE", "gpu", "DEVICE must be 'auto', 'cpu'"),
    ("SEED", -1, "SEED must be an int >= 0"),
    ("JPEG_QUALITY", 0, "JPEG_QUALITY must be an int in \\[1, 100\\]"),
    ("MEDIAN_SIZE", 4, "MEDIAN_SIZE must be an odd int"),
]


@pytest.mark.parametrize("name, value, message", BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_with_the_name_and_the_allowed_values(
    name, value, message
):
    with pytest.raises(parameters.ParameterError, match=message):
        parameters.check_value(name, value)


def test_good_values_pass_and_tuples_count_as_lists():
    for name, value in [
        ("EPS", 1),
        ("EPS", 8 / 255),
        ("DEVICE", "cuda:1"),
        ("EPS_VALUES", (0.0, 0.1)),
        ("STEPS_LIST", [1, 5]),
        ("NOISE_SIGMA", 0),
    ]:
        parameters.check_value(name, value)


def test_check_reads_the_upper_case_literals_of_a_namespace():
    import torch.nn.functional as F

    namespace = {"F": F, "SEED": 0, "EPS": 0.1, "x": 3, "__name__": "__main__"}
    assert parameters.check(namespace) == {"SEED": 0, "EPS": 0.1}
    with pytest.raises(parameters.ParameterError, match="SPECS"):
        parameters.check({"SEED": 0, "MYSTERY": 1})
    with pytest.raises(parameters.ParameterError, match="EPS"):
        parameters.check({"SEED": 0, "EPS": "abc"})


def test_runner_refuses_an_unknown_parameter_before_starting_a_kernel(tmp_path):
    nb = runner.NOTEBOOK_DIR / "01_adversarial_examples.ipynb"
    with pytest.raises(ValueError, match="has no parameter DATASET.*SEED"):
        runner.execute(nb, tmp_path, parameters={"DATASET": "fashion_mnist"})
    with pytest.raises(ValueError, match="STEPS must be an int >= 1"):
        runner.execute(nb, tmp_path, parameters={"STEPS": 0})
    with pytest.raises(ValueError, match="has no parameter EPSS"):
        sweep.sweep(nb, {"EPSS": [0.1]}, out_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing ran, nothing was written


def test_runner_parses_python_literals():
    assert runner._literal("1_000") == 1000
    assert runner._literal("[0.0, 0.1]") == [0.0, 0.1]
    assert runner._literal("True") is True
    assert runner._literal("cpu") == "cpu"
    assert runner._literal("'cpu'") == "cpu"
    assert runner._literal("8 / 255") == "8 / 255"  # not a literal: left a string


@pytest.mark.notebook
def test_papermill_with_a_bad_value_stops_in_the_first_cell_after_the_parameters(
    tmp_path,
):
    """The check inside the notebook covers papermill used directly, without the
    runner: the run stops at once, before any data is loaded or model trained."""
    nb = runner.NOTEBOOK_DIR / "01_adversarial_examples.ipynb"
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError, match="ParameterError") as info:
        pm.execute_notebook(
            str(nb), str(out), parameters={"EPS": 2}, kernel_name="python3",
            progress_bar=False, cwd=str(nb.parent),
        )  # fmt: skip
    assert "EPS must be a number in (0, 1]" in str(info.value)
    executed = nbformat.read(out, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    errors = [any(o.output_type == "error" for o in c.outputs) for c in code]
    tags = [c.metadata.get("tags", []) for c in code]
    (injected,) = [i for i, t in enumerate(tags) if "injected-parameters" in t]
    # the setup cell, right after the parameters, is the first and only one to fail
    assert errors.index(True) == injected + 1 and not any(errors[injected + 2 :])


def test_run_info_records_what_produced_the_results(tmp_path):
    params = {"SEED": 3, "ARCH": "small_cnn", "EPS": 0.1}
    info = parameters.run_info(params, device=torch.device("cpu"), dataset="mnist")
    assert info["parameters"] == params and info["seed"] == 3
    assert info["dataset"] == "mnist" and info["arch"] == "small_cnn"
    assert info["threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__ and info["device"] == "cpu"
    path = tmp_path / "r.json"
    utils.record_results({"accuracy": 0.5}, path, provenance=info)
    written = json.loads(path.read_text())
    assert written["accuracy"] == 0.5 and written["provenance"]["seed"] == 3
    with pytest.raises(ValueError, match="reserved"):
        utils.record_results({"provenance": 1}, path)
