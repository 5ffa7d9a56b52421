"""The course tooling: the HTML site, parameter sweeps and the CI workflow."""

from __future__ import annotations

import base64
import csv
import html as html_module
import io
import json
import re

import nbformat
import pytest
import yaml

from robustkit import plotting
from robustkit.course import html, runner, sweep
from robustkit.utils import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "notebooks.yml"


# ----------------------------------------------------------------------- html


def executed_notebook():
    """A notebook as papermill leaves it: a title, a figure, a progress bar widget."""
    fig = plotting.new_figure((2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    png = io.BytesIO()
    fig.savefig(png, format="png")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    cell = nbformat.v4.new_code_cell("plotting.curves(...)", execution_count=1)
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={
                "application/vnd.jupyter.widget-view+json": {
                    "model_id": "abc",
                    "version_major": 2,
                    "version_minor": 0,
                },
                "text/plain": "HBox(children=(FloatProgress(value=0.0),))",
            },
        ),  # fmt: skip
        nbformat.v4.new_output(
            "execute_result",
            data={
                "image/png": base64.b64encode(png.getvalue()).decode(),
                "text/plain": "<Figure>",
            },
            execution_count=1,
        ),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# 05 · A tiny page\n\nText."), cell]
    return nb


def test_html_site_has_an_index_and_pages_with_embedded_figures(tmp_path):
    src = tmp_path / "outputs"
    src.mkdir()
    nbformat.write(executed_notebook(), src / "05_tiny.ipynb")
    (src / "05_tiny.json").write_text(json.dumps({"clean_accuracy": 0.9}))
    nbformat.write(nbformat.v4.new_notebook(), src / "06_untitled.ipynb")

    index = html.build(src, tmp_path / "site")

    text = index.read_text()
    assert '<a href="05_tiny.html">05 · A tiny page</a>' in text
    assert '<a href="05_tiny.json">results</a>' in text
    assert '<a href="06_untitled.html">06_untitled</a>' in text
    page = (tmp_path / "site" / "05_tiny.html").read_text()
    assert re.search(r'<img[^>]+src="data:image/png;base64,', page)
    assert "<title>05 · A tiny page</title>" in page
    assert "widget-view" not in page and "FloatProgress" not in page
    assert (tmp_path / "site" / "05_tiny.json").exists()


def test_html_pages_render_offline_hide_solutions_and_say_what_ran(tmp_path):
    src = tmp_path / "outputs"
    src.mkdir()
    nb = executed_notebook()
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("Inline $x^2$ and $$\\epsilon$$"))
    solution = "def my_fgsm():\n    return 'the secret answer'"
    nb.cells.insert(
        2, nbformat.v4.new_code_cell(solution, metadata={"tags": ["solution"]})
    )
    key = nbformat.v4.new_code_cell("print('1. the answer key')")
    key.metadata["tags"] = ["answer-key"]
    nb.cells.insert(3, key)
    source = ROOT / "notebooks" / "01_adversarial_examples.ipynb"
    quick = runner.parameter_set(source, "quick")
    nb.metadata["papermill"] = {
        "input_path": str(source), "end_time": "2026-12-01T23:50:07.1+00:00",
        "parameters": {**quick, "DATASET": "fashion_mnist", "RESULTS_PATH": "x.json"},
    }  # fmt: skip
    nbformat.write(nb, src / "01_adversarial_examples.ipynb")
    provenance = {"dataset": "fashion_mnist", "device": "cpu"}
    (src / "01_adversarial_examples.json").write_text(
        json.dumps({"provenance": provenance})
    )
    index = html.build(src, tmp_path / "site")
    page = (tmp_path / "site" / "01_adversarial_examples.html").read_text()
    line = ("Run with the quick parameters and {'DATASET': 'fashion_mnist'}, on "
            "fashion_mnist, on cpu, finished 2026-12-01 23:50 UTC.")  # fmt: skip
    assert line in page and html_module.escape(line) in index.read_text()
    assert "the secret answer" not in page and "my_fgsm" not in page
    assert "answer key" not in page
    scripts = re.findall(r'<script[^>]*src="([^"]*)"', page)
    assert scripts == [html.MATHJAX], scripts  # nothing from a CDN, no require.js
    assert (tmp_path / "site" / "mathjax" / "MathJax.js").exists()
    config = tmp_path / "site" / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js"
    assert config.exists() and "$x^2$" in page
    nb.metadata["papermill"]["parameters"] = {}
    assert html.run_line(nb).startswith("Run with teaching defaults, on the default")
    del nb.metadata["papermill"]["end_time"]
    assert html.run_line(nb).endswith("finished at an unrecorded time.")


