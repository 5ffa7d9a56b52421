"""Student versions: solution cells become stubs that raise with their hint."""

from __future__ import annotations

import ast
import json

import nbformat
import pytest

from robustkit.course import assignments, runner

SOLUTION = """\
def my_project(delta, eps):
    # hint: clamp each coordinate of delta into [-eps, eps]
    limited = delta.clamp(-eps, eps)  # the secret
    return limited.clone()
"""
CELL_SOLUTION = """\
# hint: six times seven
answer = 6 * 7
"""


def code(source, *tags):
    return nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)})


def synthetic_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python"
    }  # fmt: skip
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A tiny exercise"),
        code("from robustkit.course import checks"),
        code(SOLUTION, "solution"),
        code('assert checks.check_projection(my_project, "linf")', "self-check"),
        code(CELL_SOLUTION, "solution"),
        code("print(answer)"),
    ]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="old output\n")]
    nb.cells[1].execution_count = 7
    return nb


def solution_lines(*sources):
    """The lines a student version must not contain: all but signatures and hints."""
    return [
        line.strip()
        for source in sources
        for line in source.splitlines()
        if line.strip()
        and not line.lstrip().startswith("def ")
        and not assignments.HINT_LINE.match(line)
    ]


def test_student_version_has_stubs_and_no_solution_code():
    nb = synthetic_notebook()
    student = assignments.student_version(nb)
    text = json.dumps(student)
    for line in solution_lines(SOLUTION, CELL_SOLUTION):
        assert line not in text, f"solution line leaked: {line!r}"
    stub = student.cells[2]
    assert stub.metadata["tags"] == ["exercise"]
    assert "def my_project(delta, eps):" in stub.source
    namespace = {}
    exec(stub.source, namespace)
    with pytest.raises(NotImplementedError, match=r"clamp each coordinate of delta"):
        namespace["my_project"](None, None)
    with pytest.raises(NotImplementedError, match="six times seven"):
        exec(student.cells[4].source, {})
    assert student.cells[3] == nb.cells[3]  # the self-check stays
    assert all(
        not c.outputs and c.execution_count is None
        for c in student.cells
        if c.cell_type == "code"
    )
    assert nb.cells[2].source == SOLUTION  # the original is left alone
    nbformat.validate(student)


def test_solution_notebook_passes_its_self_check(capsys):
    namespace = {}
    for cell in synthetic_notebook().cells[1:]:
        exec(cell.source, namespace)
    assert "PASS  check_projection[linf]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "source, kept",
    [
        (
            "@decorate(a=1)\ndef f(\n    x: dict[str, int] = {'a': 1},\n"
            "    g=lambda v: v,\n) -> tuple[int, int]:\n    return x\n",
            "@decorate(a=1)\ndef f(\n    x: dict[str, int] = {'a': 1},\n"
            "    g=lambda v: v,\n) -> tuple[int, int]:",
        ),
        ("def f(x): return x + 1\n", "def f(x):"),
        ("async def f(x):\n    '''Doc.'''\n    return x\n", "async def f(x):"),
    ],
)
def test_stub_keeps_exact_signatures(source, kept):
    stub = assignments.stub(source)
    assert kept in stub
    assert "return" not in stub and "Doc." not in stub
    ast.parse(stub)


def test_stub_of_several_functions_and_of_magics():
    stub = assignments.stub(
        "import torch\n\n\ndef f(x):\n    def inner():\n        pass\n    return 1\n"
        "\n\ndef g(y):\n    return 2\n"
    )
    assert "def f(x):" in stub and "def g(y):" in stub
    assert "inner" not in stub and "import" not in stub
    assert stub.count("raise NotImplementedError") == 2
    magic = assignments.stub("%timeit secret()\n")
    assert "secret" not in magic and "NotImplementedError" in magic


def test_markdown_solution_becomes_a_prompt():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_markdown_cell(
        "hint: think of the L1 norm\nThe answer is eps * ||w||_1.",
        metadata={"tags": ["solution"]},
    )
    nb.cells = [cell]
    student = assignments.student_version(nb)
    assert "||w||_1" not in student.cells[0].source
    assert "Your answer" in student.cells[0].source


