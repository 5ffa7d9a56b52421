"""Self-checks for the course exercises: your function against the package's.

Each check builds a tiny random model and random inputs from a fresh seed, runs your
function and the reference on them, prints one line, PASS or FAIL with the reason,
and returns True or False. Typical mistakes (wrong sign, missing clamp, projecting
the image instead of the perturbation, forgotten mode switch, ...) are named.

    from robustkit.course import checks
    checks.check_fgsm(my_fgsm)  # PASS check_fgsm: matches attacks.fgsm ...

The checks run inside `torch.random.fork_rng`, so they leave the notebook's random
stream untouched. An unfinished exercise (its stub raises NotImplementedError with
the exercise's hint) prints a TODO line with the hint; any other error is reported
as a FAIL. Neither shows a traceback through this module: the check returns False,
and the notebook's `assert` stops at its own line. Pass `seed=` to repeat a failing
check exactly (the FAIL line names its seed).
"""

from __future__ import annotations

import copy
import numbers
import random
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustkit import attacks, evaluation, training
from robustkit.types import Model

# (ok, message) from a check's body; the message explains a FAIL or details a PASS
Verdict = tuple[bool, str]


# -------------------------------------------------------------------- the checks


def check_fgsm(fn: Callable, *, seed: int | None = None) -> bool:
    """Check fn(model, x, y, eps) -> x_adv against `attacks.fgsm` (untargeted L-inf).

    Args:
        fn: Your FGSM: x_adv = clip_[0,1](x + eps * sign(grad_x loss(h(x), y))).
        seed: Seed of the random model and inputs (default: a fresh one).

    Returns:
        True when fn matches the reference and obeys the attack contract.
    """
    return _run("check_fgsm", _fgsm, fn, seed)


