"""Notebook parameters: every one is declared with a type and range, bad values and
unknown names stop a run before any work, and results say what produced them."""

from __future__ import annotations

import ast
import json

import nbformat
import papermill as pm
import pytest
import torch

from robustkit import datasets, utils
from robustkit.course import parameters, runner, sweep

NOTEBOOKS = runner.notebooks()
TYPES = {"int": int, "float": float, "str": str, "list": list, "bool": bool}


def declared(path):
    """{name: (annotation, optional, default)} of a notebook's parameters cell;
    `Optional[float]` reads as ("float", True)."""
    nb = nbformat.read(path, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    found = {}
    for stmt in ast.parse(cell.source).body:
        note, optional = stmt.annotation, False
        if isinstance(note, ast.Subscript) and note.value.id == "Optional":
            note, optional = note.slice, True
        found[stmt.target.id] = (note.id, optional, ast.literal_eval(stmt.value))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_parameter_has_a_spec_of_its_annotated_type(path):
    for name, (annotation, optional, default) in declared(path).items():
        assert name in parameters.SPECS, f"{name}: add it to parameters.SPECS"
        spec = parameters.SPECS[name]
        assert spec.kind is TYPES[annotation], name
        assert optional == (default is None), f"{name}: Optional iff None by default"
        assert not optional or spec.optional, f"{name}: mark its spec optional"
        parameters.check_value(name, default)  # the teaching defaults are allowed
    for chosen in ("quick", "gpu"):  # every parameter file holds allowed values
        values = runner.parameter_set(path, chosen)
        for name, value in values.items():
            parameters.check_value(name, value)
        parameters.check({**{"SEED": 0, "DATASET": datasets.DEFAULT}, **values})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_takes_a_dataset_and_reads_its_defaults(path):
    params = declared(path)
    assert params["DATASET"] == ("str", False, datasets.DEFAULT)
    assert params["ARCH"][1:] == (True, None)  # the dataset's architecture
    papermill = pm.inspect_notebook(str(path))  # papermill reads the same names
    assert set(papermill) == set(params)
    assert papermill["ARCH"]["inferred_type_name"] == "Optional[str]"


def test_dataset_dependent_limits_are_checked_against_the_dataset():
    ok = {"SEED": 0, "DATASET": "cifar10", "PATCH_SIZE": 32, "PATCH_TARGET": 9}
    assert parameters.check(ok) == ok
    for name, value, words in [
        ("PATCH_SIZE", 29, "larger than the image side of mnist \\(28\\)"),
        ("PATCH_TARGET", 10, "larger than the last class of mnist \\(9\\)"),
        ("N_TARGETS", 10, "the number of other classes"),
        ("EPS_L2", 28.5, "the L2 diameter of the images of mnist \\(28\\)"),
    ]:
        with pytest.raises(parameters.ParameterError, match=f"{name}={value}.*{words}"):
            parameters.check({"SEED": 0, "DATASET": "mnist", name: value})
    with pytest.raises(parameters.ParameterError, match="DATASET must be 'mnist'"):
        parameters.check({"SEED": 0, "DATASET": "svhn"})
    with pytest.raises(parameters.ParameterError, match="ARCH must be None"):
        parameters.check({"SEED": 0, "DATASET": "mnist", "ARCH": "vgg"})


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
    ("EPS", "abc", "EPS must be .* a number in \\(0, 1\\].*'abc'"),  # TypeError later
    ("EPS", 2, "EPS must be None \\(the dataset's\\) or a number in \\(0, 1\\]"),
    ("EPS", float("nan"), "EPS must be"),
    ("EPS", True, "EPS must be"),
    ("STEPS", 0, "STEPS must be an int >= 1"),
    ("STEPS", 2.5, "STEPS must be an int >= 1"),
    ("N_TEST", 0, "N_TEST must be an int >= 1"),  # showed an accuracy of 0.0
    ("EPOCHS", 0, "EPOCHS must be .*an int >= 1"),  # cached an untrained model
    ("EPS_VALUES", 0.1, "EPS_VALUES must be .* a non-empty list"),
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
    with pytest.raises(ValueError, match="has no parameter DATASETS.*SEED"):
        runner.execute(nb, tmp_path, parameters={"DATASETS": "fashion_mnist"})
    with pytest.raises(ValueError, match="DATASET must be 'mnist'"):
        runner.execute(nb, tmp_path, parameters={"DATASET": "imagenet"})
    with pytest.raises(ValueError, match="no parameter set 'tpu'.*quick"):
        runner.execute(nb, tmp_path, sets=("tpu",))
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
    assert "EPS must be None (the dataset's) or a number in (0, 1]" in str(info.value)
    executed = nbformat.read(out, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    errors = [any(o.output_type == "error" for o in c.outputs) for c in code]
    tags = [c.metadata.get("tags", []) for c in code]
    (injected,) = [i for i, t in enumerate(tags) if "injected-parameters" in t]
    # the setup cell, right after the parameters, is the first and only one to fail
    assert errors.index(True) == injected + 1 and not any(errors[injected + 2 :])


def test_certification_with_an_architecture_ibp_cannot_pass_stops_in_setup(tmp_path):
    """Notebook 06 names the residual block and the fix before training anything."""
    nb = runner.NOTEBOOK_DIR / "06_certified_robustness.ipynb"
    with pytest.raises(pm.PapermillExecutionError, match="PreActBlock") as info:
        pm.execute_notebook(
            str(nb), str(tmp_path / "out.ipynb"),
            parameters={"ARCH": "preact_resnet18"}, kernel_name="python3",
            progress_bar=False, cwd=str(nb.parent),
        )  # fmt: skip
    assert "-p ARCH small_cnn" in str(info.value)
    assert not list(tmp_path.glob("*.json"))


def test_run_info_records_what_produced_the_results(tmp_path):
    params = {"SEED": 3, "DATASET": "cifar10", "ARCH": None, "EPS": None}
    resolved = {**params, "EPS": 8 / 255}  # the notebook set the dataset's budget
    info = parameters.run_info(params, resolved, device=torch.device("cpu"))
    assert info["parameters"] == resolved and info["seed"] == 3
    assert info["dataset"] == "cifar10" and info["arch"] == "preact_resnet18"
    assert info["threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__ and info["device"] == "cpu"
    path = tmp_path / "r.json"
    utils.record_results({"accuracy": 0.5}, path, provenance=info)
    written = json.loads(path.read_text())
    assert written["accuracy"] == 0.5 and written["provenance"]["seed"] == 3
    with pytest.raises(ValueError, match="reserved"):
        utils.record_results({"provenance": 1}, path)
