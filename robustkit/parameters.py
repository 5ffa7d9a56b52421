"""The notebooks' parameters: one table of their types and allowed values.

papermill injects `-p NAME VALUE` as plain assignments and ignores the annotations
of the parameters cell, so `-p EPS abc` or `-p STEPS 0` would otherwise fail deep
inside a later cell, or run silently with a meaningless budget. Every notebook calls
`check(globals())` first thing after its parameters cell; a bad value stops the run
there, with the parameter's name, the value given and the values allowed.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from robustkit.utils import environment


class Spec(NamedTuple):
    """A parameter's type (`item`: of each element, for lists) and allowed values."""

    kind: type
    allowed: str  # the allowed values, in words, for the error message
    ok: Any = None  # predicate on a value of the right type (each element for lists)
    item: type | None = None


def _number(low: float, high: float = math.inf, *, open_low: bool = False):
    def ok(v: float) -> bool:
        return (low < v if open_low else low <= v) and v <= high

    return ok


def _int(low: int, high: float = math.inf) -> Spec:
    bounds = f"an int >= {low}" if high == math.inf else f"an int in [{low}, {high:g}]"
    return Spec(int, bounds, _number(low, high))


def _positive(high: float = math.inf, what: str = "") -> Spec:
    bounds = "a number > 0" if high == math.inf else f"a number in (0, {high:g}]"
    return Spec(float, bounds + what, _number(0, high, open_low=True))


def _list(item: type, allowed: str, ok) -> Spec:
    return Spec(list, f"a non-empty list of {allowed}", ok, item)


def _device(v: str) -> bool:
    return v in ("auto", "cpu", "cuda", "mps") or (
        v.startswith("cuda:") and v[5:].isdigit()
    )


PIXEL_BALL = " (pixels lie in [0, 1]: a larger L-inf ball allows any image)"
L2_DIAMETER = 28.0  # sqrt(1 * 28 * 28): the L2 diameter of an MNIST image's range
STEPS = _int(1)
EPOCHS = _int(1)
SIZE = _int(1)  # image counts; data.load checks them against the dataset's size

