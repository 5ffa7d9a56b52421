"""Student versions of the notebooks: solution cells become stubs.

    python -m robustkit.course.assignments  # notebooks/*.ipynb -> assignments/
    python -m robustkit.course.assignments --out handout notebooks/01_*.ipynb

A code cell tagged `solution` becomes a stub: the signature of each function it
defines (the `def` line(s), decorators included) with a body that raises
NotImplementedError(hint), or, without a function, a comment and that raise. The
hint is the text of the cell's `# hint: ...` line(s). A markdown cell tagged
`solution` becomes an answer prompt, with the text of its `hint: ...` lines.
Cells tagged `self-check` (calls of `robustkit.course.checks`) stay as they are, so the
learner can test what replaces the stub. Nothing else of a solution cell is
copied. Cells tagged `answer-key` (the printed answers to a notebook's closing
questions) are left out. Outputs, execution counts and papermill metadata are
stripped.
"""

from __future__ import annotations

import argparse
import ast
import copy
import io
import json
import re
import sys
import textwrap
import tokenize
from collections.abc import Iterable
from pathlib import Path

import nbformat

from robustkit.course.runner import NOTEBOOK_DIR, notebooks
from robustkit.utils import ROOT

SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"  # what a solution cell's tag becomes in the student version
SELF_CHECK_TAG = "self-check"
ANSWER_KEY_TAG = "answer-key"  # the answers to the closing questions: instructors only
DROPPED_TAGS = {"injected-parameters", ANSWER_KEY_TAG}
GENERIC_HINT = "replace this line with your code, then run the self-check below"
HEADER = "# Exercise: write the body, then run the self-check cell below."
HINT_LINE = re.compile(r"^\s*#\s*hint:\s*(.*?)\s*$", re.IGNORECASE)
MARKDOWN_HINT_LINE = re.compile(r"^\s*hint:\s*(.*?)\s*$", re.IGNORECASE)


def hint(source: str, pattern: re.Pattern = HINT_LINE) -> str:
    """The text of the `# hint: ...` lines of a cell, or GENERIC_HINT."""
    found = [m.group(1) for m in map(pattern.match, source.splitlines()) if m]
    return " ".join(text for text in found if text) or GENERIC_HINT


def stub(source: str) -> str:
    """The student's version of a solution code cell: signatures that raise.

    Each top-level function keeps its decorators and signature; its body becomes
    `raise NotImplementedError(hint)`. A cell without functions becomes a comment
    and that raise, so running it stops there with the hint.
    """
    text = hint(source)
    try:
        tree = ast.parse(source)
    except SyntaxError:  # e.g. a cell with magics: keep nothing of it
        tree = ast.Module(body=[], type_ignores=[])
    lines = source.splitlines()
    parts = [HEADER]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = _raise(text, " " * (node.col_offset + 4))
            parts.append("\n".join([*_signature(lines, node), body]))
    if len(parts) == 1:
        return f"{HEADER}\n{_raise(text, '')}\n"
    return "\n\n\n".join(parts) + "\n"


def _raise(text: str, indent: str, width: int = 88) -> str:
    """`raise NotImplementedError(text)`, the string split over lines to fit."""
    line = f"{indent}raise NotImplementedError({json.dumps(text, ensure_ascii=False)})"
    if len(line) <= width:
        return line
    chunks = textwrap.wrap(text, width - len(indent) - 7, break_on_hyphens=False)
    literals = [json.dumps(c + " ", ensure_ascii=False) for c in chunks[:-1]]
    literals.append(json.dumps(chunks[-1], ensure_ascii=False))
    inner = "".join(f"{indent}    {literal}\n" for literal in literals)
    return f"{indent}raise NotImplementedError(\n{inner}{indent})"


def _signature(lines: list[str], node: ast.FunctionDef) -> list[str]:
    """The decorator and `def` lines of `node`, up to the colon that ends them."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    text = "\n".join(lines[node.lineno - 1 :]) + "\n"
    depth = 0
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type != tokenize.OP:
            continue
        if token.string in "([{":
            depth += 1
        elif token.string in ")]}":
            depth -= 1
        elif token.string == ":" and depth == 0:
            row, col = token.end  # row counts from the `def` line, 1-based
            last = node.lineno + row - 2  # index of the colon's line in `lines`
            return lines[first - 1 : last] + [lines[last][:col]]
    raise ValueError(f"no end of signature found for function {node.name!r}")


def _markdown_prompt(source: str) -> str:
    """An answer prompt, with the text of the cell's `hint: ...` lines if any."""
    text = hint(source, MARKDOWN_HINT_LINE)
    suffix = "" if text == GENERIC_HINT else f"\n\n*Hint: {text}*"
    return f"**Your answer:** *(write it here)*{suffix}"


def student_version(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `nb` with solution cells stubbed and every output stripped."""
    nb = copy.deepcopy(nb)
    nb.cells = [
        c for c in nb.cells if not DROPPED_TAGS & set(c.metadata.get("tags", []))
    ]
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if SOLUTION_TAG in tags:
            is_code = cell.cell_type == "code"
            cell.source = (
                stub(cell.source) if is_code else _markdown_prompt(cell.source)
            )
            cell.metadata["tags"] = [
                EXERCISE_TAG if tag == SOLUTION_TAG else tag for tag in tags
            ]
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    return nb


def write_assignments(paths: Iterable[str | Path], out_dir: str | Path) -> list[Path]:
    """Write the student version of each notebook into `out_dir`; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in map(Path, paths):
        nb = student_version(nbformat.read(path, as_version=4))
        nbformat.validate(nb)
        nbformat.write(nb, out_dir / path.name)
        written.append(out_dir / path.name)
    return written


def exercises(nb: nbformat.NotebookNode) -> int:
    """How many cells of `nb` are tagged as solutions (or, once stubbed, exercises)."""
    tags = (set(c.metadata.get("tags", [])) for c in nb.cells)
    return sum(bool(t & {SOLUTION_TAG, EXERCISE_TAG}) for t in tags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help=f"default: all in {NOTEBOOK_DIR}"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "assignments", help="output folder"
    )
    args = parser.parse_args(argv)
    for path in write_assignments(args.notebooks or notebooks(), args.out):
        count = exercises(nbformat.read(path, as_version=4))
        print(f"wrote {path} ({count} exercise{'s' * (count != 1)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
