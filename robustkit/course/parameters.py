"""The notebooks' parameters: one table of their types and allowed values.

papermill injects `-p NAME VALUE` as plain assignments and ignores the annotations
of the parameters cell, so `-p EPS abc` or `-p STEPS 0` would otherwise fail deep
inside a later cell, or run silently with a meaningless budget. Every notebook calls
`check(globals())` first thing after its parameters cell; a bad value stops the run
there, with the parameter's name, the value given and the values allowed. A
parameter whose default is None takes the dataset's value (`robustkit.datasets`),
set explicitly in the notebook's setup cell; `check` then also checks the values
that depend on the dataset (a sticker larger than its images, a target class it
does not have, an architecture that cannot take its images).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from robustkit import datasets, models
from robustkit.utils import environment


class Spec(NamedTuple):
    """A parameter's type (`item`: of each element, for lists) and allowed values."""

    kind: type
    allowed: str  # the allowed values, in words, for the error message
    ok: Any = None  # predicate on a value of the right type (each element for lists)
    item: type | None = None
    optional: bool = False  # None allowed: the dataset's value


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


def _optional(spec: Spec) -> Spec:
    return spec._replace(
        allowed=f"None (the dataset's) or {spec.allowed}", optional=True
    )


PIXEL_BALL = " (pixels lie in [0, 1]: a larger L-inf ball allows any image)"
STEPS = _int(1)
EPOCHS = _int(1)
SIZE = _int(1)  # image counts; data.load checks them against the dataset's size

