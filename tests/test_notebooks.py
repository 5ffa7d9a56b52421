"""Every notebook runs under papermill with small parameters and records sane results.

A notebook in notebooks/ without an entry in runner.QUICK and CHECKS fails here.
"""

from __future__ import annotations

import ast

import nbformat
import pytest

from robustkit import runner

NOTEBOOKS = runner.notebooks()


def check_00(r):
    assert r["test_accuracy"] >= 0.95  # quick baseline: a few thousand images
    assert r["final_train_loss"] < r["first_train_loss"]
    assert r["n_train"] == 5_000 and r["n_test"] == 1_000


def non_increasing(values, slack=0.02):
    return all(b <= a + slack for a, b in zip(values, values[1:]))


def check_01(r):
    assert r["pgd_accuracy"] <= r["fgsm_accuracy"] + 0.02 < r["clean_accuracy"]
    assert r["pgd_l2_accuracy"] < r["clean_accuracy"]
    assert r["max_perturbation_linf"] <= r["eps"] + 1e-6
    assert r["max_perturbation_l2"] <= r["eps_l2"] + 1e-4
    assert r["pgd_curve"][0] == r["clean_accuracy"] and r["pgd_curve"][-1] < 0.2
    assert non_increasing(r["pgd_curve"]) and non_increasing(r["fgsm_curve"])
    assert all(p <= f + 0.02 for p, f in zip(r["pgd_curve"], r["fgsm_curve"]))
    assert 0 < r["targeted_success_rate"] < 1 - r["pgd_accuracy"]
    assert r["patch_success_rate"] > r["random_patch_success_rate"] + 0.05


def check_02(r):
    assert non_increasing(r["pgd_steps_curve"]) and non_increasing(
        r["pgd_restarts_curve"]
    )
    assert r["pgd_restarts_curve"][-1] <= r["pgd_steps_curve"][-1] + 0.02
    assert r["pgd_steps_curve"][-1] <= r["fgsm_accuracy"] < r["clean_accuracy"]
    assert (
        r["pgd_small_step_accuracy"] > r["pgd_tuned_accuracy"]
    )  # a bad step size shows
    assert r["apgd_ce_accuracy"] <= r["pgd_tuned_accuracy"] + 0.02
    assert r["worst_case_accuracy"] <= min(r["alone_accuracies"])
    assert r["square_accuracy"] >= r["worst_case_accuracy"]
    assert r["transfer_accuracy"] >= r["pgd20_accuracy"] - 0.02  # transfer is weaker
    assert r["cw_success_rate"] > 0.9 and r["cw_curve"][0] == r["clean_accuracy"]
    assert r["honest_checks_passed"] and not r["masked_checks_passed"]
    assert "input gradients finite and non-zero" in r["masked_checks_failed"]
    # the masked model looks robust to the naive attack and is not
    assert r["masked_naive_pgd_accuracy"] >= r["masked_margin_pgd_accuracy"] + 0.2
    assert (
        abs(r["masked_margin_pgd_accuracy"] - r["unmodified_margin_pgd_accuracy"])
        <= 0.02
    )


def check_03(r):
    for clean, robust in zip(r["clean_accuracy"], r["robust_accuracy"]):
        assert 0 <= robust <= clean <= 1
    # the quick-mode bar: adversarial training beats standard by 30 points
    for name in ("fgsm_rs", "pgd_at", "trades"):
        assert r[f"{name}_robust_accuracy"] >= r["standard_robust_accuracy"] + 0.30, (
            name
        )
    assert r["best_adversarial_clean_accuracy"] >= 0.9
    for curve in ("baseline_curve", "fgsm_rs_curve", "pgd_curve", "trades_curve"):
        assert non_increasing(r[curve]) and r[curve][-1] <= r[curve][1]
    assert 1 <= r["co_guarded_epochs"] <= len(r["co_fgsm_val_robust"])
    assert len(r["trades_sweep_robust"]) == len(r["betas"])


def check_04(r):
    temps = r["temperatures"]
    hi, lo = temps.index(max(temps)), temps.index(min(temps))
    # the quick-mode bars at T = 100: naive >= 60%, adaptive <= 10%
    assert r["naive_pgd_accuracy"][hi] >= 0.60 and r["naive_fgsm_accuracy"][hi] >= 0.60
    assert (
        r["margin_pgd_accuracy"][hi] <= 0.10 and r["scaled_ce_pgd_accuracy"][hi] <= 0.10
    )
    assert r["naive_pgd_accuracy"][hi] - r["margin_pgd_accuracy"][hi] >= 0.50
    # distillation at T > 1 raises the logit scale and shrinks input gradients
    assert r["mean_largest_logit"][hi] > 5 * r["mean_largest_logit"][lo]
    assert r["median_gradient_norm"][hi] < r["median_gradient_norm"][lo]
    assert r["zero_gradient_share"][hi] > r["zero_gradient_share"][lo]
    # the sanity checks flag the distilled model and pass the undefended one
    assert "input gradients finite and non-zero" in r["sanity_failed_high_t"]
    assert r["sanity_failed_low_t"] == [] and r["sanity_failed_undefended"] == []
    # broken, the distilled model is about as robust as the undefended one
    assert r["margin_pgd_accuracy"][hi] <= r["undefended_pgd_accuracy"] + 0.05
    assert r["cw_success_rate"] >= 0.9
    assert r["adaptive_curve_high_t"][-1] <= 0.10 <= r["naive_curve_high_t"][-1]


