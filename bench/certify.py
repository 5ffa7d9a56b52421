"""What a certificate costs, relative to a plain forward pass measured in the same run.

IBP: `certify.margin_lower_bounds` over a batch (the centre and the radius through
every layer, the last one elided) against `model(x)` on the same batch; the ratio is
the price of one verified-accuracy pass. Smoothing: `certify.certify` images/s, and
its draws/s against the forward pass's images/s (1.0 would mean sampling costs
nothing beyond the forwards it needs).

    python bench/certify.py [--arch small_cnn] [--n 1000] [--draws 1000] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import torch

from robustkit import certify, data, models, utils


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """The best of `repeats` wall times of fn() (best: least disturbed by load)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--n", type=int, default=1_000, help="test images")
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--certify-images", type=int, default=20)
    parser.add_argument("--draws", type=int, default=1_000, help="n of CERTIFY")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = utils.get_device(args.device)
    utils.seed_everything(0)
    splits = data.load("mnist", n_train=0, n_test=args.n, device=device)
    x, y = splits.x_test, splits.y_test
    model = models.create(args.arch, "mnist").to(device).eval()
    batches = [(x[i : i + args.batch_size], y[i : i + args.batch_size])
               for i in range(0, len(x), args.batch_size)]  # fmt: skip

    def forward():
        with torch.no_grad():
            for xb, _ in batches:
                model(xb)

    def bounds():
        with torch.no_grad():
            for xb, yb in batches:
                certify.margin_lower_bounds(model, xb, yb, eps=0.3)

    forward(), bounds()  # warm-up
    t_forward = timed(forward, device, args.repeats)
    t_bounds = timed(bounds, device, args.repeats)
    xc = x[: args.certify_images]
    n0 = 100
    t_certify = timed(
        lambda: certify.certify(
            model, xc, sigma=0.25, n0=n0, n=args.draws, batch_size=args.batch_size
        ),  # fmt: skip
        device,
        args.repeats,
    )
    forward_rate = len(x) / t_forward
    draws_rate = len(xc) * (n0 + args.draws) / t_certify
    print(f"{args.arch} on {device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}")  # fmt: skip
    print(f"forward pass        {forward_rate:12,.0f} images/s  (reference)")
    print(f"IBP margin bounds   {len(x) / t_bounds:12,.0f} images/s  "
          f"cost {t_bounds / t_forward:.2f} x a forward pass")  # fmt: skip
    ratio = draws_rate / forward_rate
    print(f"certify (n0 {n0}, n {args.draws:,}) {len(xc) / t_certify:8,.1f} images/s  "
          f"its draws at {ratio:.2f} x the forward pass's rate")  # fmt: skip


if __name__ == "__main__":
    main()
