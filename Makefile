# robustkit: every target sets up .venv first (offline once the packages are cached).
# make run [QUICK=1] | make test | make lab | make bench | make clean

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QUICK_FLAG := $(if $(filter 1 yes true,$(QUICK)),--quick,)

.PHONY: setup lab run test test-all bench zoo clean

setup: $(STAMP)

# Rebuilt only when the declared dependencies change. torchattacks pins an old
# `requests` that breaks jupyterlab-server, so it goes in alone with --no-deps.
$(STAMP): pyproject.toml requirements-nodeps.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

lab: setup
	$(VENV)/bin/jupyter lab notebooks

run: setup
	$(PY) -m robustkit.runner $(QUICK_FLAG) --out outputs

test: setup
	$(PY) -m pytest

test-all: setup  # also the teaching-size runs (marker `slow`)
	$(PY) -m pytest -m "slow or not slow"

bench: setup
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

zoo: setup  # full-size robust models into data/zoo/ (hours on a CPU, minutes on a GPU)
	$(PY) -m robustkit.zoo

clean:
	rm -rf outputs .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