def check_05(r):
    row = {name: i for i, name in enumerate(r["defenses"])}
    bar = max(r["undefended_accuracy"] + 0.05, 0.05)
    # the bar: adaptive within 5 points of undefended (or below 5%)
    for name in ("JPEG", "blur", "median", "noise", "random resize"):
        assert r["adaptive_accuracy"][row[name]] <= bar, name
    # non-differentiable JPEG looks robust to the naive white-box attack, and is not
    jpeg = row["JPEG"]
    assert r["white_box_accuracy"][jpeg] >= r["adaptive_accuracy"][jpeg] + 0.3
    assert "input gradients finite and non-zero" in r["jpeg_sanity_failed"]
    for bits in r["bits_list"]:  # bit depth under BPDA weakens as the budget grows
        assert non_increasing(r[f"bits_{bits}_bpda_curve"]), bits
    for clean, robust in zip(r["clean_accuracy"], r["adaptive_accuracy"]):
        assert 0 <= robust <= 1 and 0 <= clean <= 1


def check_00_full(r):
    assert r["test_accuracy"] >= 0.99  # the full-size bar
    assert r["final_train_loss"] < r["first_train_loss"]


def check_03_full(r):
    check_03(r)
    pgd_at = r["models"].index("PGD-AT")
    assert r["robust_accuracy"][pgd_at] >= 0.89  # the bar for PGD-AT
    # catastrophic overfitting, live: plain FGSM's PGD accuracy rises, then collapses;
    # FGSM-RS's does not; the guard stops early
    fgsm, fgsm_rs = r["co_fgsm_val_robust"], r["co_fgsm_rs_val_robust"]
    assert max(fgsm) - fgsm[-1] >= 0.15 and fgsm_rs[-1] >= fgsm[-1] + 0.2
    assert r["co_guarded_epochs"] < r["co_epochs"]


def check_04_full(r):
    check_04(r)
    hi = r["temperatures"].index(max(r["temperatures"]))
    # the full-size bars at T = 100: naive >= 80%, adaptive <= 5%
    assert r["naive_pgd_accuracy"][hi] >= 0.80
    assert r["margin_pgd_accuracy"][hi] <= 0.05


CHECKS = {
    "00_setup_and_tour.ipynb": check_00,
    "01_adversarial_examples.ipynb": check_01,
    "02_evaluating_robustness.ipynb": check_02,
    "03_adversarial_training.ipynb": check_03,
    "04_defensive_distillation.ipynb": check_04,
    "05_input_transformations.ipynb": check_05,
}


def test_every_notebook_has_quick_parameters_and_checks():
    found = {nb.name for nb in NOTEBOOKS}
    assert found, "no notebooks found"
    assert found == set(runner.QUICK) == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterized(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        "strip outputs"
    )
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse(params[0].source)
    assigned = set()
    for stmt in tree.body:
        assert isinstance(stmt, ast.AnnAssign), "parameters are annotated assignments"
        assert isinstance(stmt.value, ast.Constant) or (
            isinstance(stmt.value, (ast.List, ast.Tuple))
            and all(isinstance(e, ast.Constant) for e in stmt.value.elts)
        ), f"{stmt.target.id} is not a literal"
        assert stmt.target.id.isupper()
        assigned.add(stmt.target.id)
    assert {"SEED", "DEVICE", "RESULTS_PATH"} <= assigned
    lines = params[0].source.splitlines()
    assert all("#" in line for line in lines if line.strip()), (
        "a comment on every parameter"
    )
    for cell in code:
        assert "import *" not in cell.source and "sys.path" not in cell.source
        assert not any(
            line.lstrip().startswith(("%", "!")) for line in cell.source.splitlines()
        )
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"]
    for section in ("## Results", "## Exercises"):
        assert any(h.startswith(section) for h in headings), f"missing {section}"
    assert any(
        "## References" in c.source for c in nb.cells if c.cell_type == "markdown"
    )
    assert set(runner.QUICK.get(path.name, {})) <= assigned, (
        "QUICK sets unknown parameters"
    )


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_records_results(path, tmp_path):
    results = runner.execute(path, tmp_path, quick=True, timeout=600)
    assert results, "no results recorded"
    for key, value in results.items():
        if key.endswith("accuracy") and isinstance(value, float):
            assert 0.0 <= value <= 1.0, key
    CHECKS[path.name](results)


FULL_CHECKS = {
    **CHECKS,
    "00_setup_and_tour.ipynb": check_00_full,
    "03_adversarial_training.ipynb": check_03_full,
    "04_defensive_distillation.ipynb": check_04_full,
}


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_at_teaching_defaults(path, tmp_path):
    """`make test-all`: the teaching run (minutes to an hour each on a CPU; seconds
    where shipped models match), checked against the issues' full-size bars."""
    results = runner.execute(path, tmp_path, quick=False, timeout=4 * 3600)
    FULL_CHECKS[path.name](results)
