"""Attack speed: robustkit vs torchattacks, and both vs the hardware ceiling.

In one run, on the same model and images, measures images/second of each attack in
robustkit and torchattacks, and the ceiling: the rate of bare forward + backward
passes with respect to the input, divided by the passes the attack needs (1 for
FGSM, `steps` for the others). Prints each rate as a fraction of the ceiling and
robustkit's speed relative to torchattacks. Targets on CPU: PGD-10 >= 0.95 of the
ceiling, CW >= 0.9, every attack at least as fast as torchattacks.

    python bench/attacks.py [--n 512] [--repeats 3] [--device auto] [--arch small_cnn]

torchattacks' CW stops the whole batch early when the total loss stops falling, so
it may run fewer steps than asked: its rate and ceiling fraction are then flattering.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
import torch.nn.functional as F

from robustkit import attacks, data, evaluation, recipes, utils, zoo


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def bare_passes(model, x, y, passes):
    for _ in range(passes):
        x_g = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_g), y), x_g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=512, help="images attacked (one batch)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--only", nargs="*", help="attack names to run (default: all)")
    args = parser.parse_args()
    import torchattacks

    device = utils.get_device(args.device)
    cfg = recipes.config(arch=args.arch, n_train=5_000, epochs=5)
    model, _ = zoo.load_or_train(
        "baseline",
        cfg,
        partial(recipes.train, progress=False),
        device=device,
    )
    splits = data.load("mnist", n_train=0, n_test=args.n, device=device)
    x, y = splits.x_test, splits.y_test
    eps, l2 = 0.1, 1.0
    cases = [  # name, passes, robustkit, torchattacks
        ("FGSM", 1, partial(attacks.fgsm, eps=eps), torchattacks.FGSM(model, eps=eps)),
        (
            "PGD-Linf-10",
            10,
            partial(attacks.pgd, eps=eps, alpha=eps / 4, steps=10),
            torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10),
        ),
        (
            "PGD-L2-10",
            10,
            partial(attacks.pgd, eps=l2, alpha=l2 / 4, steps=10, norm="l2"),
            torchattacks.PGDL2(model, eps=l2, alpha=l2 / 4, steps=10),
        ),
        (
            "CW-L2-50",
            50,
            partial(attacks.cw_l2, c=1.0, steps=50, lr=0.01),
            torchattacks.CW(model, c=1.0, steps=50, lr=0.01),
        ),
        (
            "APGD-CE-20",
            20,
            partial(attacks.apgd, eps=eps, steps=20),
            torchattacks.APGD(model, eps=eps, steps=20),
        ),
    ]
    bare_passes(model, x, y, 3)  # warm-up
    print(
        f"device {device}, {args.arch}, batch of {args.n} MNIST images, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    header = (
        f"{'attack':12s} {'ceiling':>9s} {'robustkit':>10s} {'torchatt.':>10s}"
        f" {'rk/ceil':>8s} {'ta/ceil':>8s} {'rk/ta':>6s} {'acc rk':>7s} {'acc ta':>7s}"
    )
    print(header)
    for name, passes, ours, theirs in cases:
        if args.only and name not in args.only:
            continue
        t_bare, t_ours, t_theirs = [], [], []
        for _ in range(args.repeats):  # interleaved, so machine drift hits all three
            t_bare.append(timed(partial(bare_passes, model, x, y, passes), device)[0])
            t, x_ours = timed(partial(ours, model, x, y), device)
            t_ours.append(t)
            t, x_theirs = timed(partial(theirs, x, y), device)
            t_theirs.append(t)
        ceiling, rk, ta = (args.n / min(t) for t in (t_bare, t_ours, t_theirs))
        acc_ours, acc_theirs = (
            (evaluation.predict(model, x_adv) == y).float().mean().item()
            for x_adv in (x_ours, x_theirs)
        )
        print(
            f"{name:12s} {ceiling:9.0f} {rk:10.0f} {ta:10.0f} {rk / ceiling:8.2f} "
            f"{ta / ceiling:8.2f} {rk / ta:6.2f} {acc_ours:7.3f} {acc_theirs:7.3f}"
        )
    print(
        "(images/s; ceiling = bare forward+backward passes w.r.t. the input / passes)"
    )


if __name__ == "__main__":
    main()
