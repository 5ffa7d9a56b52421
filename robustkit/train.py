"""Train a zoo model from the command line, into the cache the notebooks load from.

    python -m robustkit.train pgd                              # MNIST, the zoo's config
    python -m robustkit.train pgd --dataset fashion_mnist epochs=5 n_train=20_000
    python -m robustkit.train noise sigma=0.5 --device cuda
    torchrun --nproc_per_node=4 -m robustkit.train pgd --dataset cifar10  # 4 GPUs

NAME is a model of the zoo (`robustkit.zoo.MODELS`); KEY=VALUE pairs override its
config (`robustkit.recipes.DEFAULT_CONFIG`'s keys; values are Python literals:
`5`, `0.1`, `None`, `"sgd"`). The model lands in the same cache entry, with the same
key and checkpoint format, as `zoo.model(NAME, dataset=..., **overrides)` in a
notebook, which then loads it in seconds; a shipped or already cached model is
loaded, not retrained. Every argument is checked before any data is loaded.

Under torchrun every process trains its rows of each global batch of `batch_size`
(DistributedDataParallel, `robustkit.distributed`); the weights are those one
process would train, to float tolerance, and only rank 0 writes the checkpoint and
prints. If a process dies, torchrun stops the others and nothing is cached.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from functools import partial

from robustkit import datasets, distributed, recipes, utils, zoo
from robustkit.distributed import Shard


def parse_overrides(pairs: list[str]) -> dict:
    """KEY=VALUE strings as a dict of Python literals (a bare word stays a string);
    a pair without '=' is a ValueError naming it."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not KEY=VALUE (e.g. epochs=5)")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[key] = text
    return out


def arguments(description: str) -> argparse.ArgumentParser:
    """The arguments `train` and `evaluate` share: a zoo model and its config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("name", help=f"a zoo model: {', '.join(zoo.MODELS)}")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. epochs=5 n_train=20_000"
    )
    parser.add_argument(
        "--dataset", default=datasets.DEFAULT, help=", ".join(datasets.names())
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def checked_config(args: argparse.Namespace) -> dict:
    """The config the arguments name, every value checked (`zoo.config` raises a
    ValueError naming a bad key or value), before any work."""
    if args.dataset not in datasets.names():
        raise ValueError(f"--dataset {args.dataset!r}: use one of {datasets.names()}")
    overrides = parse_overrides(args.overrides)
    if "dataset" in overrides:
        raise ValueError("give the dataset as --dataset, not as dataset=...")
    return zoo.config(args.name, args.dataset, **overrides)


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.splitlines()[0])
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = checked_config(args)
        device = distributed.local_device(utils.get_device(args.device))
        shard = distributed.init(device)
        if shard is not None:
            recipes.check_shardable(cfg, shard)
    except ValueError as err:
        parser.error(str(err))  # exit status 2, the message names the value
    progress = not args.no_progress
    if shard is None:
        train_fn = partial(recipes.train, progress=progress)
        _, metrics = zoo.load_or_train(args.name, cfg, train_fn, device=device)
    else:
        metrics = train_sharded(args.name, cfg, device, shard, progress=progress)
    if shard is None or shard.main:
        summary = {
            "name": args.name,
            "key": zoo.config_key(args.name, cfg),
            "checkpoint": str(zoo.checkpoint_path(args.name, cfg)),
            "test_accuracy": metrics.get("test_accuracy"),
            "train_seconds": metrics.get("train_seconds"),
            "trained_on": metrics.get("device"),
            "processes": 1 if shard is None else shard.world,
            "config": cfg,
        }
        print(json.dumps(summary, indent=1))
    distributed.close()
    return 0


def train_sharded(
    name: str, cfg: dict, device, shard: Shard, *, progress: bool = True
) -> dict:
    """`zoo.load_or_train` under torchrun: rank 0 checks the cache (and its lock)
    and tells the others whether to train; all train; only rank 0 saves. Returns
    the metrics on rank 0, {} on the others."""
    train_fn = partial(recipes.train, progress=progress, shard=shard)
    if not shard.main:
        if not distributed.broadcast(False, shard):  # rank 0 found it cached
            return {}
        train_fn(zoo.initial_model(cfg, device), cfg)  # as load_or_train does
        return {}
    told = []

    def tell_and_train(model, config):
        told.append(distributed.broadcast(True, shard))
        return train_fn(model, config)

    _, metrics = zoo.load_or_train(name, cfg, tell_and_train, device=device)
    if not told:
        distributed.broadcast(False, shard)
    return metrics


if __name__ == "__main__":
    sys.exit(main())