def check_projection(fn: Callable, norm: str, *, seed: int | None = None) -> bool:
    """Check fn(delta, eps) -> the projection of delta onto {||delta||_norm <= eps}.

    Args:
        fn: Your projection, applied per example to delta (N, C, H, W).
        norm: "linf" (clamp each coordinate) or "l2" (rescale each example by
            min(1, eps / ||delta||_2)).
        seed: Seed of the random deltas (default: a fresh one).

    Returns:
        True when fn matches `attacks.project`.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return _run(f"check_projection[{norm}]", partial(_projection, norm=norm), fn, seed)


def check_pgd(fn: Callable, *, seed: int | None = None) -> bool:
    """Check fn(model, x, y, eps, alpha, steps) -> x_adv, an L-inf PGD attack.

    x_adv stays in the eps-ball around x and in [0, 1], and raises the loss about
    as much as `attacks.pgd` does (with or without a random start).

    Args:
        fn: Your PGD: x_adv <- P(x_adv + alpha * sign(grad)), P the projection onto
            {x' : ||x' - x||_inf <= eps, x' in [0, 1]}.
        seed: Seed of the random model and inputs (default: a fresh one).

    Returns:
        True when fn is a valid and effective PGD.
    """
    return _run("check_pgd", _pgd, fn, seed)


def check_adversarial_step(fn: Callable, *, seed: int | None = None) -> bool:
    """Check fn(model, opt, x, y, attack) -> loss, one adversarial training step.

    The step must craft x_adv = attack(model, x, y) in eval mode, then take one
    optimizer step on the cross-entropy of h(x_adv) in train mode, exactly as
    `training.run_epoch` does; the check's model has dropout and batch norm, so the
    modes matter.

    Args:
        fn: Your training step; returns the batch's mean loss (float or 0-d tensor).
        seed: Seed of the random model and inputs (default: a fresh one).

    Returns:
        True when the updated weights and the loss match `training.run_epoch`'s.
    """
    return _run("check_adversarial_step", _adversarial_step, fn, seed)


def check_bpda(
    fn_or_module: Callable,
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    seed: int | None = None,
) -> bool:
    """Check a straight-through (BPDA) wrapper: forward t(x), backward identity.

    Two forms are accepted. Without `transform`, fn_or_module is a factory:
    `fn_or_module(t)` returns a callable x -> t(x) (a function or an nn.Module
    class taking the transform); it is tried on a quantizer (zero true gradient)
    and on x ** 2 (a gradient other than the identity). With `transform`,
    fn_or_module is already the wrapped callable x -> transform(x).

    Args:
        fn_or_module: The factory, or the wrapped transform.
        transform: The transform the wrapped callable applies, if already wrapped.
        seed: Seed of the random inputs (default: a fresh one).

    Returns:
        True when the forward pass equals t(x) and the gradient passes unchanged.

    Reference:
        Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of
        Security", ICML 2018. https://arxiv.org/abs/1802.00420
    """
    body = partial(_bpda, transform=transform)
    return _run("check_bpda", body, fn_or_module, seed)


def check_distillation_break(attack_fn: Callable, *, seed: int | None = None) -> bool:
    """Check that attack_fn(model, x, y, eps) -> x_adv sees through saturated logits.

    The check's model h' = 1000 * h predicts exactly like h, but its softmax
    saturates, so cross-entropy gradients underflow to zero (gradient masking, as
    after defensive distillation). The attack must bring the accuracy of h' down
    to within 0.1 of what margin-loss PGD achieves on h, inside the L-inf ball.

    Args:
        attack_fn: Your attack, e.g. PGD on the margin loss `attacks.margin`.
        seed: Seed of the random model and inputs (default: a fresh one).

    Returns:
        True when the attack breaks the masked model as well as the plain one.
    """
    return _run("check_distillation_break", _distillation, attack_fn, seed)


def check_interval_linear(fn: Callable, *, seed: int | None = None) -> bool:
    """Check fn(weight, bias, lower, upper) -> (l, u), the interval bounds of
    z = h @ weight.T + bias over every h with lower <= h <= upper (a batch of boxes,
    one per row), against `certify`'s propagation.

    The bounds must be sound (random points of the box and its corners stay inside)
    and as tight as interval arithmetic allows. Typical mistakes are named: bounds
    from W @ lower and W @ upper without splitting W by sign, the radius scaled by W
    instead of |W|, the bias added to the radius.
    """
    return _run("check_interval_linear", _interval_linear, fn, seed)


def check_accuracy(fn: Callable, *, seed: int | None = None) -> bool:
    """Check fn(model, x, y) -> the fraction of examples the model classifies
    correctly, a float in [0, 1], against `evaluation.accuracy`.

    The forward pass runs under torch.no_grad() and model.training stays as the
    caller set it (the check calls fn in eval mode and in train mode). Typical
    mistakes are named: a percentage, a count, the error rate, the argmax over the
    wrong dimension, a mode switch.
    """
    return _run("check_accuracy", _accuracy, fn, seed)


def check_worst_case(fn: Callable, *, seed: int | None = None) -> bool:
    """Check fn(model, x, y, attack_set) -> the fraction of examples classified
    correctly clean and under every attack (name -> attack(model, x, y) -> x_adv),
    against `evaluation.worst_case`.

    The check's attacks are scripted: each breaks its own examples, so the worst
    case per example is below the weakest attack's accuracy; and they hand back
    images classified correctly, or x unchanged, for examples wrong on clean x.
    Typical mistakes are named: the minimum of the per-attack accuracies, the
    clean mistakes forgotten, robust to one attack instead of every one.
    """
    return _run("check_worst_case", _worst_case, fn, seed)


# ------------------------------------------------------------- shared machinery


def _run(
    name: str, body: Callable[..., Verdict], fn: Callable, seed: int | None
) -> bool:
    """Run body(fn, seed) with a private RNG, print PASS/FAIL, return the verdict."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ok, message = body(fn, seed)
    except NotImplementedError as unfinished:  # its message is the exercise's hint
        print(f"TODO  {name}: not written yet. Hint: {unfinished}")
        return False
    except Exception as error:  # the learner's code failed: say how, not a traceback
        ok, message = False, f"raised {type(error).__name__}: {error}"
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {message} (seed {seed})")
    return ok


def _problem(
    n: int = 32, *, train_layers: bool = False, scale: float = 1.0
) -> tuple[nn.Sequential, Tensor, Tensor]:
    """A tiny random classifier on 1x6x6 'images' in [0, 1], some pixels at 0 or 1.

    With train_layers, batch norm and dropout make train and eval mode differ.
    """
    layers = [nn.Flatten(), nn.Linear(36, 32)]
    if train_layers:
        layers += [nn.BatchNorm1d(32), nn.Tanh(), nn.Dropout(0.25)]
    else:
        layers += [nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(32, 10))
    with torch.no_grad():
        model[-1].weight.mul_(scale)
    model.eval()
    x = torch.rand(n, 1, 6, 6)
    u = torch.rand_like(x)
    # MNIST-like: many pixels at 0, some at 1, where a missing clamp shows
    x = torch.where(u < 0.3, 0.0, torch.where(u > 0.9, 1.0, x))
    y = torch.randint(10, (n,))
    return model, x, y


def _tensor_problem(out, like: Tensor, what: str) -> str | None:
    """Why `out` cannot stand for a tensor like `like`, or None."""
    if not isinstance(out, Tensor):
        return f"returned {type(out).__name__}, expected a Tensor like {what}"
    if out.shape != like.shape:
        return f"returned shape {tuple(out.shape)}, expected {tuple(like.shape)}"
    if out.dtype != like.dtype:
        return f"returned dtype {out.dtype}, expected {like.dtype}"
    return None


def _same(a: Tensor, b: Tensor, *, atol: float = 1e-5, allowed: float = 0.01) -> bool:
    """a equals b up to atol, except on a tiny fraction of entries (sign ties)."""
    return (a - b).abs().gt(atol).float().mean().item() <= allowed


def _loss(model: Model, x: Tensor, y: Tensor) -> float:
    """Mean cross-entropy, without gradients."""
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def _attack_contract(model: nn.Module, x: Tensor, x_before: Tensor, out) -> str | None:
    """The attack contract: a detached tensor, x untouched, mode unchanged."""
    problem = _tensor_problem(out, x, "x")
    if problem:
        return problem
    if not torch.equal(x, x_before):
        return "modified x in place; work on a copy (x.clone()) or out-of-place ops"
    if model.training:
        return (
            "switched the model to train mode; an attack must leave model.training "
            "as it found it (here: eval)"
        )
    if out.requires_grad:
        return "x_adv still requires grad; return x_adv.detach()"
    return None


# ------------------------------------------------------------------ the bodies


def _fgsm(fn: Callable, seed: int) -> Verdict:
    model, x, y = _problem()
    eps = 0.1 + 0.2 * torch.rand(()).item()
    x_before = x.clone()
    out = fn(model, x, y, eps)
    problem = _attack_contract(model, x, x_before, out)
    if problem:
        return False, problem
    note = ""
    if any(p.grad is not None for p in model.parameters()):
        note = "; note: it left .grad on the weights (torch.autograd.grad avoids that)"
    reference = attacks.fgsm(model, x, y, eps=eps)
    if _same(out, reference):
        return True, f"matches attacks.fgsm at eps = {eps:.3f}{note}"
    step = eps * attacks.input_gradient(model, x, y, attacks.cross_entropy).sign()
    wrong = []
    if out.min() < -1e-6 or out.max() > 1 + 1e-6:
        wrong.append(
            f"values outside [0, 1] (min {out.min():.3f}, max {out.max():.3f}): "
            "missing clamp to [0, 1] after the step"
        )
    if _same(out, (x - step).clamp(0, 1)) or _same(out, x - step):
        wrong.append(
            "wrong sign: it moves DOWN the loss (x - eps * sign(grad)); FGSM "
            "ascends it, x + eps * sign(grad)"
        )
    if wrong:
        return False, "; ".join(wrong)
    return False, _step_diagnosis(model, x, y, out, eps, "attacks.fgsm")


def _step_diagnosis(model, x, y, out, eps: float, reference: str) -> str:
    """Name what is off with a one-step L-inf perturbation that is not FGSM's."""
    delta = out - x
    inside = (x > eps + 1e-6) & (x < 1 - eps - 1e-6)  # pixels the clamp cannot touch
    size = delta[inside].abs()
    if size.numel() and size.max() > eps + 1e-5:
        return f"the perturbation leaves the eps-ball (max |delta| {size.max():.3f})"
    if _loss(model, out, y) <= _loss(model, x, y):
        return "the loss did not go up; check the sign and the loss you take"
    if size.numel() and size.std() > 1e-4:
        return (
            "the step sizes vary from pixel to pixel: use eps * sign(grad), not the "
            "raw gradient"
        )
    if size.numel() and abs(size.mean() - eps) > 1e-4:
        return f"every pixel moves by {size.mean():.4f} instead of eps = {eps:.4f}"
    mismatch = (out - attacks.fgsm(model, x, y, eps=eps)).abs().gt(1e-5)
    return (
        f"differs from {reference} on {mismatch.float().mean():.0%} of pixels; take "
        "the gradient of the cross-entropy for the true labels y with respect to x"
    )


def _projection(fn: Callable, seed: int, *, norm: str) -> Verdict:
    eps = 0.1 + 0.4 * torch.rand(()).item()
    delta = torch.randn(16, 1, 6, 6)
    # per-example sizes from well inside to well outside the ball
    target = eps * torch.linspace(0.2, 3.0, len(delta))
    scale = target / attacks.lp_norm(delta, norm)
    delta = delta * scale.view(-1, 1, 1, 1)
    before = delta.clone()
    out = fn(delta, eps)
    problem = _tensor_problem(out, delta, "delta")
    if problem:
        return False, problem
    if not torch.equal(delta, before):
        return False, "modified delta in place; return a new tensor"
    reference = attacks.project(delta, eps, norm)
    if torch.allclose(out, reference, atol=1e-5):
        return True, f"matches attacks.project(delta, eps={eps:.3f}, norm={norm!r})"
    return False, _projection_diagnosis(out, delta, eps, norm)


def _projection_diagnosis(out: Tensor, delta: Tensor, eps: float, norm: str) -> str:
    """Name the usual wrong projections."""
    close = partial(torch.allclose, out, atol=1e-5)
    norms = attacks.lp_norm(delta, norm)
    if close(delta):
        return "returned delta unchanged: nothing was projected"
    if out.min() >= 0 and (close(delta.clamp(0, 1)) or close(delta.clamp(0, eps))):
        return (
            "projecting the image instead of the perturbation: clipping into [0, 1] "
            "(or [0, eps]) is the constraint on the image x + delta; delta itself is "
            "signed and must land in the ball ||delta|| <= eps"
        )
    if close(eps * delta.sign()):
        return (
            "moved every coordinate to +-eps: that is a sign step, not a projection; "
            "points already inside the ball must not move"
        )
    if norm == "l2" and close(delta.clamp(-eps, eps)):
        return (
            "clamped each coordinate (the L-inf projection); for L2 rescale the whole "
            "example by min(1, eps / ||delta||_2)"
        )
    per_example = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    if norm == "l2" and close(eps * delta / per_example):
        return (
            "rescaled every delta onto the sphere; only those with ||delta||_2 > eps "
            "shrink, the others stay as they are"
        )
    if norm == "l2" and close(delta * min(1.0, eps / delta.norm().item())):
        return (
            "took one norm over the whole batch; use a norm per example, "
            "delta.flatten(1).norm(dim=1)"
        )
    out_norms = attacks.lp_norm(out, norm)
    if out_norms.max() > eps + 1e-5:
        return f"results lie outside the ball (largest norm {out_norms.max():.3f})"
    inside = norms <= eps
    moved = (out - delta).flatten(1).abs().amax(1) > 1e-5
    if (inside & moved).any():
        return "moved deltas that were already inside the ball"
    return f"differs from attacks.project(delta, eps, {norm!r})"


def _pgd(fn: Callable, seed: int) -> Verdict:
    model, x, y = _problem()
    eps = 0.1 + 0.1 * torch.rand(()).item()
    alpha, steps = eps / 4, 10
    x_before = x.clone()
    out = fn(model, x, y, eps, alpha, steps)
    problem = _attack_contract(model, x, x_before, out)
    if problem:
        return False, problem
    if out.max() <= eps + 1e-6 and (x > eps + 0.05).any():
        return False, (
            "every pixel of x_adv is <= eps: projecting the image instead of the "
            "perturbation; clamp delta = x_adv - x to [-eps, eps], then add x back"
        )
    if out.min() < -1e-6 or out.max() > 1 + 1e-6:
        return False, (
            f"values outside [0, 1] (min {out.min():.3f}, max {out.max():.3f}): "
            "missing clamp to [0, 1]"
        )
    distance = (out - x).abs().max().item()
    if distance > eps + 1e-5:
        return False, (
            f"left the eps-ball: max |x_adv - x| = {distance:.3f} > eps = {eps:.3f}; "
            "project after every step"
        )
    clean = _loss(model, x, y)
    gain = _loss(model, out, y) - clean
    reference = attacks.pgd(model, x, y, eps=eps, alpha=alpha, steps=steps)
    gain_ref = _loss(model, reference, y) - clean
    if gain <= 0:
        return False, "the loss went down: wrong sign (PGD ascends the loss)"
    if gain < 0.7 * gain_ref:
        return False, (
            f"raises the loss by {gain:.3f} where attacks.pgd reaches {gain_ref:.3f}; "
            "does it take `steps` steps of size alpha along sign(grad)?"
        )
    return True, (
        f"stays in the eps-ball and in [0, 1]; raises the loss by {gain:.3f} "
        f"(attacks.pgd: {gain_ref:.3f})"
    )


def _adversarial_step(fn: Callable, seed: int) -> Verdict:
    model, x, y = _problem(train_layers=True)
    reference = copy.deepcopy(model)
    attack = partial(attacks.pgd, eps=0.1, alpha=0.04, steps=3)
    for m in (model, reference):  # stale gradients that zero_grad must clear
        for p in m.parameters():
            p.grad = torch.randn_like(p)
    calls = {"attack_modes": [], "forwards": [], "in_attack": False}
    calls.update(zero_grad=0, step=0)

    def spy_attack(m, x_in, y_in):
        calls["attack_modes"].append(m.training)
        calls["in_attack"] = True
        x_adv = attack(m, x_in, y_in)
        calls["in_attack"] = False
        return x_adv

    def spy_forward(module, args):
        if not calls["in_attack"]:
            calls["forwards"].append((module.training, args[0]))

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for obj, method in [(opt, "zero_grad"), (opt, "step"), (model, "zero_grad")]:
        _count(obj, method, calls)
    handle = model.register_forward_pre_hook(spy_forward)
    model.train()  # as a training loop would leave it
    torch.manual_seed(seed)
    try:
        loss = fn(model, opt, x, y, spy_attack)
    finally:
        handle.remove()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    torch.manual_seed(seed)
    ref = training.run_epoch(
        reference, [(x, y)], opt=ref_opt, attack=attack, progress=False
    )
    problem = _step_diagnosis_training(calls, x)
    if problem:
        return False, problem
    same = all(
        torch.allclose(p, q, atol=1e-5)
        for p, q in zip(model.parameters(), reference.parameters())
    )
    if not same:
        return False, "the weights after the step differ from training.run_epoch's"
    if not isinstance(loss, (float, Tensor)) or abs(float(loss) - ref.loss) > 1e-4:
        return False, (
            f"returned {loss!r}; return the batch's mean cross-entropy on x_adv "
            f"({ref.loss:.4f} here), e.g. loss.item()"
        )
    return (
        True,
        "eval mode while crafting, train mode while stepping; matches run_epoch",
    )


def _count(obj, method: str, calls: dict) -> None:
    """Count calls of obj.method in calls[method], still calling it."""
    original = getattr(obj, method)

    def counted(*args, **kwargs):
        calls[method] += 1
        return original(*args, **kwargs)

    setattr(obj, method, counted)


def _step_diagnosis_training(calls: dict, x: Tensor) -> str | None:
    """Name what a training step did wrong, from what the spies recorded."""
    if not calls["attack_modes"]:
        return "never called attack(model, x, y): train on x_adv, not on x"
    if any(calls["attack_modes"]):
        return (
            "crafted x_adv with the model in train mode: call model.eval() before the "
            "attack (dropout would randomize it and batch norm would use and update "
            "batch statistics)"
        )
    training_inputs = [inp for mode, inp in calls["forwards"] if mode]
    if not training_inputs:
        evals = [inp for mode, inp in calls["forwards"] if not mode]
        if evals:
            return (
                "the update step ran in eval mode: call model.train() after crafting "
                "x_adv and before computing the loss"
            )
        return "never called the model on x_adv to compute the loss"
    if any(torch.equal(inp, x) for inp in training_inputs):
        return "computed the training loss on the clean x; use x_adv"
    if calls["step"] == 0:
        return "never called opt.step(): the weights did not change"
    if calls["zero_grad"] == 0:
        return (
            "never called opt.zero_grad(): gradients of earlier steps accumulate "
            "into this one"
        )
    return None


def _bpda(fn: Callable, seed: int, *, transform: Callable | None) -> Verdict:
    x = torch.rand(8, 1, 6, 6)
    cases = (
        [("given transform", transform, fn)]
        if transform is not None
        else [
            ("quantize", _quantize, fn(_quantize)),
            ("x ** 2", _square, fn(_square)),
        ]
    )
    for name, t, wrapped in cases:
        x_in = x.clone().requires_grad_(True)
        out = wrapped(x_in)
        problem = _tensor_problem(out, x, "x")
        if problem:
            return False, f"{name}: {problem}"
        with torch.no_grad():
            expected = t(x)
        if not torch.allclose(out.detach(), expected, atol=1e-5):
            if torch.allclose(out.detach(), x, atol=1e-5):
                return False, f"{name}: the forward pass returned x; it must apply t(x)"
            return False, f"{name}: the forward pass differs from t(x)"
        if not out.requires_grad:
            return False, (
                f"{name}: the output is cut from x's graph (no gradient at all); "
                "use x + (t(x) - x).detach() or a custom autograd.Function"
            )
        upstream = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, x_in, upstream, allow_unused=True)
        if grad is None or grad.abs().max() == 0:
            return False, (
                f"{name}: the gradient is zero: the backward pass goes through the "
                "transform; BPDA replaces its derivative by the identity"
            )
        if torch.allclose(grad, upstream, atol=1e-5):
            continue
        if name == "x ** 2" and torch.allclose(grad, 2 * x * upstream, atol=1e-5):
            return False, (
                "x ** 2: the gradient is the transform's own derivative (2x); the "
                "straight-through estimator passes the gradient unchanged"
            )
        return False, f"{name}: the backward pass is not the identity"
    return True, "forward applies t(x), backward passes the gradient unchanged"