def test_answer_keys_are_left_out_of_the_student_version():
    nb = synthetic_notebook()
    nb.cells += [nbformat.v4.new_markdown_cell("## Questions\n\n1. Why?"),
                 code("print('1. because the secret')", "answer-key")]  # fmt: skip
    student = assignments.student_version(nb)
    assert "## Questions" in student.cells[-1].source
    assert not any("because the secret" in c.source for c in student.cells)


@pytest.mark.parametrize("path", runner.notebooks(), ids=lambda p: p.name)
def test_real_notebooks_end_with_questions_and_their_answer_key(path):
    """fastbook's questionnaire: questions before the exercises, answered by a cell
    that prints what this run supports (from the notebook's variables)."""
    cells = nbformat.read(path, as_version=4).cells
    (q,) = [i for i, c in enumerate(cells) if c.source.startswith("## Questions")]
    assert cells[q].cell_type == "markdown" and "1. " in cells[q].source
    key = cells[q + 1]
    assert key.cell_type == "code" and key.metadata.get("tags") == ["answer-key"]
    assert "print(" in key.source and len(key.source.splitlines()) <= 15
    headings = [
        c.source.split("\n")[0] for c in cells[q + 2 :] if c.cell_type == "markdown"
    ]
    assert not [h for h in headings if h in ("## Results", "## Questions")]


@pytest.mark.notebook
def test_student_notebook_stops_at_the_first_stub_with_its_hint(tmp_path):
    import papermill as pm

    source = tmp_path / "src" / "05_tiny.ipynb"
    source.parent.mkdir()
    nbformat.write(synthetic_notebook(), source)
    out = tmp_path / "assignments"
    assert assignments.main(["--out", str(out), str(source)]) == 0
    student = out / "05_tiny.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as raised:
        pm.execute_notebook(
            str(student),
            str(tmp_path / "executed.ipynb"),
            kernel_name="python3",
            progress_bar=False,
        )
    # the self-check prints the stub's hint, then its assert stops the run there
    assert raised.value.ename == "AssertionError"
    assert raised.value.exec_count == 3  # imports, the stub, then its self-check
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    shown = "".join(
        o.get("text", "") for c in executed.cells if c.cell_type == "code"
        for o in c.outputs
    )  # fmt: skip
    assert (
        "TODO" in shown and "clamp each coordinate of delta into [-eps, eps]" in shown
    )


def test_long_hints_are_wrapped_and_kept_whole():
    text = "take the gradient of the loss with respect to x, " * 4
    stub = assignments.stub(f"def f(x):\n    # hint: {text}\n    return x\n")
    assert max(len(line) for line in stub.splitlines()) <= 88
    namespace = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError) as raised:
        namespace["f"](1)
    assert str(raised.value) == text.strip()


@pytest.mark.parametrize("path", runner.notebooks(), ids=lambda p: p.name)
def test_real_notebooks_pair_each_solution_with_a_self_check(path):
    nb = nbformat.read(path, as_version=4)
    student = assignments.student_version(nb)
    dropped = assignments.DROPPED_TAGS
    kept = [c for c in nb.cells if not dropped & set(c.metadata.get("tags", []))]
    assert len(kept) == len(student.cells)
    code_cells = [
        (cell, stubbed)
        for cell, stubbed in zip(kept, student.cells)
        if cell.cell_type == "code"
    ]
    for k, (cell, stubbed) in enumerate(code_cells):
        tags = cell.metadata.get("tags", [])
        if "self-check" in tags:
            assert "checks.check_" in cell.source, "a self-check calls course.checks"
        if "solution" not in tags:
            continue
        for line in solution_lines(cell.source):
            assert line not in stubbed.source, f"solution line leaked: {line!r}"
        following = code_cells[k + 1][0] if k + 1 < len(code_cells) else None
        assert following is not None and "self-check" in following.metadata.get(
            "tags", []
        ), "each solution cell is followed by a cell tagged self-check"
