"""Execute the notebooks with papermill, each with its results JSON beside it.

    python -m robustkit.course.runner  # every notebook, teaching defaults
    python -m robustkit.course.runner --quick  # small parameters (minutes in all)
    python -m robustkit.course.runner --quick --dataset fashion_mnist
    python -m robustkit.course.runner --set gpu  # full size on one GPU (CIFAR-10)
    python -m robustkit.course.runner notebooks/00_setup_and_tour.ipynb -p EPOCHS 2

Parameter sets are papermill parameter files next to each notebook,
`notebooks/NN_topic.<set>.yaml` (`quick`, `gpu`); papermill's own
`papermill NN_topic.ipynb out.ipynb -f notebooks/NN_topic.quick.yaml` reads them
too. Executed notebooks go to `outputs/NN_topic.ipynb`, results to
`outputs/NN_topic.json`.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import yaml

import robustkit.course.parameters
from robustkit.utils import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"
OUTPUT_DIR = ROOT / "outputs"


def notebooks() -> list[Path]:
    """The numbered notebooks, in teaching order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def parameter_file(notebook: str | Path, name: str) -> Path:
    """The papermill parameter file of set `name` ("quick", "gpu") of `notebook`."""
    notebook = Path(notebook)
    return notebook.with_name(f"{notebook.stem}.{name}.yaml")


def parameter_set(notebook: str | Path, name: str) -> dict:
    """The parameters of set `name` of `notebook`, read from its YAML file."""
    path = parameter_file(notebook, name)
    if not path.exists():
        found = sorted(p.name for p in Path(notebook).parent.glob(
            f"{Path(notebook).stem}.*.yaml"))  # fmt: skip
        raise ValueError(
            f"{Path(notebook).name} has no parameter set {name!r} ({path} is "
            f"missing): its sets are {found or 'none'}"
        )
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must map parameter names to values")
    return values


def execute(
    notebook: str | Path,
    out_dir: str | Path = OUTPUT_DIR,
    *,
    parameters: dict | None = None,
    quick: bool = False,
    sets: tuple[str, ...] = (),
    timeout: int | None = None,
) -> dict:
    """Run one notebook with papermill and return the results it recorded.

    Parameters are, in increasing priority: the notebook's defaults, its `quick`
    set (when `quick`), the other `sets` in order, `parameters`. RESULTS_PATH is
    always set to `out_dir/<stem>.json`.
    """
    import papermill as pm  # heavy import, only for the runner

    notebook = Path(notebook)
    chosen = {}
    for name in ("quick",) * quick + tuple(sets):
        chosen.update(parameter_set(notebook, name))
    parameters = {**chosen, **(parameters or {})}
    check_parameters(notebook, parameters)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / f"{notebook.stem}.json"
    results_path.unlink(missing_ok=True)
    params = {**parameters, "RESULTS_PATH": str(results_path.resolve())}
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
    or a value outside its range (`robustkit.course.parameters.SPECS`)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(
            f"{Path(notebook).name} has no parameter {', '.join(unknown)}: its "
            f"parameters are {', '.join(declared)}"
        )
    for name, value in parameters.items():
        robustkit.course.parameters.check_value(name, value)


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
    parser.add_argument("--quick", action="store_true", help="the quick set")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="sets",
        metavar="NAME",
        help="a parameter set: notebooks/NN_topic.NAME.yaml (e.g. gpu)",
    )
    parser.add_argument("--dataset", help="the DATASET parameter of every notebook")
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
    if args.dataset:
        parameters["DATASET"] = args.dataset
    for notebook in args.notebooks or notebooks():
        print(f"running {notebook.name} -> {args.out / notebook.name}", flush=True)
        results = execute(
            notebook,
            args.out,
            parameters=parameters,
            quick=args.quick,
            sets=tuple(args.sets),
        )
        print(json.dumps(results, indent=1, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
