"""Mutation testing with the `ast` module: which small code changes do the tests miss?

Each mutant changes one thing in a target file: `<` <-> `<=`, `>` <-> `>=`, `==` <->
`!=`, `is` <-> `is not`, `in` <-> `not in`, `+` <-> `-`, `*` <-> `/`, `&` <-> `|`,
`and` <-> `or`; drops a `not`, `~` or unary minus; int c -> c + 1 and 0, float c ->
2c (0.0 -> 1.0), True <-> False; min <-> max, amax <-> amin, argmax <-> argmin,
clamp_min <-> clamp_max; `return x` -> `return None`. Annotations, f-strings (the
docstrings and messages are strings, never mutated), `raise` statements and the
progress-bar keywords (progress, leave, desc, disable) are left alone.

Each mutant is written, as `ast.unparse` of the mutated tree, into a fresh copy of the
tree (robustkit/, tests/, pyproject.toml; data/ linked); pytest runs there with the
copy first on PYTHONPATH (a probe test prints which robustkit it imported, once), and
the mutant is killed (tests fail), survived (they pass) or timed out. The unmutated
files go through `ast.unparse` too, and must pass first.

    python bench/mutation.py --files robustkit/attacks/core.py --list
    python bench/mutation.py --root /tmp/snapshot --files robustkit/training.py \
        --functions fit run_epoch --timeout 60 --json /tmp/mut.json \
        -- tests/test_training.py -x -q -p no:cacheprovider

`--root` mutates a snapshot of the repository instead of this checkout, `--only ID..`
runs chosen mutants (e.g. the survivors of a previous pass), `--sample N` keeps N of
them drawn with seed 0, and `--equivalent ID..` leaves those judged equivalent out
of the score. Not a benchmark: nothing here is timed against a target.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPS = {"Lt": "LtE", "Gt": "GtE", "Eq": "NotEq", "Is": "IsNot", "In": "NotIn"}
OPS |= {"Add": "Sub", "Mult": "Div", "BitAnd": "BitOr", "And": "Or"}
NAMES = {"min": "max", "amax": "amin", "argmax": "argmin", "clamp_min": "clamp_max"}
OPS, NAMES = ({**d, **{v: k for k, v in d.items()}} for d in (OPS, NAMES))
QUIET = {"progress", "leave", "desc", "disable"}  # progress bars only: equivalent
PROBE = (
    "import robustkit\n\n\ndef test_which():\n    print('from', robustkit.__file__)\n"
)
STATUSES = ("killed", "survived", "timeout", "equivalent")


def skipped(tree: ast.AST) -> set[int]:
    """ids of the nodes never mutated: annotations, f-strings, raises, UI keywords."""
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation:
            roots.append(node.annotation)
        if isinstance(node, ast.FunctionDef):
            args, defaults = node.args.posonlyargs + node.args.args, node.args.defaults
            pairs = [*zip(args[len(args) - len(defaults) :], defaults)]
            pairs += zip(node.args.kwonlyargs, node.args.kw_defaults)
            roots += [d for a, d in pairs if d and a.arg in QUIET] + [node.returns]
        if isinstance(node, ast.keyword) and node.arg in QUIET:
            roots.append(node.value)
        if isinstance(node, ast.Raise | ast.JoinedStr):
            roots.append(node)
    return {id(n) for root in roots if root for n in ast.walk(root)}


def mutations(node: ast.AST) -> list[tuple[str, str, object]]:
    """(original, mutant, apply) for one node; apply() edits the node in place and
    returns the node to put in its place (itself, or the operand of a dropped op)."""
    out, op = [], getattr(node, "op", None)
    name = type(op).__name__

    def set_attr(field, value, result=node):
        return lambda: setattr(node, field, value) or result

    if isinstance(node, ast.BinOp | ast.AugAssign | ast.BoolOp) and name in OPS:
        out.append((name, OPS[name], set_attr("op", getattr(ast, OPS[name])())))
    for i, cmp in enumerate(getattr(node, "ops", [])):
        swap = OPS.get(type(cmp).__name__)
        ops = [*node.ops[:i], getattr(ast, swap or "Eq")(), *node.ops[i + 1 :]]
        out += [(type(cmp).__name__, swap, set_attr("ops", ops))] if swap else []
    if isinstance(node, ast.UnaryOp) and name in ("Not", "USub", "Invert"):
        out.append((f"{name} x", "x", lambda: node.operand))
    value = getattr(node, "value", None) if isinstance(node, ast.Constant) else None
    if type(value) in (bool, int, float):
        new = [not value] if type(value) is bool else [value + 1, 0]
        new = [2 * value or 1.0] if type(value) is float else new
        out += [(repr(value), repr(v), set_attr("value", v)) for v in new if v != value]
    for field in ("id", "attr"):
        if getattr(node, field, None) in NAMES:
            old = getattr(node, field)
            out.append((old, NAMES[old], set_attr(field, NAMES[old])))
    if isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            out.append(("return ...", "return None", set_attr("value", None)))
    return out


def owners(tree: ast.AST) -> dict[int, str]:
    """id(node) -> dotted name of the functions and classes around it."""
    found = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = name
            if isinstance(child, ast.FunctionDef | ast.ClassDef):
                inner = f"{name}.{child.name}".lstrip(".")
            found[id(child)] = inner
            visit(child, inner)

    visit(tree, "")
    return found


def generate(root: Path, files: list[str], functions: list[str]) -> list[dict]:
    """Every mutant of `files` (inside `functions`, if given), in source order."""
    mutants = []
    for file in files:
        tree = ast.parse((root / file).read_text())
        skip, where = skipped(tree), owners(tree)
        for index, node in enumerate(ast.walk(tree)):
            function = where.get(id(node), "") or "<module>"
            inside = not functions or set(function.split(".")) & set(functions)
            if id(node) in skip or not inside:
                continue
            for k, (original, mutant, _) in enumerate(mutations(node)):
                mutants.append(dict(file=file, line=node.lineno, col=node.col_offset))
                mutants[-1].update(node=index, k=k, original=original, mutant=mutant)
                mutants[-1]["function"] = function
    mutants.sort(key=lambda m: (files.index(m["file"]), m["line"], m["col"], m["k"]))
    return [dict(m, id=i) for i, m in enumerate(mutants)]


def source(root: Path, file: str, mutant: dict | None) -> str:
    """The file as `ast.unparse` writes it, with `mutant` applied if given."""
    tree = ast.parse((root / file).read_text())
    if mutant is not None:
        nodes = list(ast.walk(tree))
        node = nodes[mutant["node"]]
        new = mutations(node)[mutant["k"]][2]()
        for parent in nodes:  # put the operand of a dropped operator in its place
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, new)
                elif isinstance(value, list) and any(v is node for v in value):
                    value[[v is node for v in value].index(True)] = new
    return ast.unparse(ast.fix_missing_locations(tree))


def run(args: argparse.Namespace, mutant: dict | None, timeout: float) -> tuple:
    """Run pytest on a fresh copy of the tree holding `mutant` (None: the original)."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        tmp, root = Path(tmp), args.root
        for part in ("robustkit", "tests"):
            ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache")
            shutil.copytree(root / part, tmp / part, ignore=ignore)
        shutil.copy(root / "pyproject.toml", tmp)
        if (root / "data").exists():
            (tmp / "data").symlink_to((root / "data").resolve())
        for file in [mutant["file"]] if mutant else args.files:
            (tmp / file).write_text(source(root, file, mutant))
        env = dict(os.environ, PYTHONPATH=str(tmp), PYTHONDONTWRITEBYTECODE="1")
        pytest = dict(cwd=tmp, env=env, capture_output=True, text=True)
        if mutant is None:  # the copy, not the editable install, must be imported
            (tmp / "tests" / "test_zz_probe.py").write_text(PROBE)
            probe = [sys.executable, "-m", "pytest", "-sq", "tests/test_zz_probe.py"]
            out = subprocess.run([*probe, "-p", "no:cacheprovider"], **pytest).stdout
            line = next((s for s in out.splitlines() if "from" in s), "probe failed")
            print(line, "(the copy)" if str(tmp) in line else "(NOT THE COPY)")
            (tmp / "tests" / "test_zz_probe.py").unlink()
        start = time.perf_counter()
        command = [sys.executable, "-m", "pytest", *args.pytest_args]
        try:
            code = subprocess.run(command, timeout=timeout, **pytest).returncode
            status = "survived" if code == 0 else "killed"
        except subprocess.TimeoutExpired:
            status = "timeout"
        return status, round(time.perf_counter() - start, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--files", nargs="+", required=True)
    p.add_argument("--functions", nargs="*", default=[])
    p.add_argument("--only", nargs="*", type=int, help="mutant ids to run")
    p.add_argument("--sample", type=int, help="keep this many, drawn with seed 0")
    p.add_argument("--equivalent", nargs="*", type=int, default=[], help="judged ids")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    p.add_argument("--list", action="store_true", help="list the mutants, run none")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("pytest_args", nargs="*", help="after --: the pytest arguments")
    args = p.parse_args()
    mutants = generate(args.root, args.files, args.functions)
    per_file = {f: sum(m["file"] == f for m in mutants) for f in args.files}
    print(f"{len(mutants)} mutants:", per_file)
    if args.only is not None:
        mutants = [m for m in mutants if m["id"] in args.only]
    if args.sample and args.sample < len(mutants):
        mutants = random.Random(0).sample(mutants, args.sample)
        mutants.sort(key=lambda m: m["id"])
    row = "{id:>4} {file}:{line}:{col:<3} {original} -> {mutant}  [{function}]"
    if args.list:
        print("\n".join(row.format(**m) for m in mutants))
        return
    status, seconds = run(args, None, 3 * args.timeout)
    print(f"unmutated code (unparsed): {status} in {seconds}s")
    if status != "survived":
        sys.exit("the tests must pass on the unmutated code first")
    start = time.perf_counter()
    for m in mutants:
        m["status"], m["seconds"] = run(args, m, args.timeout)
        if m["status"] != "killed" and m["id"] in args.equivalent:
            m["status"] = "equivalent"
        print(f"{m['status']:>10} {m['seconds']:5.1f}s", row.format(**m), flush=True)
        if args.json:  # after every mutant: an interrupted pass keeps its results
            args.json.write_text(json.dumps(mutants, indent=1))
    counts = {s: sum(m["status"] == s for m in mutants) for s in STATUSES}
    print("\nsurvivors (file:line:col, original -> mutant, enclosing function):")
    print("\n".join(row.format(**m) for m in mutants if m["status"] == "survived"))
    print(f"\n{counts} in {time.perf_counter() - start:.0f}s")
    scored = len(mutants) - counts["equivalent"]
    print(f"score killed / (total - equivalent) = {counts['killed']}/{scored}")


if __name__ == "__main__":
    main()