def _quantize(x: Tensor) -> Tensor:
    return torch.round(x * 7) / 7


def _square(x: Tensor) -> Tensor:
    return x**2


class _Scaled(nn.Module):
    """Logits times a factor: same predictions, saturated softmax."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.factor


def _distillation(attack_fn: Callable, seed: int) -> Verdict:
    model, x, _ = _problem(64, scale=8.0)
    with torch.no_grad():
        y = model(x).argmax(1)  # clean accuracy 1: every example is worth attacking
    masked, eps = _Scaled(model, 1000.0).eval(), 0.2
    pgd = partial(attacks.pgd, eps=eps, alpha=eps / 4, steps=20)

    def accuracy(m: Model, x_adv: Tensor) -> float:
        with torch.no_grad():
            return (m(x_adv).argmax(1) == y).float().mean().item()

    target = accuracy(model, pgd(model, x, y, loss_fn=attacks.margin))
    naive = accuracy(masked, pgd(masked, x, y))
    x_before = x.clone()
    out = attack_fn(masked, x, y, eps)
    problem = _attack_contract(masked, x, x_before, out)
    if problem:
        return False, problem
    distance = (out - x).abs().max().item()
    if distance > eps + 1e-5 or out.min() < -1e-6 or out.max() > 1 + 1e-6:
        return False, (
            f"x_adv leaves the threat set (max |x_adv - x| = {distance:.3f}, eps = "
            f"{eps}, or outside [0, 1]); a result outside the budget proves nothing"
        )
    mine = accuracy(masked, out)
    numbers = (
        f"accuracy of the x1000 model under your attack {mine:.2f}; plain model "
        f"under margin PGD {target:.2f}; x1000 model under cross-entropy PGD "
        f"{naive:.2f}"
    )
    if mine <= target + 0.1:
        return True, numbers
    plain = accuracy(model, attack_fn(model, x, y, eps))
    if plain <= target + 0.1:
        return False, (
            f"{numbers}. It breaks the plain model ({plain:.2f}) but not the scaled "
            "one: its loss saturates (cross-entropy's gradient underflows to 0); "
            "attack a loss on the logits, such as attacks.margin"
        )
    return False, f"{numbers}. It does not break even the plain model ({plain:.2f})"


def _interval_linear(fn: Callable, seed: int) -> Verdict:
    from robustkit import certify

    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight.mul_(3)  # both signs, large enough that a sign error shows
    centre, radius = torch.randn(5, 6), torch.rand(5, 6)
    lower, upper = centre - radius, centre + radius
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    out = fn(w, b, lower.clone(), upper.clone())
    if not (isinstance(out, tuple) and len(out) == 2):
        return False, f"returned {type(out).__name__}, expected a tuple (l, u)"
    for what, t in zip(("l", "u"), out):
        problem = _tensor_problem(t, torch.empty(5, 4), f"{what} of shape (5, 4)")
        if problem:
            return False, problem
    low, high = (t.detach() for t in out)
    with torch.no_grad():
        ref_low, ref_high = certify.interval_bounds(layer, lower, upper)
    ends = lower @ w.T + b, upper @ w.T + b
    naive = torch.minimum(*ends), torch.maximum(*ends)
    points = lower + torch.rand(200, 5, 6).round() * (upper - lower)
    z = points @ w.T + b
    if _same(low, naive[0]) and _same(high, naive[1]):
        return False, (
            "your bounds come from W @ lower and W @ upper: a negative weight takes "
            "its smallest output at the input's upper end, so split W by sign (or use "
            "the centre W mu + b and the radius |W| r)"
        )
    if not (torch.all(z >= low - 1e-4) and torch.all(z <= high + 1e-4)):
        escaped = float(((z < low - 1e-4) | (z > high + 1e-4)).float().mean())
        return False, (
            f"not sound: {escaped:.0%} of the outputs at the box's corners fall "
            "outside your interval; the radius is |W| r (every input moves on its own)"
        )
    if _same(high - low, ref_high - ref_low + 2 * b.abs()):
        return False, "the bias moves the centre only: it does not widen the interval"
    if not (_same(low, ref_low, atol=1e-4) and _same(high, ref_high, atol=1e-4)):
        gap = float(((high - low) - (ref_high - ref_low)).mean())
        return False, (
            f"sound but loose: your intervals are {gap:.3f} wider on average than "
            "interval arithmetic's W mu + b -+ |W| r"
        )
    return True, "matches certify.interval_bounds on a linear layer (and it is sound)"


def _number(out) -> float | None:
    """out as a float if it is a number or a one-element tensor, else None."""
    if isinstance(out, Tensor) and out.numel() == 1:
        return out.item()
    return float(out) if isinstance(out, numbers.Real) else None


def _named(out: list[float], ref: list[float], mistakes: dict) -> Verdict | None:
    """None if out matches ref; else (False, why): the mistake (message -> lists of
    the values it gives) that out matches, or the numbers."""
    close = lambda a, b: all(  # noqa: E731
        abs(u - v) <= 1e-5 * max(1.0, abs(v)) for u, v in zip(a, b)
    )
    if close(out, ref):
        return None
    for message, candidates in mistakes.items():
        if any(close(out, values) for values in candidates):
            return False, message
    listed = lambda v: ", ".join(f"{a:.3f}" for a in v)  # noqa: E731
    return False, f"returned {listed(out)}; expected {listed(ref)}"


def _accuracy(fn: Callable, seed: int) -> Verdict:
    model, x, _ = _problem(40)  # no dropout or batch norm: both modes agree
    with torch.no_grad():
        z = model(x)
    # 6 to 9 right of each 10, so that a percentage, a count or the error rate
    # cannot pass; the others get a label the model does not predict
    right = torch.rand(4, 10).argsort(1) < torch.tensor([[6], [7], [8], [9]])
    wrong = (z.argmax(1) + torch.randint(1, 10, (40,))) % 10
    y = torch.where(right[torch.randperm(4)].flatten(), z.argmax(1), wrong)
    grad_on = []
    model.register_forward_pre_hook(lambda *_: grad_on.append(torch.is_grad_enabled()))
    out, ref = [], []
    batches = [slice(i, i + 10) for i in range(0, 40, 10)]  # N = 10 = K: dim 0 runs
    for k, b in enumerate(batches):
        model.train(k % 2 == 1)  # the caller's mode: eval, then train
        mode = model.training
        value = _number(fn(model, x[b], y[b]))
        if model.training != mode:
            return False, (
                f"switched the model to {'train' if model.training else 'eval'} mode; "
                "leave model.training as the caller set it"
            )
        if value is None:
            return False, "returned no number; return a float in [0, 1]"
        out.append(value)
        ref.append(evaluation.accuracy(model, [(x[b], y[b])]))
    dim0 = [(z[b].argmax(0) == y[b]).float().mean().item() for b in batches]
    mistakes = {
        "returned a percentage; accuracy is a fraction in [0, 1]": [
            [100 * r for r in ref]
        ],
        "returned the count of correct predictions; divide by len(y)": [
            [10 * r for r in ref]
        ],
        "returned the error rate 1 - accuracy; count pred == y": [[1 - r for r in ref]],
        "argmax over the wrong dimension: logits are (N, K), the classes dim=1": [dim0],
    }
    verdict = _named(out, ref, mistakes)
    if verdict:
        return verdict
    if any(grad_on):
        return False, (
            "ran the model with gradients enabled: wrap the forward pass in "
            "torch.no_grad() (an evaluation needs no graph, which costs memory)"
        )
    return True, "matches evaluation.accuracy, under no_grad, model.training unchanged"


def _worst_case(fn: Callable, seed: int) -> Verdict:
    # the logits are the first 10 pixels: a scripted attack sets the prediction
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 10, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(10, 36))
        x, ids = torch.rand(20, 1, 6, 6), torch.randperm(20)
        y = model(x).argmax(1)
    wrong, fixed = ids[:4], ids[:1]  # wrong on clean x; the attacks fix ids[0]
    y[wrong] = (y[wrong] + torch.randint(1, 10, (4,))) % 10
    attack_set = {  # each breaks its own examples: 8 of the 16 right survive all
        f"attack {name}": partial(_scripted, x, y, ids[4 + lo : 4 + hi], fixed)
        for name, lo, hi in [("A", 0, 4), ("B", 2, 6), ("C", 6, 8)]
    }
    out = _number(fn(model, x.clone(), y.clone(), attack_set))
    if out is None:
        return False, "returned no number; return a float in [0, 1]"
    ref = evaluation.worst_case(
        model, [(x, y)], attack_set, independent=True, progress=False
    )
    with torch.no_grad():
        pred = model(x).argmax(1)
        adv = torch.stack(
            [model(a(model, x, y)).argmax(1) for a in attack_set.values()]
        )
    clean, under = pred == y, adv == y
    mean = lambda t: t.float().mean().item()  # noqa: E731
    mistakes = {
        "took the minimum of the per-attack accuracies; the worst case is per "
        "example: robust means that no attack breaks it": [
            [min(map(mean, under))],
            [min(mean(clean & u) for u in under)],
        ],
        "forgot the clean mistakes: an example wrong on x is never robust, whatever "
        "the attacks return; start from pred(x) == y, over all N examples": [
            [mean(under.all(0))],
            [mean((adv == pred).all(0))],
            [mean(under.all(0)[clean])],
        ],
        "robust to one attack is not robust: AND over every attack, not OR": [
            [mean(clean & under.any(0))]
        ],
    }
    verdict = _named([out], [ref.robust_accuracy], mistakes)
    if verdict:
        return verdict
    return True, (
        f"matches evaluation.worst_case: {ref.robust_accuracy:.2f} survive every "
        f"attack, where the strongest alone leaves {min(ref.per_attack.values()):.2f}"
    )


def _scripted(x_all, y_all, breaks, fixes, model, x, y) -> Tensor:
    """A scripted attack: the examples `breaks` get a wrong prediction, `fixes` the
    right one, the others come back unchanged. It finds each row of x in x_all by
    the pixels it never changes, so it works on any subset, in any order."""
    found = (x.flatten(1)[:, None, 10:] == x_all.flatten(1)[None, :, 10:]).all(-1)
    idx = found.int().argmax(1)
    fix = torch.isin(idx, fixes)
    move = torch.isin(idx, breaks) | fix
    target = torch.where(fix, y_all[idx], (y_all[idx] + 1) % 10)
    x_adv = x.clone().flatten(1)
    x_adv[move, :10] = F.one_hot(target[move], 10).to(x.dtype)
    return x_adv.view_as(x)
