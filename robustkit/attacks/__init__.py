"""Attacks: plain functions (model, x, y, *, ...) -> x_adv, and the parts they share.

Each approximately solves max_{delta in Delta} loss(h(x + delta), y) for a threat
set Delta (an L-inf or L2 ball intersected with the valid input range). None of them
changes the model's mode or buffers, leaves gradients on its parameters, or modifies
x; each refuses inputs it cannot attack correctly (`core.check_args`).
"""

from robustkit.attacks.apgd import apgd, apgd_t
from robustkit.attacks.blackbox import square, transfer
from robustkit.attacks.core import (
    LOSSES,
    clip_to_bounds,
    cross_entropy,
    dlr,
    dlr_targeted,
    input_gradient,
    lp_norm,
    margin,
    project,
    random_init,
    steepest_ascent,
    threat_set,
)
from robustkit.attacks.cw import cw_l2, cw_l2_search
from robustkit.attacks.gradient import (
    fgsm,
    mifgsm,
    n_fgsm,
    perturbation_norm,
    pgd,
    trades_pgd,
)
from robustkit.attacks.patch import apply_patch, train_patch

__all__ = [
    "LOSSES", "apgd", "apgd_t", "apply_patch", "clip_to_bounds", "cross_entropy",
    "cw_l2", "cw_l2_search", "dlr", "dlr_targeted", "fgsm", "input_gradient",
    "lp_norm", "margin", "mifgsm", "n_fgsm", "perturbation_norm", "pgd", "project",
    "random_init", "square", "steepest_ascent", "threat_set", "trades_pgd",
    "train_patch", "transfer",
]  # fmt: skip
