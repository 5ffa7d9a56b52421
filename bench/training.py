"""Cost of each adversarial-training recipe, relative to standard training.

One epoch of every recipe on the same MNIST images and model, measured in the same
run (interleaved repeats, best of each). Expected: FGSM-RS about 2x standard, PGD
with k steps about k + 1 x, TRADES with k steps about k + 2 x (a second forward).

    python bench/training.py [--n 5000] [--steps 10] [--repeats 2] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import torch

from robustkit import data, models, recipes, training, utils


def epoch_seconds(cfg, splits, device) -> float:
    torch.manual_seed(0)
    model = models.create(cfg["arch"], cfg["dataset"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = data.Batches(splits.x_train, splits.y_train, batch_size=cfg["batch_size"])
    attack, objective = recipes.recipe_parts(cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    training.run_epoch(
        model, loader, opt=opt, attack=attack, objective=objective, progress=False
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5_000, help="training images")
    parser.add_argument("--steps", type=int, default=10, help="PGD / TRADES steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = utils.get_device(args.device)
    splits = data.load("mnist", n_train=args.n, n_test=0, device=device)
    k = args.steps
    configs = {
        "standard": recipes.config("standard", arch=args.arch),
        "FGSM-RS": recipes.config("fgsm_rs", arch=args.arch),
        f"PGD-{k}": recipes.config(
            "pgd", arch=args.arch, attack_steps=k, alpha=0.75 / k
        ),
        f"TRADES-{k}": recipes.config(
            "trades", arch=args.arch, attack_steps=k, alpha=0.75 / k
        ),
    }
    expected = {"standard": 1, "FGSM-RS": 2, f"PGD-{k}": k + 1, f"TRADES-{k}": k + 2}
    times = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, cfg in configs.items():
            times[name].append(epoch_seconds(cfg, splits, device))
    base = min(times["standard"])
    print(
        f"device {device}, {args.arch}, {args.n} images, {torch.get_num_threads()} "
        f"threads, best of {args.repeats}"
    )
    print(f"{'recipe':12s} {'s/epoch':>8s} {'x standard':>11s} {'expected':>9s}")
    for name in configs:
        t = min(times[name])
        print(f"{name:12s} {t:8.2f} {t / base:11.1f} {expected[name]:8d}x")


if __name__ == "__main__":
    main()
