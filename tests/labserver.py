"""A JupyterLab server on loopback for the tests: a free port, a token, a log."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running server: its base URL and token, and REST calls to it."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def get(self, path: str, method: str = "GET", body: dict | None = None):
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body else None,
            headers={
                "Authorization": f"token {self.token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")


@contextlib.contextmanager
def serve(root: Path, log: Path, *extra: str) -> Iterator[Lab]:
    """JupyterLab on `root` (this environment's, its own settings included) until
    the block ends; `extra` command-line options are passed on."""
    port, token = free_port(), uuid.uuid4().hex
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
                f"--port={port}", f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
                "--allow-root", *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        lab = Lab(f"http://127.0.0.1:{port}", token)
        try:
            for _ in range(120):
                try:
                    lab.get("/api/status")
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail(f"JupyterLab did not start; see {log}")
            yield lab
        finally:
            proc.terminate()
            proc.wait(timeout=30)
