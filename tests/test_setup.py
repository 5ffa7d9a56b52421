"""The set-up files agree with each other: pyproject, environment.yml, Makefile, CI."""

import re

import pytest
import yaml

from robustkit.utils import ROOT

tomllib = pytest.importorskip("tomllib")

CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def names(requirements):
    return {re.split(r"[<>=!~ \[;]", r)[0].strip().lower() for r in requirements}


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = names(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    conda_names = {CONDA_NAMES.get(n, n) for n in names(conda)} - {"python", "pip"}
    assert conda_names == pip_names


def test_no_deps_pins_are_installed_by_make_and_named_in_environment_yml():
    pins = (ROOT / "requirements-nodeps.txt").read_text().split()
    assert pins == ["torchattacks==3.5.1"]
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps -r requirements-nodeps.txt" in makefile
    assert (
        "pip install --no-deps -r requirements-nodeps.txt"
        in (ROOT / "environment.yml").read_text()
    )


def test_makefile_has_the_documented_targets():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, flags=re.M))
    assert {"setup", "lab", "run", "test", "bench", "clean"} <= targets
    # set-up is rebuilt only when the declared dependencies change
    assert re.search(r"^\$\(STAMP\): pyproject.toml", makefile, flags=re.M)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def test_mnist_and_fashion_mnist_ship_in_data():
    from robustkit import data, datasets

    for name in ("mnist", "fashion_mnist"):
        ds = datasets.get(name)
        for fname, digest in ds.files.items():
            assert data.sha256(ROOT / "data" / ds.shipped / fname) == digest


def test_the_core_library_never_imports_the_course_tooling():
    core = [
        p
        for p in (ROOT / "robustkit").rglob("*.py")
        if "course" not in p.relative_to(ROOT / "robustkit").parts
    ]
    assert core
    for path in core:
        assert "robustkit.course" not in path.read_text(), path
