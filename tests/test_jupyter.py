"""JupyterLab for real: a server on loopback in this environment opens every notebook
through its REST API, runs notebook 00 cell by cell on one of its kernels over the
websocket protocol, and serves the ipywidgets extension with robustkit's settings.
A browser drives it in test_browser."""

from __future__ import annotations

import json
import uuid

import labserver
import pytest

from robustkit.course import runner
from robustkit.utils import ROOT


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    with labserver.serve(ROOT, log) as server:
        yield server


def test_every_notebook_opens_through_the_rest_api(lab):
    listing = lab.get("/api/contents/notebooks")
    names = {item["name"] for item in listing["content"]}
    assert {nb.name for nb in runner.notebooks()} <= names
    for nb in runner.notebooks():
        model = lab.get(f"/api/contents/notebooks/{nb.name}")
        assert model["type"] == "notebook" and model["content"]["cells"]
        assert any(
            "parameters" in c["metadata"].get("tags", [])
            for c in model["content"]["cells"]
        )


def test_the_ipywidgets_extension_is_served(lab):
    # the extension manager lists @jupyter-widgets/jupyterlab-manager under its
    # normalized name
    names = {e["name"] for e in lab.get("/lab/api/extensions")}
    assert "jupyter-widgets-jupyterlab-manager" in names


async def run_cells(lab: labserver.Lab, kernel_id: str, cells: list[str]) -> list[str]:
    """Execute `cells` in order on a kernel over the websocket protocol, as JupyterLab
    does; return what each printed (stdout and results). An error fails the test."""
    from tornado.websocket import websocket_connect

    url = (
        lab.base.replace("http", "ws")
        + f"/api/kernels/{kernel_id}/channels?token={lab.token}"
    )
    ws = await websocket_connect(url)
    session, printed = uuid.uuid4().hex, []
    for number, code in enumerate(cells):
        msg_id = uuid.uuid4().hex
        ws.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": session,
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                    },
                }
            )
        )
        out = []
        while True:
            msg = json.loads(await ws.read_message())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            if msg["msg_type"] == "execute_result":
                out.append(msg["content"]["data"].get("text/plain", ""))
            if msg["msg_type"] == "error":
                raise AssertionError(
                    f"cell {number} failed:\n" + "\n".join(msg["content"]["traceback"])
                )
            if (
                msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                break
        printed.append("".join(out))
    ws.close()
    return printed


def run_on_new_kernel(lab: labserver.Lab, cells: list[str], timeout: int) -> list[str]:
    from tornado.ioloop import IOLoop

    kernel = lab.get("/api/kernels", "POST", {"name": "python3"})
    try:
        return IOLoop.current().run_sync(
            lambda: run_cells(lab, kernel["id"], cells), timeout=timeout
        )
    finally:
        lab.get(f"/api/kernels/{kernel['id']}", "DELETE")


def test_a_kernel_runs_robustkit_code_over_the_websocket(lab):
    code = (
        "from robustkit import data, widgets\n"
        "d = data.load('mnist', n_train=0, n_test=8)\n"
        "print(tuple(d.x_test.shape), widgets.has_frontend())"
    )
    (printed,) = run_on_new_kernel(lab, [code], timeout=120)
    assert "(8, 1, 28, 28)" in printed


def test_a_notebook_runs_cell_by_cell_through_a_kernel(lab):
    """Notebook 00, fetched through the REST API and run on a kernel of the server,
    cell after cell, with small parameters appended to its parameters cell (as
    papermill injects them)."""
    name = "00_setup_and_tour.ipynb"
    nb = lab.get(f"/api/contents/notebooks/{name}")["content"]
    quick = runner.parameter_set(runner.NOTEBOOK_DIR / name, "quick")
    small = {**quick, "N_TRAIN": 1_000, "N_TEST": 200, "EPOCHS": 1}
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if "parameters" in cell["metadata"].get("tags", []):
            source += "".join(f"\n{k} = {v!r}" for k, v in small.items())
        cells.append(source)
    cells.append("print('results', sorted(results))")
    printed = run_on_new_kernel(lab, cells, timeout=600)
    assert "test_accuracy" in printed[-1] and "n_train" in printed[-1]


def test_saved_notebooks_keep_their_widget_state(lab):
    """`make setup` installs robustkit's JupyterLab settings (saveState): a saved
    notebook carries its widgets' state, so reopened it shows them, not "Error
    displaying widget: model not found" (test_browser checks it in a browser)."""
    plugin = "@jupyter-widgets/jupyterlab-manager:plugin"
    schema = lab.get(f"/lab/api/settings/{plugin}")["schema"]  # overrides: defaults
    assert schema["properties"]["saveState"]["default"] is True
