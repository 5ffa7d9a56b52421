"""JupyterLab for real: a server on loopback in this environment opens every notebook
through its REST API, runs notebook 00 cell by cell on one of its kernels over the
websocket protocol, and serves the ipywidgets extension. Where headless Chromium is
installed, a browser also loads JupyterLab and takes a screenshot."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from robustkit.course import runner
from robustkit.utils import ROOT

TOKEN = uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("lab") / "lab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={ROOT}",
            "--ServerApp.open_browser=False",
            "--allow-root",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            get(base, "/api/status")
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail(f"JupyterLab did not start; see {log.name}")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


def get(base: str, path: str, method: str = "GET", body: dict | None = None):
    request = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def test_every_notebook_opens_through_the_rest_api(lab):
    listing = get(lab, "/api/contents/notebooks")
    names = {item["name"] for item in listing["content"]}
    assert {nb.name for nb in runner.notebooks()} <= names
    for nb in runner.notebooks():
        model = get(lab, f"/api/contents/notebooks/{nb.name}")
        assert model["type"] == "notebook" and model["content"]["cells"]
        assert any(
            "parameters" in c["metadata"].get("tags", [])
            for c in model["content"]["cells"]
        )


def test_the_ipywidgets_extension_is_served(lab):
    # the extension manager lists @jupyter-widgets/jupyterlab-manager under its
    # normalized name
    names = {e["name"] for e in get(lab, "/lab/api/extensions")}
    assert "jupyter-widgets-jupyterlab-manager" in names


async def run_cells(lab: str, kernel_id: str, cells: list[str]) -> list[str]:
    """Execute `cells` in order on a kernel over the websocket protocol, as JupyterLab
    does; return what each printed (stdout and results). An error fails the test."""
    from tornado.websocket import websocket_connect

    url = lab.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?token={TOKEN}"
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


def run_on_new_kernel(lab: str, cells: list[str], timeout: int) -> list[str]:
    from tornado.ioloop import IOLoop

    kernel = get(lab, "/api/kernels", "POST", {"name": "python3"})
    try:
        return IOLoop.current().run_sync(
            lambda: run_cells(lab, kernel["id"], cells), timeout=timeout
        )
    finally:
        get(lab, f"/api/kernels/{kernel['id']}", "DELETE")


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
    nb = get(lab, f"/api/contents/notebooks/{name}")["content"]
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


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="headless Chromium is not installed (Debian package chromium)",
)
def test_a_browser_loads_jupyterlab(lab, tmp_path):
    shot = tmp_path / "lab.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,800",
            "--virtual-time-budget=15000",
            f"{lab}/lab/tree/notebooks/01_adversarial_examples.ipynb?token={TOKEN}",
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    assert shot.exists() and shot.stat().st_size > 10_000