def test_html_refuses_an_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="make run"):
        html.build(tmp_path)


# ---------------------------------------------------------------------- sweep

PARAMETERS = """\
SEED: int = 0  # global RNG seed
EPS: float = 0.1  # budget
RESULTS_PATH: str = ""  # where to write the results JSON
"""
BODY = """\
from robustkit import utils

utils.record_results(
    {"seed": SEED, "robust_accuracy": 1 - EPS - SEED / 100, "curve": [EPS, 0.0]},
    RESULTS_PATH,
)
"""


def parameterized_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python"
    }  # fmt: skip
    nb.cells = [
        nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(BODY),
    ]
    nbformat.write(nb, path)
    return path


def test_parse_grid_and_points():
    grid = sweep.parse_grid(["SEED=[0, 1]", "EPS=[0.1, 0.2, 0.3]"])
    assert grid == {"SEED": [0, 1], "EPS": [0.1, 0.2, 0.3]}
    assert len(sweep.points(grid)) == 6
    assert sweep.points(grid)[1] == {"SEED": 0, "EPS": 0.2}
    for bad in ["SEED", "SEED=0", "SEED=[]", "1X=[1]", "EPS=[0.1"]:
        with pytest.raises(ValueError, match="NAME="):
            sweep.parse_grid([bad])


@pytest.mark.notebook
def test_sweep_writes_one_csv_row_per_grid_point_and_a_plot(tmp_path):
    notebook = parameterized_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "sweep"
    argv = [str(notebook), "--grid", "SEED=[1]", "--grid", "EPS=[0.1, 0.2]"]
    argv += ["--jobs", "2", "--out", str(out), "--plot-y", "robust_accuracy"]
    assert sweep.main(argv) == 0
    with (out / "tiny.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # the grid's size (`points` is tested on a larger grid)
    assert list(rows[0])[:4] == ["run", "status", "SEED", "EPS"]
    assert "curve" not in rows[0]  # lists are not scalars
    for row in rows:
        assert row["status"] == "ok" and row["error"] == ""
        expected = 1 - float(row["EPS"]) - int(row["SEED"]) / 100
        assert float(row["robust_accuracy"]) == pytest.approx(expected)
    assert [row["EPS"] for row in rows] == ["0.1", "0.2"]
    assert (out / "tiny_robust_accuracy_vs_EPS.png").stat().st_size > 0
    assert (out / "runs" / "001" / "tiny.ipynb").exists()


def test_plot_and_csv_of_rows(tmp_path):
    rows = [
        {"run": 0, "status": "ok", "EPS": 0.1, "acc": 0.8, "error": ""},
        {"run": 1, "status": "ok", "EPS": 0.2, "acc": 0.5, "error": ""},
        {"run": 2, "status": "failed", "EPS": 0.3, "error": "KeyError: 'x'"},
    ]
    fig = sweep.plot(rows, "EPS", "acc")
    mean = fig.axes[0].lines[1]
    assert list(mean.get_xdata()) == [0.1, 0.2]
    with pytest.raises(ValueError, match="grid parameter"):
        sweep.plot(rows, "SEED", "acc")
    path = sweep.write_csv(rows, tmp_path / "rows.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "run,status,EPS,acc,error" and len(lines) == 4


# ------------------------------------------------------------------- workflow


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, flags=re.MULTILINE))


def workflow_commands() -> list[str]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return [
        step["run"]
        for job in workflow["jobs"].values()
        for step in job["steps"]
        if "run" in step
    ]


def test_workflow_parses_and_uses_the_expected_actions():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    uses = [step.get("uses", "") for step in steps]
    setups = [s for s in steps if s.get("uses", "").startswith("actions/setup-python")]
    assert setups and all(s["with"]["cache"] == "pip" for s in setups)
    assert any(u.startswith("actions/upload-artifact") for u in uses)
    matrix = workflow["jobs"]["notebooks"]["strategy"]["matrix"]
    assert {"seed", "quick"} <= set(matrix)
    uploaded = " ".join(
        s["with"]["path"] for s in steps if "upload-artifact" in s.get("uses", "")
    )
    assert "outputs/*.ipynb" in uploaded and "outputs/*.json" in uploaded


