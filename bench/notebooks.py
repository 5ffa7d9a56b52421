"""Each notebook at its teaching defaults, timed against a forward pass measured here.

Runs every notebook (or those named) with papermill at its defaults, as `make run`
does, and prints its wall time, its slowest cell, and its time divided by the time
of one plain forward pass of the shipped baseline over the dataset's whole test set
(10,000 images), measured in the same run: the ratio says how heavy a notebook is
whatever the machine, the seconds what a learner waits on this one. Shipped models,
shipped evaluations and the cache are used as `make run` uses them; pass --cache
with an empty folder to time a first run without a cache.

    python bench/notebooks.py [NOTEBOOK ...] [--cache DIR] [--out DIR] [--budget 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from robustkit import data, utils, zoo
from robustkit.course import runner


def forward_seconds(repeats: int = 5) -> float:
    """Best wall time of the shipped MNIST baseline's forward over the test set."""
    device = torch.device("cpu")
    splits = data.load("mnist", n_train=0, device=device)
    model, _ = zoo.model("baseline", "mnist", device=device, progress=False)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(splits.x_test), 1_000):
                model(splits.x_test[i : i + 1_000])
        times.append(time.perf_counter() - start)
    return min(times[1:])


def slowest_cell(path: Path) -> tuple[float, str]:
    """The executed notebook's slowest code cell: (seconds, its first line)."""
    cells = json.loads(path.read_text())["cells"]
    timed = [
        (c["metadata"].get("papermill", {}).get("duration") or 0.0,
         "".join(c["source"]).splitlines()[0][:60])
        for c in cells if c["cell_type"] == "code" and c["source"]
    ]  # fmt: skip
    return max(timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: all")
    parser.add_argument("--cache", help="ROBUSTKIT_CACHE for the runs")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-notebooks"))
    parser.add_argument(
        "--budget", type=float, default=300.0, help="seconds a notebook may take"
    )
    args = parser.parse_args()
    if args.cache:
        os.environ["ROBUSTKIT_CACHE"] = str(Path(args.cache).resolve())
    reference = forward_seconds()
    print(f"reference: forward pass over 10,000 MNIST test images, {reference:.3f} s "
          f"({utils.environment(torch.device('cpu'))['cpu']}, "
          f"{torch.get_num_threads()} threads)")  # fmt: skip
    print(f"{'notebook':32s} {'seconds':>8s} {'/ forward':>10s}  slowest cell")
    over = []
    for notebook in args.notebooks or runner.notebooks():
        start = time.perf_counter()
        runner.execute(notebook, args.out)
        seconds = time.perf_counter() - start
        cell_seconds, cell = slowest_cell(args.out / Path(notebook).name)
        print(f"{Path(notebook).stem:32s} {seconds:8.0f} {seconds / reference:10.0f}  "
              f"{cell_seconds:.0f} s: {cell}", flush=True)  # fmt: skip
        if seconds > args.budget:
            over.append(Path(notebook).stem)
    if over:
        print(f"over the {args.budget:.0f} s budget: {', '.join(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
