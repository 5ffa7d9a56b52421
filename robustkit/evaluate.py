"""The worst-case evaluation of a shipped or cached zoo model, from the command line.

    python -m robustkit.evaluate pgd                 # MNIST, first 1,000 images
    python -m robustkit.evaluate pgd --dataset fashion_mnist --n-test 10000
    python -m robustkit.evaluate ibp --certify       # and its IBP-verified share
    python -m robustkit.evaluate pgd --preset autoattack --n-test 10000  # on a GPU

NAME and KEY=VALUE name the model as for `python -m robustkit.train`, which must have
trained it (or it ships). The evaluation is `evaluation.worst_case` over APGD-CE,
APGD-T and Square (`evaluation.strong_attacks`, --preset cpu or autoattack) at
--eps (default: the dataset's budget), per example, on the first --n-test test
images; the result prints as JSON and, with --out, is written there. torch's RNG
is seeded per batch from --seed (`distributed.worst_case`), so under `torchrun
--nproc_per_node=N`, where each process attacks every N-th batch, the result is
exactly that of one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from robustkit import (
    certify,
    data,
    datasets,
    distributed,
    evaluation,
    precision,
    utils,
    zoo,
)
from robustkit.train import arguments, checked_config


class NotTrainedError(RuntimeError):
    """The model asked for is neither shipped nor in the cache."""


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=1_000, help="test images")
    parser.add_argument("--eps", type=float, help="L-inf budget (default: dataset's)")
    parser.add_argument(
        "--preset", default="cpu", choices=sorted(evaluation.PRESETS),
        help="the attacks' settings: cpu (3 targets, 1,000 queries) or autoattack "
        "(9 targets, 5,000 queries); the three flags below override it",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, help="APGD iterations (100)")
    parser.add_argument("--targets", type=int, help="APGD-T targets")
    parser.add_argument("--queries", type=int, help="Square queries")
    parser.add_argument(
        "--precision", default="float32", choices=sorted(precision.PRECISIONS),
        help="the model's precision under attack (bf16: torch.autocast, float32 "
        "logits; robustkit.precision)",
    )  # fmt: skip
    parser.add_argument("--certify", action="store_true", help="IBP-verified share too")
    parser.add_argument("--seed", type=int, default=0, help="the attacks' RNG seed")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = checked_config(args)
        device = distributed.local_device(utils.get_device(args.device))
        ds = datasets.get(args.dataset)
        eps = ds.eps if args.eps is None else args.eps
        settings = evaluation.attack_settings(
            args.preset, steps=args.steps, n_targets=args.targets, queries=args.queries
        )
        _check(args, eps, ds, settings)
        shard = distributed.init(device)
    except ValueError as err:
        parser.error(str(err))
    main_process = shard is None or shard.main
    command = " ".join(["python -m robustkit.train", args.name, *args.overrides,
                        "--dataset", args.dataset])  # fmt: skip

    def not_trained(model, config):
        raise NotTrainedError(
            f"zoo model {args.name!r} with this config is neither shipped nor cached "
            f"({zoo.checkpoint_path(args.name, cfg)}): train it first with `{command}`"
        )

    try:
        net, _ = zoo.load_or_train(args.name, cfg, not_trained, device=device)
    except NotTrainedError as err:
        if main_process:
            print(f"error: {err}", file=sys.stderr)
        distributed.close()
        return 1
    splits = data.load(args.dataset, n_train=0, n_test=args.n_test, device=device)
    loader = data.Batches(splits.x_test, splits.y_test, batch_size=500)
    attack_set = evaluation.strong_attacks(eps, **settings)
    progress = main_process and not args.no_progress
    attacked = precision.autocast(net, args.precision)
    result = distributed.worst_case(
        attacked, loader, attack_set, shard=shard, seed=args.seed, progress=progress
    )
    report = {
        "name": args.name,
        "key": zoo.config_key(args.name, cfg),
        "dataset": args.dataset,
        "eps": eps,
        "n_test": len(splits.y_test),
        "preset": args.preset,
        "precision": args.precision,
        "attacks": settings,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "robust_accuracy_after": result.per_attack,
        "processes": 1 if shard is None else shard.world,
        **utils.environment(device),
    }
    if args.certify:
        with torch.no_grad():
            report["verified_accuracy"] = certify.verified_accuracy(
                net, loader, eps=eps
            )
    distributed.close()
    if not main_process:
        return 0
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


def _check(args, eps: float, ds: datasets.Dataset, settings: dict) -> None:
    """Every number of the evaluation, before any model is loaded."""
    limit = ds.splits[1]
    if not 1 <= args.n_test <= limit:
        raise ValueError(f"--n-test {args.n_test}: use 1 to {limit:,} ({ds.title})")
    if not 0 < eps <= 1:
        raise ValueError(f"--eps {eps}: an L-inf budget in (0, 1] (pixel units)")
    for flag, key in (("--steps", "steps"), ("--queries", "queries")):
        if settings[key] < 1:
            raise ValueError(f"{flag} {settings[key]}: use an int >= 1")
    if not 1 <= settings["n_targets"] <= ds.n_classes - 1:
        raise ValueError(
            f"--targets {settings['n_targets']}: use 1 to {ds.n_classes - 1}"
        )


if __name__ == "__main__":
    sys.exit(main())