def test_workflow_calls_only_existing_make_targets_and_modules():
    commands = " ".join(workflow_commands())
    used = set(re.findall(r"\bmake\s+([A-Za-z][\w-]*)", commands))
    assert "setup" in used
    missing = used - makefile_targets()
    assert not missing, (
        f"the workflow calls make targets not in the Makefile: {missing}"
    )
    for module in re.findall(r"-m\s+robustkit\.([\w.]+)", commands):
        path = ROOT / "robustkit" / (module.replace(".", "/") + ".py")
        assert path.exists(), module
    # the notebooks job executes the notebooks once, with its matrix's parameters;
    # `make html` (which depends on `make run`) would run them again at teaching size
    runs = [c for c in workflow_commands() if "robustkit.course.runner" in c]
    assert len(runs) == 1 and "make html" not in commands


def test_workflow_checks_the_bars_of_every_seed_it_runs():
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["notebooks"]
    assert job["strategy"]["matrix"]["seed"] == [0, 1, 2, 3]
    runs = [step.get("run", "") for step in job["steps"]]
    execute = next(i for i, r in enumerate(runs) if "robustkit.course.runner" in r)
    check = next(i for i, r in enumerate(runs) if "robustkit.course.bars outputs" in r)
    assert check > execute and "--full" in runs[check]  # for the teaching-size runs


def test_bars_report_broken_claims_and_the_command_fails_on_them(tmp_path, capsys):
    from robustkit.course import bars

    assert bars.falls([0.5, 0.51, 0.2]) == pytest.approx(0.01)
    assert bars.falls([0.5, 0.6]) == pytest.approx(-0.08)
    good = {"test_accuracy": 0.97, "first_train_loss": 2.0, "final_train_loss": 0.1}
    bad = {**good, "test_accuracy": 0.9}
    assert bars.broken("00_setup_and_tour.ipynb", good) == []
    assert bars.broken("00_setup_and_tour.ipynb", good, full=True) == [
        "test accuracy >= 0.99 (margin -0.020)"
    ]
    (tmp_path / "00_setup_and_tour.json").write_text(json.dumps(bad))
    assert bars.main([str(tmp_path)]) == 1
    assert "BROKEN test accuracy >= 0.95 (margin -0.050)" in capsys.readouterr().out
    (tmp_path / "00_setup_and_tour.json").write_text(json.dumps(good))
    assert bars.main([str(tmp_path)]) == 0
    with pytest.raises(ValueError, match="no bars"):
        bars.margins("99_unknown.ipynb", good)


def test_bar_margins_leaves_the_mnist_levels_out_of_runs_on_other_datasets(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bar_margins", ROOT / "bench" / "bar_margins.py"
    )
    bar_margins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bar_margins)
    # a quick 00 result below MNIST's 95% level, as Fashion-MNIST's honestly is
    results = dict(test_accuracy=0.84, first_train_loss=1.0, final_train_loss=0.4)
    for run, dataset in (("a-mnist", "mnist"), ("b-fashion", "fashion_mnist")):
        (tmp_path / run).mkdir()
        (tmp_path / run / "00_setup_and_tour.json").write_text(
            json.dumps({**results, "provenance": {"dataset": dataset}})
        )
    text, broken = bar_margins.table(tmp_path)
    rows = {line[:58].strip(): line[58:].split() for line in text.splitlines()}
    assert rows["test accuracy >= 0.95"] == ["-0.110", "-", "-0.110", "BROKEN"]
    assert rows["training loss falls"] == ["+0.600", "+0.600", "+0.600"]
    assert broken == 1  # the level, on the MNIST run only
    (tmp_path / "a-mnist" / "00_setup_and_tour.json").unlink()
    rows = {
        line[:58].strip(): line[58:].split()
        for line in bar_margins.table(tmp_path)[0].splitlines()
    }
    assert rows["test accuracy >= 0.95"] == ["-", "-", "-"]  # no run it applies to
