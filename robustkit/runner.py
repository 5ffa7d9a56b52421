"""Execute the notebooks with papermill, each with its results JSON beside it.

    python -m robustkit.runner                     # every notebook, teaching defaults
    python -m robustkit.runner --quick             # small parameters (minutes in all)
    python -m robustkit.runner notebooks/00_setup_and_tour.ipynb -p EPOCHS 2

Executed notebooks go to `outputs/NN_topic.ipynb`, results to `outputs/NN_topic.json`.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import robustkit.parameters
from robustkit.utils import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"
OUTPUT_DIR = ROOT / "outputs"

# Small parameters per notebook: `make run QUICK=1` and the notebook tests use them.
QUICK = {
    "00_setup_and_tour.ipynb": dict(N_TRAIN=5_000, N_TEST=1_000, EPOCHS=5),
    "01_adversarial_examples.ipynb": dict(
        N_TRAIN=5_000, EPOCHS=5, N_TEST=200, STEPS=10, EPS_VALUES=[0.0, 0.05, 0.1, 0.2],
        PATCH_STEPS=100,
    ),
    "02_evaluating_robustness.ipynb": dict(
        N_TRAIN=5_000, EPOCHS=5, N_TEST=100, STEPS_LIST=[1, 5, 20], RESTARTS=2,
        APGD_STEPS=20, CW_STEPS=50, CW_SEARCH=4, SQUARE_QUERIES=200, N_SANITY=100,
    ),
    "03_adversarial_training.ipynb": dict(
        N_TRAIN=3_000, N_VAL=300, EPOCHS=3, FGSM_EPOCHS=3, EPS=0.15, PGD_STEPS=3,
        PGD_ALPHA=0.125,
        N_TEST=200, EVAL_STEPS=20, N_TARGETS=1, SQUARE_QUERIES=100,
        EPS_VALUES=[0.0, 0.15, 0.3], CURVE_STEPS=5, CO_N_TRAIN=2_000, CO_EPOCHS=2,
        BETAS=[0.1, 6.0], SWEEP_N_TRAIN=1_000, SWEEP_EPOCHS=2, SWEEP_STEPS=2,
        TIMING_N=500,
    ),
    "04_defensive_distillation.ipynb": dict(
        N_TRAIN=5_000, EPOCHS=5, BASELINE_EPOCHS=5, TEMPERATURES=[1.0, 100.0],
        N_TEST=200, STEPS=10,
        EPS_VALUES=[0.0, 0.15, 0.3], CW_STEPS=50, CW_SEARCH=3, N_SANITY=100,
    ),
    "05_input_transformations.ipynb": dict(
        N_TRAIN=5_000, EPOCHS=5, N_TEST=100, STEPS=10, EOT_SAMPLES=3,
        EPS_VALUES=[0.2, 0.4], BITS_LIST=[1, 2], N_SANITY=50,
    ),
}  # fmt: skip


def notebooks() -> list[Path]:
    """The numbered notebooks, in teaching order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def execute(
    notebook: str | Path,
    out_dir: str | Path = OUTPUT_DIR,
    *,
    parameters: dict | None = None,
    quick: bool = False,
    timeout: int | None = None,
) -> dict:
    """Run one notebook with papermill and return the results it recorded.

    Parameters are, in increasing priority: the notebook's defaults, QUICK (when
    `quick`), `parameters`. RESULTS_PATH is always set to `out_dir/<stem>.json`.
    """
    import papermill as pm  # heavy import, only for the runner

    notebook = Path(notebook)
    if quick and notebook.name not in QUICK:
        raise ValueError(f"{notebook.name} has no entry in runner.QUICK")
    check_parameters(notebook, parameters or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / f"{notebook.stem}.json"
    results_path.unlink(missing_ok=True)
    params = {
        **(QUICK[notebook.name] if quick else {}),
        **(parameters or {}),
        "RESULTS_PATH": str(results_path.resolve()),
    }
    pm.execute_notebook(
        str(notebook),
        str(out_dir / notebook.name),
        parameters=params,
        kernel_name="python3",
        cwd=str(notebook.parent),
        progress_bar=False,
        execution_timeout=timeout,
    )
    if not results_path.exists():
        raise RuntimeError(
            f"{notebook.name} ran but wrote no results to {results_path}"
        )
    return json.loads(results_path.read_text())


def check_parameters(notebook: str | Path, parameters: dict) -> None:
    """Refuse, before any kernel starts, a parameter `notebook` does not declare
    (papermill only logs "Passed unknown parameter" and runs on with the default)
    or a value outside its range (`robustkit.parameters.SPECS`)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(
            f"{Path(notebook).name} has no parameter {', '.join(unknown)}: its "
            f"parameters are {', '.join(declared)}"
        )
    for name, value in parameters.items():
        robustkit.parameters.check_value(name, value)


def _literal(text: str):
    """A -p value as the Python literal the parameters cells use (`1_000`, `0.1`,
    `[0.0, 0.1]`, `True`, `"cpu"`) when it is one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="default: all, in order"
    )
    parser.add_argument("--quick", action="store_true", help="small parameters")
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR, help="output folder")
    parser.add_argument(
        "-p",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="override a parameter",
    )
    args = parser.parse_args(argv)
    parameters = {name: _literal(value) for name, value in args.p}
    for notebook in args.notebooks or notebooks():
        print(f"running {notebook.name} -> {args.out / notebook.name}", flush=True)
        results = execute(notebook, args.out, parameters=parameters, quick=args.quick)
        print(json.dumps(results, indent=1, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
