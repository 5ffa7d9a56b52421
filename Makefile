# robustkit: every target sets up .venv first (offline once the packages are cached).
# make run [QUICK=1] [DATASET=fashion_mnist] [SET=gpu] | make test | make lab | make bench

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QUICK_FLAG := $(if $(filter 1 yes true,$(QUICK)),--quick,)
# DATASET=mnist|fashion_mnist|cifar10 for every notebook; SET=gpu: notebooks/*.gpu.yaml
RUN_FLAGS := $(QUICK_FLAG) $(if $(DATASET),--dataset $(DATASET),) $(if $(SET),--set $(SET),)
JOBS ?= 2

SPEED_BENCH := bench/attacks.py bench/train_throughput.py bench/training.py bench/certify.py \
	bench/scaling.py

.PHONY: setup lab run test test-all bench bench-notebooks bars mutation zoo assignments html sweep clean

# Also nbstripout's git filter (in .git/config and .git/info/attributes): a notebook
# opened and saved in `make lab` keeps its outputs on disk, but git sees it clean.
# --keep-id: the committed notebooks' cell ids stay, so an unchanged notebook stays clean.
# And robustkit's JupyterLab settings (robustkit/course/lab_overrides.json: widget
# state saved with a notebook, so that reopened it shows its widgets, not errors).
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d
setup: $(STAMP)
	@mkdir -p $(LAB_SETTINGS) && cp robustkit/course/lab_overrides.json $(LAB_SETTINGS)/robustkit.json
	@if [ -d .git ]; then \
		$(VENV)/bin/nbstripout --is-installed || $(VENV)/bin/nbstripout --install; \
		git config filter.nbstripout.clean '"$(abspath $(PY))" -m nbstripout --keep-id'; fi

# Rebuilt only when the declared dependencies change. torchattacks pins an old
# `requests` that breaks jupyterlab-server, so it goes in alone with --no-deps.
$(STAMP): pyproject.toml requirements-nodeps.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# The repository's root, so notebooks/, assignments/ and outputs/ are all in reach;
# --allow-root where JupyterLab would refuse to start (as root, e.g. in a container)
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. \
		$(if $(filter 0,$(shell id -u)),--allow-root,)

run: setup
	$(PY) -m robustkit.course.runner $(RUN_FLAGS) --out outputs

# One pytest-xdist worker per core, at most 8 (each holds a torch process and a notebook
# kernel: 1.4 GB resident, measured); TEST_JOBS=0: one process. Each worker gets its share of the
# threads (tests/conftest.py); notebook runs first, short tests fill the tail.
TEST_JOBS ?= logical
test: setup
	$(PY) -m pytest -n $(TEST_JOBS) --maxprocesses 8 --dist worksteal --durations=25

test-all: setup  # also the teaching-size runs (marker `slow`)
	$(PY) -m pytest -m "slow or not slow"

bench: setup  # the speed benchmarks (ratios against a reference run alongside)
	@for script in $(SPEED_BENCH); do echo "== $$script"; $(PY) $$script || exit 1; done

bench-notebooks: setup  # each notebook at teaching defaults, vs a forward pass (~20 min)
	$(PY) bench/notebooks.py

bars: setup  # every notebook bar's margin over seeds 0-3 and 1 and 2 threads (~1 h)
	$(PY) bench/bar_margins.py --jobs $(JOBS) \
		$(if $(DATASET),--dataset $(DATASET) --out outputs/bar_margins-$(DATASET),)

# make mutation [MUTATE="--files robustkit/evaluation.py"] [MUTATION_TESTS="tests/..."]
MUTATE ?= --files robustkit/training.py --functions fit run_epoch _ramped
MUTATION_TESTS ?= tests/test_training.py tests/test_exact.py -m "not slow"
mutation: setup  # which small code changes the tests miss (default: the training guards)
	$(PY) bench/mutation.py $(MUTATE) -- $(MUTATION_TESTS) -x -q -p no:cacheprovider

# make zoo [DATASET=...] [LAUNCH="$(VENV)/bin/torchrun --nproc_per_node=4"]: each model
# trained by `python -m robustkit.train` (under LAUNCH), then evaluated and shipped
zoo: setup  # full-size robust models into data/zoo/ (hours on a CPU, minutes on a GPU)
	$(PY) -m robustkit.zoo $(if $(DATASET),--dataset $(DATASET),) \
		$(if $(LAUNCH),--launch "$(LAUNCH)",)

assignments: setup  # student notebooks (solution cells stubbed) into assignments/
	$(PY) -m robustkit.course.assignments --out assignments

html: run  # execute the notebooks (QUICK=1 for small parameters), then a static site
	$(PY) -m robustkit.course.html --src outputs --out outputs/html

# make sweep NB=notebooks/01_adversarial_examples.ipynb QUICK=1 Y=pgd_accuracy \
#     GRID="--grid 'SEED=[0,1]' --grid 'EPS=[0.05,0.1,0.2]'"
sweep: setup
	$(PY) -m robustkit.course.sweep $(NB) $(GRID) $(QUICK_FLAG) --jobs $(JOBS) \
		--out outputs/sweep $(if $(Y),--plot-y $(Y),)

clean:
	rm -rf outputs assignments .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