SPECS: dict[str, Spec] = {
    "SEED": _int(0),
    "SURROGATE_SEED": _int(0),
    "DEVICE": Spec(str, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", _device),
    "DATASET": Spec(
        str,
        "'mnist', 'fashion_mnist' or 'cifar10'",
        lambda v: v in ("mnist", "fashion_mnist", "cifar10"),
    ),
    "ARCH": Spec(
        str,
        "'small_cnn', 'mnist_cnn' or 'preact_resnet18'",
        lambda v: v in ("small_cnn", "mnist_cnn", "preact_resnet18"),
    ),
    "RESULTS_PATH": Spec(str, "a file path, or '' to write nothing", lambda v: True),
    "N_TRAIN": SIZE,
    "N_VAL": SIZE,
    "N_TEST": SIZE,
    "N_SANITY": SIZE,
    "CO_N_TRAIN": SIZE,
    "SWEEP_N_TRAIN": SIZE,
    "TIMING_N": SIZE,
    "EPOCHS": EPOCHS,
    "FGSM_EPOCHS": EPOCHS,
    "BASELINE_EPOCHS": EPOCHS,
    "CO_EPOCHS": EPOCHS,
    "SWEEP_EPOCHS": EPOCHS,
    "STEPS": STEPS,
    "PGD_STEPS": STEPS,
    "EVAL_STEPS": STEPS,
    "CURVE_STEPS": STEPS,
    "APGD_STEPS": STEPS,
    "CW_STEPS": STEPS,
    "SWEEP_STEPS": STEPS,
    "PATCH_STEPS": STEPS,
    "RESTARTS": _int(1),
    "CW_SEARCH": _int(1),
    "SQUARE_QUERIES": _int(1),
    "EOT_SAMPLES": _int(1),
    "N_TARGETS": _int(1, 9),  # the other classes of a 10-class problem
    "LR": _positive(),
    "EPS": _positive(1.0, PIXEL_BALL),
    "CO_EPS": _positive(1.0, PIXEL_BALL),
    "EPS_L2": _positive(L2_DIAMETER, " (the L2 diameter of the pixel range)"),
    "PGD_ALPHA": _positive(1.0),
    "CO_DROP": Spec(float, "a number in (0, 1)", _number(0, 1, open_low=True)),
    "TRADES_BETA": Spec(float, "a number >= 0", _number(0)),
    "ATTACK_TEMPERATURE": _positive(),
    "PATCH_SIZE": _int(1, 28),
    "PATCH_TARGET": _int(0, 9),
    "JPEG_QUALITY": _int(1, 100),
    "BITS": _int(1, 8),
    "BLUR_SIGMA": _positive(),
    "MEDIAN_SIZE": Spec(int, "an odd int in [1, 27]", lambda v: 1 <= v <= 27 and v % 2),
    "TV_WEIGHT": _positive(),
    "NOISE_SIGMA": Spec(float, "a number >= 0", _number(0)),
    "RESIZE_EXTRA": _int(0, 28),
    "EPS_VALUES": _list(float, "budgets in [0, 1], increasing", _number(0, 1)),
    "STEPS_LIST": _list(int, "ints >= 1, increasing", _number(1)),
    "BITS_LIST": _list(int, "ints in [1, 8], increasing", _number(1, 8)),
    "BETAS": _list(float, "numbers >= 0, increasing", _number(0)),
    "TEMPERATURES": _list(float, "numbers > 0, increasing", _number(0, open_low=True)),
}


class ParameterError(ValueError):
    """A notebook parameter has a value of the wrong type or out of its range."""


def _typed(value: Any, kind: type) -> bool:
    if isinstance(value, bool):  # True is an int to Python, not to a notebook
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def check_value(name: str, value: Any) -> None:
    """Raise ParameterError unless `value` is allowed for parameter `name`."""
    if name not in SPECS:
        raise ParameterError(
            f"parameter {name} has no entry in robustkit.parameters.SPECS: "
            "add its type and allowed values there"
        )
    spec = SPECS[name]
    fix = f"{name} must be {spec.allowed}, got {value!r}"
    if isinstance(value, tuple):
        value = list(value)
    if not _typed(value, spec.kind):
        raise ParameterError(f"{fix} (a {type(value).__name__})")
    if spec.item is None:
        if not spec.ok(value):
            raise ParameterError(fix)
        return
    if not value or not all(_typed(v, spec.item) and spec.ok(v) for v in value):
        raise ParameterError(fix)
    if any(b <= a for a, b in zip(value, value[1:])):
        raise ParameterError(f"{fix} (not increasing)")


def check(namespace: dict[str, Any]) -> dict[str, Any]:
    """Check every parameter in `namespace` (a notebook's `globals()`) and return them.

    The parameters are the UPPER_CASE names bound to literals (the parameters cell
    holds literals only; modules such as `F` are not parameters). Each must be in
    SPECS, of its type, and in its range.

    Returns:
        {name: value} of the parameters, for `run_info`.
    """
    literal = (bool, int, float, str, list, tuple)
    params = {
        k: v
        for k, v in namespace.items()
        if k.isupper() and not k.startswith("_") and isinstance(v, literal)
    }
    for name, value in params.items():
        check_value(name, value)
    return params


def run_info(parameters: dict[str, Any], *, device: torch.device, dataset: str) -> dict:
    """What produced a notebook's results: every parameter, dataset, architecture,
    seed, and the machine (`utils.environment`). `utils.record_results` stores it."""
    return {
        "parameters": dict(parameters),
        "dataset": dataset,
        "arch": parameters.get("ARCH"),
        "seed": parameters["SEED"],
        **environment(device),
    }
