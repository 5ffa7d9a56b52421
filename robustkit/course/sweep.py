"""Run one notebook over a grid of parameters, in parallel; collect a CSV and a plot.

    python -m robustkit.course.sweep notebooks/01_adversarial_examples.ipynb --quick \\
        --grid 'SEED=[0,1,2]' --grid 'EPS=[0.05,0.1,0.2]' --jobs 2 \\
        --plot-x EPS --plot-y pgd_accuracy

Each run is `runner.execute` with one point of the grid (the product of the
--grid lists) in `OUT/runs/NNN/`. `OUT/<stem>.csv` has one row per run: its
number, its status, its parameters and every scalar of its results JSON (lists
are left out). With --plot-y, `OUT/<stem>_<y>_vs_<x>.png` plots that result
against parameter x (default: the first one but SEED): one point per run, and
the mean over the other parameters, joined.

Runs go to fresh ("spawn") worker processes, so a script that calls `sweep()`
needs the usual `if __name__ == "__main__":` guard; notebooks need none.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

from robustkit.course import runner

if TYPE_CHECKING:  # workers import this module: keep matplotlib out of them
    from matplotlib.figure import Figure

OUT_DIR = runner.OUTPUT_DIR / "sweep"


def parse_grid(specs: list[str]) -> dict[str, list]:
    """'NAME=[v1, v2]' strings (JSON lists) -> {NAME: [v1, v2]}."""
    grid = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        try:
            values = json.loads(values) if sep else None
        except json.JSONDecodeError:
            values = None
        if not name.isidentifier() or not isinstance(values, list) or not values:
            raise ValueError(
                f"grid {spec!r} is not NAME=[v1, v2, ...] with a JSON list of values"
            )
        if name in grid:
            raise ValueError(f"grid parameter {name!r} given twice")
        grid[name] = values
    return grid


def points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the last parameter varying fastest."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _run_one(notebook: str, out_dir: str, parameters: dict, quick: bool) -> dict:
    """One run in a worker process: its results, or the error that stopped it."""
    try:
        results = runner.execute(notebook, out_dir, parameters=parameters, quick=quick)
    except Exception as error:  # one failed run must not lose the others
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"[:500]}
    return {"status": "ok", **results}


def _init_worker(threads: int) -> None:
    # the kernel inherits this: `jobs` kernels share the cores instead of fighting
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def sweep(
    notebook: str | Path,
    grid: dict[str, list],
    *,
    out_dir: str | Path = OUT_DIR,
    jobs: int = 1,
    quick: bool = False,
    parameters: dict | None = None,
) -> list[dict]:
    """Execute `notebook` once per grid point, `jobs` at a time; return the rows.

    Each row holds run (0, 1, ...), status ("ok" or "failed"), the grid
    parameters, the scalar results, then error (empty when ok). `parameters` are
    fixed for every run (the grid's values win).
    """
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    notebook, out_dir = Path(notebook), Path(out_dir)
    runs = points(grid)
    for point in runs:  # a typo in the grid fails now, not in every worker
        runner.check_parameters(notebook, {**(parameters or {}), **point})
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(
        jobs, mp_context=get_context("spawn"), initializer=_init_worker,
        initargs=(threads,),
    ) as pool:  # fmt: skip
        futures = [
            pool.submit(
                _run_one,
                str(notebook),
                str(out_dir / "runs" / f"{i:03d}"),
                {**(parameters or {}), **point},
                quick,
            )
            for i, point in enumerate(runs)
        ]
        outcomes = [future.result() for future in futures]
    rows = []
    for i, (point, outcome) in enumerate(zip(runs, outcomes)):
        status, error = outcome.pop("status"), outcome.pop("error", "")
        scalars = {k: v for k, v in outcome.items() if not isinstance(v, (list, dict))}
        rows.append({"run": i, "status": status, **point, **scalars, "error": error})
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """One line per row; columns in order of first appearance; lists as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            )
    return path


def plot(rows: list[dict], x: str, y: str) -> Figure:
    """Result `y` against parameter `x`: every successful run, and the mean per x."""
    from robustkit import plotting

    done = [r for r in rows if r.get("status") == "ok" and r.get(y) is not None]
    if not done:
        raise ValueError(f"no successful run recorded {y!r}")
    if any(x not in r for r in done):
        raise ValueError(f"{x!r} is not a grid parameter")
    groups = defaultdict(list)
    for r in done:
        groups[r[x]].append(float(r[y]))
    xs = sorted(groups)
    fig = plotting.new_figure((5, 3))
    ax = fig.subplots()
    ax.plot([r[x] for r in done], [r[y] for r in done], "o", alpha=0.4, label="run")
    ax.plot(xs, [sum(groups[v]) / len(groups[v]) for v in xs], "-", label="mean")
    ax.set(xlabel=x, ylabel=y, title=f"{y} vs {x} ({len(done)} runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument(
        "--grid", action="append", required=True, help="NAME=[v1,v2,...] (repeat)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--quick", action="store_true", help="runner.QUICK as base")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    parser.add_argument(
        "--plot-x", help="parameter on the x axis (default: the first but SEED)"
    )
    parser.add_argument("--plot-y", help="result to plot (default: no plot)")
    args = parser.parse_args(argv)
    grid = parse_grid(args.grid)
    rows = sweep(
        args.notebook, grid, out_dir=args.out, jobs=args.jobs, quick=args.quick
    )
    stem = args.notebook.stem
    print(f"wrote {write_csv(rows, args.out / f'{stem}.csv')}")
    if args.plot_y:
        x = args.plot_x or next((k for k in grid if k != "SEED"), next(iter(grid)))
        path = args.out / f"{stem}_{args.plot_y}_vs_{x}.png"
        plot(rows, x, args.plot_y).savefig(path, dpi=120)
        print(f"wrote {path}")
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"run {r['run']} failed: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
