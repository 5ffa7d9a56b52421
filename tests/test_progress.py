"""Progress bars: every item, the outermost loop's one-line summary, and no widget
or frozen bar left in a saved notebook (robustkit.progress)."""

from __future__ import annotations

import json

import nbformat
import papermill as pm

from robustkit import progress

WIDGET = "application/vnd.jupyter.widget-view+json"


def test_every_item_comes_through_disabled_or_not_and_nesting_unwinds():
    assert list(progress.bar(range(5), desc="x", disable=True)) == list(range(5))
    seen = [
        (i, list(progress.bar(range(3), desc="inner")))
        for i in progress.bar(range(2), desc="outer")
    ]
    assert seen == [(0, [0, 1, 2]), (1, [0, 1, 2])] and progress._open == [0]
    try:
        for _ in progress.bar(range(3), desc="fails"):
            raise KeyError("boom")
    except KeyError:
        pass
    assert progress._open == [0]  # an exception does not leave a bar open


def test_outside_a_kernel_the_bar_is_tqdm_text_and_only_the_outer_one_stays(capsys):
    for _ in progress.bar(range(2), desc="outer", unit="epoch"):
        list(progress.bar(range(3), desc="inner", unit="batch"))
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("outer: 100%") and "2/2" in last
    assert "inner" in err  # drawn while it ran, then cleared


CELL = """
from robustkit import progress, widgets
for epoch in progress.bar(range(3), desc="epochs", unit="epoch"):
    for batch in progress.bar(range(4), desc="batches", unit="batch"):
        pass
"""


def test_a_saved_notebook_keeps_one_summary_line_and_no_widget(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    live = "widgets.has_frontend = lambda: True  # as JupyterLab answers\n"
    nb.cells = [
        nbformat.v4.new_code_cell(CELL),  # papermill: nobody watches
        nbformat.v4.new_code_cell(live + CELL),  # a frontend: a live widget bar
        nbformat.v4.new_code_cell(
            "list(progress.bar(range(2), desc='quiet', disable=True))"
        ),
    ]
    nbformat.write(nb, tmp_path / "in.ipynb")
    pm.execute_notebook(
        str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"),
        kernel_name="python3", progress_bar=False,
    )  # fmt: skip
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    for cell in out.cells[:2]:
        text = json.dumps(cell.outputs)
        assert WIDGET not in text and "0%" not in text and "batches" not in text
        (shown,) = cell.outputs  # one line, where a widget was or none was
        assert shown["output_type"] == "display_data"
        assert shown["data"]["text/plain"].startswith("epochs: 3/3 epoch in 00:0")
    assert out.cells[2].outputs[0]["data"]["text/plain"] == "[0, 1]"