SPECS: dict[str, Spec] = {
    "SEED": _int(0),
    "SURROGATE_SEED": _int(0),
    "DEVICE": Spec(str, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", _device),
    "DATASET": Spec(
        str, " or ".join(map(repr, datasets.names())), lambda v: v in datasets.names()
    ),
    "ARCH": _optional(
        Spec(
            str,
            " or ".join(map(repr, models.ARCHITECTURES)),
            lambda v: v in models.ARCHITECTURES,
        )
    ),
    "RESULTS_PATH": Spec(str, "a file path, or '' to write nothing", lambda v: True),
    "REEVALUATE": Spec(bool, "True or False", lambda v: isinstance(v, bool)),
    "N_TRAIN": _optional(SIZE),
    "N_VAL": _optional(SIZE),
    "N_TEST": SIZE,
    "N_SANITY": SIZE,
    "CO_N_TRAIN": SIZE,
    "CO_N_VAL": SIZE,
    "SWEEP_N_TRAIN": SIZE,
    "TIMING_N": SIZE,
    "EPOCHS": _optional(EPOCHS),
    "FGSM_EPOCHS": EPOCHS,
    "BASELINE_EPOCHS": EPOCHS,
    "CO_EPOCHS": EPOCHS,
    "IBP_EPOCHS": _optional(EPOCHS),
    "SMOOTH_EPOCHS": _optional(EPOCHS),
    "N_CERTIFY": SIZE,
    "N_ATTACK": SIZE,
    "N0": _int(1),
    "N_DRAWS": _int(1),
    "ATTACK_STEPS": STEPS,
    "ALPHA": Spec(float, "a number in (0, 0.5)", lambda v: 0 < v < 0.5),
    "SIGMAS": _list(float, "numbers > 0, increasing", _number(0, open_low=True)),
    "RADII": _list(float, "numbers >= 0, increasing", _number(0)),
    "SWEEP_EPOCHS": EPOCHS,
    "STEPS": STEPS,
    "PGD_STEPS": _optional(STEPS),
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
    "N_TARGETS": _int(1),  # at most the dataset's other classes (check)
    "LR": _optional(_positive()),
    "IBP_LR": _optional(_positive()),
    "EPS": _optional(_positive(1.0, PIXEL_BALL)),
    "CO_EPS": _optional(_positive(1.0, PIXEL_BALL)),
    "EPS_FRACTION": _positive(1.0),
    "EPS_L2": _optional(_positive()),  # at most the L2 diameter of the images (check)
    "PGD_ALPHA": _optional(_positive(1.0)),
    "CO_DROP": Spec(float, "a number in (0, 1)", _number(0, 1, open_low=True)),
    "TRADES_BETA": Spec(float, "a number >= 0", _number(0)),
    "ATTACK_TEMPERATURE": _positive(),
    "PATCH_SIZE": _optional(_int(1)),  # at most the image side (check)
    "PATCH_TARGET": _int(0),  # a class of the dataset (check)
    "JPEG_QUALITY": _int(1, 100),
    "BITS": _int(1, 8),
    "BLUR_SIGMA": _positive(),
    "MEDIAN_SIZE": Spec(int, "an odd int >= 1", lambda v: 1 <= v and v % 2),
    "TV_WEIGHT": _positive(),
    "NOISE_SIGMA": _optional(Spec(float, "a number >= 0", _number(0))),
    "RESIZE_EXTRA": _int(0),  # at most the image side (check)
    "EPS_VALUES": _optional(
        _list(float, "budgets in [0, 1], increasing", _number(0, 1))
    ),
    "STEPS_LIST": _list(int, "ints >= 1, increasing", _number(1)),
    "BITS_LIST": _list(int, "ints in [1, 8], increasing", _number(1, 8)),
    "BETAS": _list(float, "numbers >= 0, increasing", _number(0)),
    "TEMPERATURES": _list(float, "numbers > 0, increasing", _number(0, open_low=True)),
}

# Limits that depend on the dataset: name -> (largest value for the row, in words).
DATASET_LIMITS: dict[str, tuple[Any, str]] = {
    "PATCH_SIZE": (lambda ds: min(ds.shape[1:]), "the image side"),
    "PATCH_TARGET": (lambda ds: ds.n_classes - 1, "the last class"),
    "N_TARGETS": (lambda ds: ds.n_classes - 1, "the number of other classes"),
    "EPS_L2": (lambda ds: math.prod(ds.shape) ** 0.5, "the L2 diameter of the images"),
    "RESIZE_EXTRA": (lambda ds: min(ds.shape[1:]), "the image side"),
    "MEDIAN_SIZE": (lambda ds: min(ds.shape[1:]) - 1, "the image side - 1"),
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
            f"parameter {name} has no entry in robustkit.course.parameters.SPECS: "
            "add its type and allowed values there"
        )
    spec = SPECS[name]
    fix = f"{name} must be {spec.allowed}, got {value!r}"
    if isinstance(value, tuple):
        value = list(value)
    if value is None and spec.optional:
        return
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

    The parameters are the UPPER_CASE names bound to literals or None (the
    parameters cell holds literals only; modules such as `F` are not parameters).
    Each must be in SPECS, of its type, and in its range; with a DATASET, the values
    of DATASET_LIMITS must fit the dataset and ARCH must take its images.

    Returns:
        {name: value} of the parameters (None: the dataset's value, still to be set).
    """
    literal = (bool, int, float, str, list, tuple, type(None))
    params = {
        k: v
        for k, v in namespace.items()
        if k.isupper() and not k.startswith("_") and isinstance(v, literal)
    }
    for name, value in params.items():
        check_value(name, value)
    if "DATASET" in params:
        ds = datasets.get(params["DATASET"])
        for name, (limit, words) in DATASET_LIMITS.items():
            value = params.get(name)
            if value is not None and value > limit(ds):
                raise ParameterError(
                    f"{name}={value!r} is larger than {words} of {ds.name} "
                    f"({limit(ds):g}): use a value <= {limit(ds):g}"
                )
        if params.get("ARCH") is not None:
            try:
                models.check_fits(params["ARCH"], ds.name)
            except ValueError as err:
                raise ParameterError(f"ARCH={params['ARCH']!r}: {err}") from None
    return params


def run_info(
    parameters: dict[str, Any], namespace: dict[str, Any], *, device: torch.device
) -> dict:
    """What produced a notebook's results: every parameter as the run used it (its
    value in `namespace`, the notebook's globals, once the dataset's defaults are
    set), dataset, architecture, seed, and the machine (`utils.environment`).
    `utils.record_results` stores it."""
    used = {name: namespace.get(name, value) for name, value in parameters.items()}
    dataset = used.get("DATASET", datasets.DEFAULT)
    return {
        "parameters": used,
        "dataset": dataset,
        "arch": used.get("ARCH") or datasets.get(dataset).arch,
        "seed": used["SEED"],
        **environment(device),
    }
