"""The claims each notebook's results must back, as margins over its results JSON.

A bar is one relation between recorded numbers, e.g. "PGD accuracy <= FGSM accuracy
+ 0.02"; its margin is how far the run is from breaking it (>= 0: it holds). The
notebook tests check the quick runs' bars, `make test-all` the full-size ones,
the course workflow every seed it runs, and `bench/bar_margins.py` prints the
margins over seeds and thread counts, so a bar that one image or one lucky
training run decides shows up as a margin near zero.

    python -m robustkit.course.bars outputs/            # every results JSON in a folder
    python -m robustkit.course.bars outputs/ --full     # against the full-size bars
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from robustkit import datasets


class Bar(NamedTuple):
    name: str
    margin: Callable[[dict], float]
    # An absolute level, measured on the default dataset (MNIST) and claimed there
    # only; the other bars are relations that hold on any dataset.
    level: bool = False


def holds(condition: bool) -> float:
    """The margin of a yes/no claim: 1 if it holds, -1 if not."""
    return 1.0 if condition else -1.0


def falls(values: list[float], slack: float = 0.02) -> float:
    """Margin of "non-increasing, up to `slack`": min over steps of a + slack - b."""
    return min((a + slack - b for a, b in zip(values, values[1:])), default=1.0)


GRAD_CHECK = "input gradients finite and non-zero"


QUICK: dict[str, list[Bar]] = {
    "00_setup_and_tour.ipynb": [
        Bar("test accuracy >= 0.95", lambda r: r["test_accuracy"] - 0.95, level=True),
        Bar(
            "training loss falls",
            lambda r: r["first_train_loss"] - r["final_train_loss"],
        ),
    ],
    "01_adversarial_examples.ipynb": [
        Bar(
            "PGD costs accuracy",
            lambda r: r["clean_accuracy"] - r["pgd_accuracy"] - 0.01,
        ),
        Bar(
            "PGD <= FGSM + 0.02",
            lambda r: r["fgsm_accuracy"] + 0.02 - r["pgd_accuracy"],
        ),
        Bar(
            "FGSM costs >= 10 points",
            lambda r: r["clean_accuracy"] - r["fgsm_accuracy"] - 0.1,
            level=True,
        ),
        Bar(
            "PGD-L2 costs >= 10 points",
            lambda r: r["clean_accuracy"] - r["pgd_l2_accuracy"] - 0.1,
            level=True,
        ),
        Bar("PGD curve ends < 0.2", lambda r: 0.2 - r["pgd_curve"][-1], level=True),
        Bar("PGD curve non-increasing", lambda r: falls(r["pgd_curve"])),
        Bar("FGSM curve non-increasing", lambda r: falls(r["fgsm_curve"])),
        Bar(
            "PGD <= FGSM + 0.02 at every eps",
            lambda r: min(
                f + 0.02 - p for p, f in zip(r["pgd_curve"], r["fgsm_curve"])
            ),
        ),
        Bar("targeted succeeds sometimes", lambda r: r["targeted_success_rate"]),
        Bar(
            "targeted < untargeted success",
            lambda r: 1 - r["pgd_accuracy"] - r["targeted_success_rate"],
        ),
        Bar(
            "patch beats random stickers by 2 points",
            lambda r: r["patch_success_rate"] - r["random_patch_success_rate"] - 0.02,
            level=True,
        ),
    ],
    "02_evaluating_robustness.ipynb": [
        Bar("PGD steps curve non-increasing", lambda r: falls(r["pgd_steps_curve"])),
        Bar(
            "PGD restarts curve non-increasing",
            lambda r: falls(r["pgd_restarts_curve"]),
        ),
        Bar(
            "restarts <= one start + 0.02",
            lambda r: r["pgd_steps_curve"][-1] + 0.02 - r["pgd_restarts_curve"][-1],
        ),
        Bar(
            "most PGD steps <= FGSM",
            lambda r: r["fgsm_accuracy"] - r["pgd_steps_curve"][-1],
        ),
        Bar(
            "FGSM costs >= 10 points",
            lambda r: r["clean_accuracy"] - r["fgsm_accuracy"] - 0.1,
        ),
        Bar(
            "a tiny step size leaves >= 10 points",
            lambda r: r["pgd_small_step_accuracy"] - r["pgd_tuned_accuracy"] - 0.1,
            level=True,
        ),
        Bar(
            "APGD-CE <= tuned PGD + 0.02",
            lambda r: r["pgd_tuned_accuracy"] + 0.02 - r["apgd_ce_accuracy"],
        ),
        Bar(
            "transfer >= white-box PGD - 0.02",
            lambda r: r["transfer_accuracy"] + 0.02 - r["pgd20_accuracy"],
        ),
        Bar("CW succeeds on > 90%", lambda r: r["cw_success_rate"] - 0.9, level=True),
        Bar(
            "honest model passes the checks", lambda r: holds(r["honest_checks_passed"])
        ),
        Bar(
            "masked model fails the checks",
            lambda r: holds(
                not r["masked_checks_passed"]
                and GRAD_CHECK in r["masked_checks_failed"]
            ),
        ),
        Bar(
            "masking fools naive PGD by >= 20 points",
            lambda r: (
                r["masked_naive_pgd_accuracy"] - r["masked_margin_pgd_accuracy"] - 0.2
            ),
            level=True,
        ),
        Bar(
            "margin PGD sees through masking (+-0.03)",
            lambda r: (
                0.03
                - abs(
                    r["masked_margin_pgd_accuracy"]
                    - r["unmodified_margin_pgd_accuracy"]
                )
            ),
        ),
    ],
    "03_adversarial_training.ipynb": [
        *(
            Bar(
                f"{n} robust >= standard + {gain:.2f}",
                lambda r, n=n, gain=gain: (
                    r[f"{n}_robust_accuracy"] - r["standard_robust_accuracy"] - gain
                ),
                level=level,
            )
            for n in ("fgsm_rs", "pgd_at", "trades")
            for gain, level in [(0.05, False), (0.3, True)]
        ),
        Bar(
            "an adversarial model keeps >= 90% clean",
            lambda r: r["best_adversarial_clean_accuracy"] - 0.9,
            level=True,
        ),
        *(
            Bar(f"{c} non-increasing", lambda r, c=c: falls(r[c]))
            for c in ("baseline_curve", "fgsm_rs_curve", "pgd_curve", "trades_curve")
        ),
        # the guard stops exactly where the unguarded run's PGD accuracy collapsed,
        # and runs every epoch when nothing collapsed: true of any trajectory
        Bar(
            "guard stops at the collapse, or never",
            lambda r: holds(
                r["co_guarded_epochs"] == (r["co_collapse_epoch"] or r["co_epochs"])
            ),
        ),
    ],
    "04_defensive_distillation.ipynb": [
        Bar(
            "naive PGD at T max >= adaptive + 0.10",
            lambda r: (
                r["naive_pgd_accuracy"][_hi(r)] - r["margin_pgd_accuracy"][_hi(r)] - 0.1
            ),
        ),
        Bar(
            "naive PGD at T max >= 0.60",
            lambda r: r["naive_pgd_accuracy"][_hi(r)] - 0.6,
            level=True,
        ),
        Bar(
            "naive FGSM at T max >= 0.60",
            lambda r: r["naive_fgsm_accuracy"][_hi(r)] - 0.6,
            level=True,
        ),
        Bar(
            "margin PGD at T max <= 0.10",
            lambda r: 0.1 - r["margin_pgd_accuracy"][_hi(r)],
            level=True,
        ),
        Bar(
            "scaled-CE PGD at T max <= 0.10",
            lambda r: 0.1 - r["scaled_ce_pgd_accuracy"][_hi(r)],
            level=True,
        ),
        Bar(
            "naive - adaptive >= 0.50",
            lambda r: (
                r["naive_pgd_accuracy"][_hi(r)] - r["margin_pgd_accuracy"][_hi(r)] - 0.5
            ),
            level=True,
        ),
        Bar(
            "logits 5x larger at T max",
            lambda r: (
                r["mean_largest_logit"][_hi(r)] - 5 * r["mean_largest_logit"][_lo(r)]
            ),
        ),
        Bar(
            "median gradient smaller at T max",
            lambda r: (
                r["median_gradient_norm"][_lo(r)] - r["median_gradient_norm"][_hi(r)]
            ),
            level=True,  # where most gradients vanish; the others grow with T
        ),
        Bar(
            "more zero gradients at T max",
            lambda r: (
                r["zero_gradient_share"][_hi(r)] - r["zero_gradient_share"][_lo(r)]
            ),
        ),
        Bar(
            "checks flag T max",
            lambda r: holds(GRAD_CHECK in r["sanity_failed_high_t"]),
        ),
        Bar(
            "checks pass T min and undefended",
            lambda r: holds(
                r["sanity_failed_low_t"] == [] and r["sanity_failed_undefended"] == []
            ),
            level=True,
        ),
        Bar(
            "broken: margin PGD <= undefended + 0.05",
            lambda r: (
                r["undefended_pgd_accuracy"] + 0.05 - r["margin_pgd_accuracy"][_hi(r)]
            ),
            level=True,
        ),
        Bar("CW succeeds on >= 90%", lambda r: r["cw_success_rate"] - 0.9, level=True),
        Bar(
            "adaptive curve ends <= 0.10",
            lambda r: 0.1 - r["adaptive_curve_high_t"][-1],
            level=True,
        ),
        Bar(
            "naive curve ends >= 0.10",
            lambda r: r["naive_curve_high_t"][-1] - 0.1,
            level=True,
        ),
    ],
    "05_input_transformations.ipynb": [
        *(
            Bar(
                f"adaptive on {n} <= undefended + {slack:.2f}",
                lambda r, n=n, slack=slack: (
                    max(r["undefended_accuracy"] + slack, 0.05)
                    - r["adaptive_accuracy"][r["defenses"].index(n)]
                ),
                level=level,
            )
            for n in ("JPEG", "blur", "median", "noise", "random resize")
            for slack, level in [(0.05, True)]
        ),
        Bar(
            "adaptive within 0.03 of the strongest of the three, on every defense",
            lambda r: min(
                min(t, w) + 0.03 - a
                for t, w, a in zip(
                    r["transfer_accuracy"],
                    r["white_box_accuracy"],
                    r["adaptive_accuracy"],
                )
            ),
        ),
        Bar(
            "JPEG fools white-box PGD by >= 30 points",
            lambda r: (
                r["white_box_accuracy"][r["defenses"].index("JPEG")]
                - r["adaptive_accuracy"][r["defenses"].index("JPEG")]
                - 0.3
            ),
            level=True,
        ),
        Bar(
            "JPEG fools white-box PGD (white-box > adaptive)",
            lambda r: (
                r["white_box_accuracy"][r["defenses"].index("JPEG")]
                - r["adaptive_accuracy"][r["defenses"].index("JPEG")]
                - 0.01
            ),
        ),
        Bar("checks flag JPEG", lambda r: holds(GRAD_CHECK in r["jpeg_sanity_failed"])),
        Bar(
            "bit depth under BPDA non-increasing",
            lambda r: min(falls(r[f"bits_{b}_bpda_curve"]) for b in r["bits_list"]),
        ),
    ],
    "06_certified_robustness.ipynb": [
        # sound bounds make these hold for any model on any data; a break is a bug
        Bar(
            "verified <= worst case <= clean, every model",
            lambda r: min(
                min(w - v, c - w)
                for v, w, c in zip(
                    r["verified_accuracy"], r["robust_accuracy"], r["clean_accuracy"]
                )
            ),
        ),
        Bar(
            "IBP verifies >= PGD-AT + 0.20",
            lambda r: r["ibp_verified_accuracy"] - r["pgd_at_verified_accuracy"] - 0.2,
        ),
        Bar(
            "IBP verified curve non-increasing",
            lambda r: falls(r["ibp_verified_curve"], slack=0.0),
        ),
        Bar(
            "certified accuracy non-increasing in the radius, every sigma",
            lambda r: min(
                falls(r[f"certified_curve_{i}"], slack=0.0)
                for i in range(len(r["sigmas"]))
            ),
        ),
        Bar(
            "attack within the certified radius flips <= 5%",
            lambda r: 0.05 - max(r["flipped_within_radius"]),
        ),
    ],
}

FULL: dict[str, list[Bar]] = {
    **QUICK,
    "00_setup_and_tour.ipynb": [
        *QUICK["00_setup_and_tour.ipynb"],
        Bar("test accuracy >= 0.99", lambda r: r["test_accuracy"] - 0.99, level=True),
    ],
    "03_adversarial_training.ipynb": [
        *QUICK["03_adversarial_training.ipynb"],
        Bar(
            "PGD-AT worst case >= 0.89",
            lambda r: r["pgd_at_robust_accuracy"] - 0.89,
            level=True,
        ),
        # the claim of the catastrophic-overfitting demo at teaching size: plain FGSM
        # ends far less robust than FGSM-RS. Whether its PGD accuracy first rises and
        # then drops by CO_DROP (the guard's trigger) depends on the seed: the
        # notebook's verdict reports it per run, and the guard bar checks the stop.
        Bar(
            "FGSM-RS ends >= FGSM + 0.20",
            lambda r: (
                r["co_fgsm_rs_val_robust"][-1] - r["co_fgsm_val_robust"][-1] - 0.2
            ),
            level=True,
        ),
    ],
    "04_defensive_distillation.ipynb": [
        *QUICK["04_defensive_distillation.ipynb"],
        Bar(
            "naive PGD at T max >= 0.80",
            lambda r: r["naive_pgd_accuracy"][_hi(r)] - 0.8,
            level=True,
        ),
        Bar(
            "margin PGD at T max <= 0.05",
            lambda r: 0.05 - r["margin_pgd_accuracy"][_hi(r)],
            level=True,
        ),
    ],
    "06_certified_robustness.ipynb": [
        *QUICK["06_certified_robustness.ipynb"],
        # the targets for the shipped IBP model (MNIST, eps 0.3)
        Bar(
            "IBP verified >= 0.85",
            lambda r: r["ibp_verified_accuracy"] - 0.85,
            level=True,
        ),
        Bar(
            "PGD-AT verified <= 0.10 (robust is not certified)",
            lambda r: 0.1 - r["pgd_at_verified_accuracy"],
            level=True,
        ),
    ],
}


def _hi(r: dict) -> int:
    return r["temperatures"].index(max(r["temperatures"]))


def _lo(r: dict) -> int:
    return r["temperatures"].index(min(r["temperatures"]))


def margins(
    notebook: str, results: dict, *, full: bool = False, levels: bool = True
) -> dict[str, float]:
    """{bar: margin} of one notebook's results (a KeyError names a missing result);
    `levels=False` leaves out the absolute levels (a run on another dataset)."""
    table = FULL if full else QUICK
    if notebook not in table:
        raise ValueError(f"{notebook} has no bars in robustkit.course.bars: add them")
    return {
        bar.name: bar.margin(results)
        for bar in table[notebook]
        if levels or not bar.level
    }


def broken(
    notebook: str, results: dict, *, full: bool = False, levels: bool = True
) -> list[str]:
    """The bars `results` break, each with its margin; [] when all hold."""
    return [
        f"{name} (margin {m:+.3f})"
        for name, m in margins(notebook, results, full=full, levels=levels).items()
        if m < 0
    ]


def on_default_dataset(results: dict) -> bool:
    """Whether a results JSON comes from the dataset the levels were measured on."""
    run = results.get("provenance", {})
    return run.get("dataset", datasets.DEFAULT) == datasets.DEFAULT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="holds NN_topic.json results")
    parser.add_argument("--full", action="store_true", help="the full-size bars")
    args = parser.parse_args(argv)
    found = sorted(args.folder.glob("[0-9][0-9]_*.json"))
    if not found:
        print(f"no results JSON in {args.folder}", file=sys.stderr)
        return 1
    failed = 0
    for path in found:
        results = json.loads(path.read_text())
        levels = on_default_dataset(results)
        bad = broken(f"{path.stem}.ipynb", results, full=args.full, levels=levels)
        print(f"{path.name}: {'ok' if not bad else 'BROKEN ' + '; '.join(bad)}")
        failed += bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
