"""Training throughput, and the share of time spent outside forward + backward.

Runs `training.run_epoch` on MNIST and, in the same process, a bare loop over the
same batches doing only forward, backward and the optimizer step (the reference).
Overhead share = 1 - reference time / run_epoch time; the target is under 10% on CPU.

    python bench/train_throughput.py [--arch small_cnn] [--n 20000] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from robustkit import data, models, training, utils


def bare_epoch(model, batches, opt):
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--n", type=int, default=20_000, help="training images")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = utils.get_device(args.device)
    utils.seed_everything(0)
    splits = data.load("mnist", n_train=args.n, n_test=0, device=device)
    model = models.create(args.arch, "mnist").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = data.Batches(
        splits.x_train, splits.y_train, batch_size=args.batch_size, shuffle=True
    )
    batches = list(
        data.Batches(splits.x_train, splits.y_train, batch_size=args.batch_size)
    )
    bare_epoch(model, batches[:5], opt)  # warm-up
    t_bare, t_kit = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both
        sync(device)
        start = time.perf_counter()
        bare_epoch(model, batches, opt)
        sync(device)
        t_bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        training.run_epoch(model, loader, opt=opt, progress=False)
        sync(device)
        t_kit.append(time.perf_counter() - start)
    bare, kit = min(t_bare), min(t_kit)
    print(
        f"device {device}, {args.arch}, {args.n} images, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"reference (forward+backward+step only): {args.n / bare:10.0f} images/s")
    print(f"training.run_epoch:                     {args.n / kit:10.0f} images/s")
    print(
        f"share of time outside forward/backward:  {1 - bare / kit:10.1%}  "
        "(target < 10%)"
    )


if __name__ == "__main__":
    main()
