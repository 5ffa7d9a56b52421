"""How far each notebook bar is from breaking, over seeds and thread counts.

    python bench/bar_margins.py                  # seeds 0-3, 1 and 2 threads
    python bench/bar_margins.py --seeds 0 1 --threads 1 --jobs 2
    python bench/bar_margins.py --dataset fashion_mnist --seeds 1 2 3 --threads 1
    python bench/bar_margins.py --from outputs/bar_margins  # print earlier runs

Every (seed, threads) pair runs every notebook with its QUICK parameters
(`robustkit.course.runner`) in a fresh process with OMP_NUM_THREADS set, and a
fresh checkpoint cache, so each model is trained under that seed and thread count
rather than loaded. The table prints each bar's margin (`robustkit.course.bars`:
>= 0 holds) per run, and the smallest. A bar whose smallest margin is near zero is
decided by one image or one lucky run; a negative one is broken. On a dataset other
than the default, the absolute levels (measured on MNIST) are left out, as in the
notebook tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from robustkit import datasets
from robustkit.course import bars, runner


def run(seed: int, threads: int, out: Path, dataset: str) -> None:
    """Every notebook, QUICK, on `dataset` for one seed under one thread count,
    into `out`."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ROBUSTKIT_CACHE": cache}
        command = [
            sys.executable,
            "-m",
            "robustkit.course.runner",
            "--quick",
            "--dataset",
            dataset,
            "--out",
            str(out),
        ]
        done = subprocess.run(
            [*command, "-p", "SEED", str(seed)], env=env, capture_output=True,
            text=True,
        )  # fmt: skip
    if done.returncode:  # the table shows its missing results; the log says why
        out.mkdir(parents=True, exist_ok=True)
        (out / "failed.log").write_text(done.stdout + done.stderr)


def table(out: Path) -> tuple[str, int]:
    """The margins of every run under `out` (one folder per run), and how many bars
    break in some run."""
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    rows, broken = [], 0
    header = (
        f"{'notebook / bar':58s}" + "".join(f"{r.name:>9s}" for r in runs) + "      min"
    )
    for notebook in (p.name for p in runner.notebooks()):
        rows.append(notebook)
        per_run = []
        for r in runs:
            path = r / notebook.replace(".ipynb", ".json")
            results = json.loads(path.read_text()) if path.exists() else None
            per_run.append(
                bars.margins(notebook, results, levels=bars.on_default_dataset(results))
                if results else {}
            )  # fmt: skip
        for bar in bars.QUICK[notebook]:
            values = [m.get(bar.name) for m in per_run]
            known = [v for v in values if v is not None]
            low = min(known) if known else float("nan")
            broken += low < 0
            cells = "".join(
                f"{v:+9.3f}" if v is not None else f"{'-':>9s}" for v in values
            )
            flag = "  BROKEN" if low < 0 else ""
            low_cell = f"{low:+9.3f}" if known else f"{'-':>9s}"  # a level, left out
            rows.append(f"  {bar.name[:56]:56s}{cells}{low_cell}{flag}")
    return "\n".join([header, *rows]), broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--dataset", default=datasets.DEFAULT, choices=datasets.names())
    parser.add_argument("--out", type=Path, default=runner.OUTPUT_DIR / "bar_margins")
    parser.add_argument("--from", dest="source", type=Path, help="print earlier runs")
    args = parser.parse_args(argv)
    out = args.source or args.out
    if args.source is None:
        pairs = [(s, t) for t in args.threads for s in args.seeds]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(
                pool.map(
                    lambda p: run(*p, out / f"s{p[0]}-t{p[1]}", args.dataset), pairs
                )
            )
    text, broken = table(out)
    print(text)
    print(
        f"{broken} bar(s) broken in some run"
        if broken
        else "every bar holds in every run"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
