"""Scaling over processes: images/s of PGD-AT training and of the worst-case
evaluation with 1 and N processes under torchrun, as ratios to one process.

Each configuration is launched as `torchrun --standalone --nproc_per_node=N` of this
file's worker (N = 1 runs it plainly, the path without DDP), and all of them run in
the same invocation. On the CPU every process gets `--threads` threads (gloo); on
GPUs each process one GPU (NCCL). The communication share is the time the training's
gradient all-reduces take when run alone (one per batch, of all the gradients), as
a share of the training time: DDP overlaps them with the backward pass, so it bounds
what communication can cost. The ideal ratio is N on N free cores or GPUs.

    python bench/scaling.py [--processes 1 2] [--threads 1] [--images 2048]
                            [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from robustkit import data, distributed, evaluation, recipes, utils, zoo


def worker(args: argparse.Namespace) -> None:
    """One process of a configuration: train, time the all-reduces, evaluate."""
    torch.set_num_threads(args.threads)
    device = distributed.local_device(utils.get_device(args.device))
    shard = distributed.init(device)
    cfg = recipes.config("pgd", n_train=args.images, n_val=0, epochs=1, guard=None,
                         attack_steps=args.steps, batch_size=args.batch)  # fmt: skip
    model = zoo.initial_model(cfg, device)
    metrics = recipes.train(model, cfg, progress=False, shard=shard)
    train_s = metrics["train_seconds"]
    comm_s = 0.0
    if shard is not None:  # the gradients' all-reduce, once per batch, alone
        grads = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(-(-args.images // args.batch)):
            dist.all_reduce(grads)
        comm_s = time.perf_counter() - start
    splits = data.load(
        cfg["dataset"], n_train=0, n_test=args.test_images, device=device
    )
    loader = data.Batches(splits.x_test, splits.y_test, batch_size=100)
    attack_set = evaluation.strong_attacks(
        cfg["eps"], steps=args.steps, n_targets=1, queries=args.queries
    )
    start = time.perf_counter()
    distributed.worst_case(model, loader, attack_set, shard=shard, progress=False)
    eval_s = time.perf_counter() - start
    if shard is None or shard.main:
        rates = dict(train=args.images / train_s, evaluate=args.test_images / eval_s)
        print(json.dumps(rates | {"comm_share": comm_s / train_s}))
    distributed.close()


def launch(processes: int, args: argparse.Namespace) -> dict:
    options = dict(images=args.images, test_images=args.test_images,
                   steps=args.steps, batch=args.batch, queries=args.queries,
                   threads=args.threads, device=args.device)  # fmt: skip
    argv = [__file__, "--worker"]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    if processes > 1:
        argv = ["-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}", *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode:
        sys.exit(f"{processes} processes failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="per process (CPU)")
    parser.add_argument("--images", type=int, default=2048, help="training images")
    parser.add_argument("--test-images", type=int, default=400, help="evaluated images")
    parser.add_argument("--steps", type=int, default=10, help="PGD / APGD steps")
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--queries", type=int, default=100, help="Square queries")
    parser.add_argument("--repeats", type=int, default=2, help="best of")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if 1 not in args.processes:
        args.processes = [1, *args.processes]  # the reference
    runs = {p: [] for p in args.processes}
    for _ in range(args.repeats):  # interleaved, so a busy moment hits all alike
        for p in args.processes:
            runs[p].append(launch(p, args))
    results = {  # the best of the repeats, and the comm share of that training run
        p: max(rs, key=lambda r: r["train"])
        | {"evaluate": max(r["evaluate"] for r in rs)}
        for p, rs in runs.items()
    }
    base = results[1]
    print(f"MNIST small_cnn on {args.device}, {args.threads} thread(s) per process, "
          f"{os.cpu_count()} cores; PGD-{args.steps} training on {args.images} images "
          f"(global batch {args.batch}), worst case (APGD-CE, APGD-T, Square) on "
          f"{args.test_images}; best of {args.repeats}")  # fmt: skip
    print(f"{'processes':>9s} {'train img/s':>12s} {'x 1':>5s} {'comm share':>11s} "
          f"{'eval img/s':>11s} {'x 1':>5s}")  # fmt: skip
    for p, r in results.items():
        print(f"{p:9d} {r['train']:12.1f} {r['train'] / base['train']:5.2f} "
              f"{r['comm_share']:11.1%} {r['evaluate']:11.1f} "
              f"{r['evaluate'] / base['evaluate']:5.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
