"""Evaluations kept with the model they measured: a cache of worst-case results.

An evaluation of a fixed model is a pure function of the model's weights, the
images, the attacks' configuration, the seed and the code, so its result can be
kept and shown again instead of recomputed (minutes on a CPU for a robust model).
`worst_case` looks up an entry keyed by exactly those, computes it on a miss
(seeded, with the caller's RNG state restored, so a hit and a miss leave the rest
of a notebook with the same random numbers) and writes it to the cache
(`<cache>/evaluations/`). The evaluations of the shipped models ship in
`data/zoo/evaluations/` (`python -m robustkit.evalcache --ship` copies them there
from the cache). Every entry says where and when it was computed; `reevaluate=True`
computes it again. A corrupt entry is reported with a warning and recomputed.

    result, source = evalcache.worst_case(model, loader, attack_set)
    str(source)  # "computed on cpu (AMD EPYC 7B13), 2026-12-01 23:40 UTC, in 5.2 min"
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from filelock import FileLock
from torch import nn

import robustkit
from robustkit import evaluation, zoo
from robustkit.distributed import bare_state_dict
from robustkit.types import Attack, Loader
from robustkit.utils import cache_dir, environment, seed_everything

SHIPPED_DIR = zoo.SHIPPED_DIR / "evaluations"
FORMAT = 1  # bump when an entry's layout changes


class Source(NamedTuple):
    """Where a result came from: `str()` is the line a notebook shows."""

    device: str  # as utils.environment names it, e.g. "cpu" or "cuda (NVIDIA H200)"
    cpu: str
    date: str  # ISO 8601, UTC
    seconds: float  # how long the evaluation took where it ran
    where: str  # "computed now", "the cache" or "shipped"

    def __str__(self) -> str:
        when = self.date.replace("T", " ")[:16] + " UTC"
        device = f"{self.device} ({self.cpu})" if self.device == "cpu" else self.device
        line = f"computed on {device}, {when}, in {_duration(self.seconds)}"
        if self.where != "computed now":
            line += f"; from {self.where}: REEVALUATE=True reruns it"
        return line


_used: dict[str, Source] = {}  # the kept results this process used, for `report`


def worst_case(
    model: nn.Module,
    loader: Loader,
    attack_set: dict[str, Attack],
    *,
    independent: bool = False,
    seed: int = 0,
    reevaluate: bool = False,
    progress: bool = True,
) -> tuple[evaluation.WorstCase, Source]:
    """`evaluation.worst_case(model, loader, attack_set, independent=...)` under
    `seed`, kept.

    Args:
        model: An nn.Module (its class, structure and weights join the key).
        loader: Deterministic batches (their bytes and sizes join the key).
        attack_set: Attacks that `describe` can name (functools.partial of
            library functions, as `evaluation.strong_attacks` builds them).
        seed: The evaluation runs under `utils.seed_everything(seed)`; the
            caller's RNG state is restored afterwards, hit or miss.
        reevaluate: Compute even if an entry exists, and replace it.
        progress: Show the evaluation's progress bar (on a miss).

    Returns:
        (the WorstCase result, its Source). `robust` lies on the first batch's device.
    """
    fields, device = key_fields(model, loader, attack_set, seed, independent)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "evaluations" / f"{key}.json"
    existed = path.exists()  # and was corrupt, if it is still there below
    if not reevaluate:
        for candidate, where in (
            (path, "the cache"),
            (SHIPPED_DIR / path.name, "shipped"),
        ):
            if candidate.exists():
                found = _read(candidate, key, device, where)
                if found is not None:
                    _used[key] = found[1]
                    return found
    problem = zoo.unwritable(path.parent)
    if problem:
        warnings.warn(
            f"the evaluation cache {path.parent} cannot be written ({problem}): the "
            "result is computed but not kept; set ROBUSTKIT_CACHE to a writable folder",
            stacklevel=2,
        )
    lock = contextlib.nullcontext() if problem else FileLock(f"{path}.lock")
    with lock:  # a second process asking for the same entry waits, then reads it
        if path.exists() and not existed and not reevaluate:  # written meanwhile
            found = _read(path, key, device, "the cache")
            if found is not None:
                _used[key] = found[1]
                return found
        start = time.perf_counter()
        with zoo.restored_rng(device):
            seed_everything(seed)
            result = evaluation.worst_case(
                model, loader, attack_set, independent=independent, progress=progress
            )
        env = environment(device)
        source = Source(env["device"], env["cpu"], env["date"],
                        time.perf_counter() - start, "computed now")  # fmt: skip
        if not problem:
            _write(path, key, fields, result, source)
    _used[key] = source
    return result, source


def robust_accuracy(
    model: nn.Module,
    loader: Loader,
    attack: Attack,
    *,
    seed: int = 0,
    reevaluate: bool = False,
    progress: bool = True,
) -> float:
    """`evaluation.robust_accuracy`, kept: `worst_case` of the one attack."""
    result, _ = worst_case(model, loader, {"attack": attack}, seed=seed,
                           reevaluate=reevaluate, progress=progress)  # fmt: skip
    return result.robust_accuracy


def report() -> str:
    """Where this process's kept results came from, in one line per origin, e.g.
    "12 from shipped, computed on cpu (...), 2026-12-01, 8.1 min in all"."""
    lines = []
    for where in ("shipped", "the cache", "computed now"):
        used = [s for s in _used.values() if s.where == where]
        if not used:
            continue
        devices = sorted({str(s).split(", ")[0][len("computed on ") :] for s in used})
        dates = sorted(s.date[:10] for s in used)
        span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        seconds = sum(s.seconds for s in used)
        lines.append(
            f"{len(used)} evaluation{'s' * (len(used) > 1)} "
            + ("computed now" if where == "computed now" else f"from {where}")
            + f": computed on {' and '.join(devices)}, {span}, in "
            f"{_duration(seconds)} in all"
        )
    if any(s.where != "computed now" for s in _used.values()):
        lines.append("REEVALUATE=True computes them again")
    return "\n".join(lines) or "no kept evaluation used yet"


def curve(
    model: nn.Module,
    loader: Loader,
    make_attack: Callable[[float], Attack],
    eps_values: Sequence[float],
    *,
    seed: int = 0,
    reevaluate: bool = False,
) -> tuple[list[float], Source]:
    """`evaluation.robust_accuracy_curve`, each eps > 0 a kept `worst_case` of
    the one attack make_attack(eps). Returns the accuracies and the Source of the
    point that took longest (all of them, when a notebook ran them, ran here)."""
    points, sources = [], []
    for eps in eps_values:
        if eps == 0:  # the clean accuracy, by definition: cheap, never kept
            points.append(evaluation.accuracy(model, loader))
            continue
        attack_set = {"attack": make_attack(eps)}
        result, source = worst_case(
            model, loader, attack_set, seed=seed, reevaluate=reevaluate, progress=False
        )
        points.append(result.robust_accuracy)
        sources.append(source)
    if not sources:  # nothing kept, nothing to say where it came from
        raise ValueError(f"eps_values {list(eps_values)} has no eps > 0 to attack at")
    slowest = max(sources, key=lambda s: s.seconds)
    total = sum(s.seconds for s in sources)
    return points, slowest._replace(seconds=total)


def key_fields(
    model: nn.Module,
    loader: Loader,
    attack_set: dict[str, Attack],
    seed: int,
    independent: bool = False,
) -> tuple[dict, torch.device]:
    """What an evaluation's key is made of (all of it JSON), and the device of the
    loader's batches. An empty loader is a ValueError, as in `evaluation`."""
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"only an nn.Module can be kept (its weights are the key), got "
            f"{type(model).__name__}: call evaluation.worst_case instead"
        )
    if getattr(loader, "shuffle", False):
        raise ValueError(
            "the loader is shuffled, so its order (which the seeded attacks see) is "
            "not the order hashed: pass data.Batches(..., shuffle=False)"
        )
    images, device = hashlib.sha256(), None
    for x, y in loader:
        device = device or x.device
        for t in (x, y):
            t = t.detach().cpu().contiguous()
            images.update(f"{t.dtype}:{tuple(t.shape)};".encode())
            images.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if device is None:
        raise ValueError(evaluation.NO_EXAMPLES)
    fields = {
        "model": describe(model),  # classes, attributes, weights, mode
        "images": images.hexdigest(),
        "attacks": {name: describe(attack) for name, attack in attack_set.items()},
        "seed": seed,
        "independent": independent,
        # edited attacks or evaluation: a new result, never the shipped one
        "code": "released" if zoo.code_hash() == zoo.CODE_HASH else zoo.code_hash(),
        "version": robustkit.__version__,
        "format": FORMAT,
    }
    return fields, device


def describe(value: object) -> object:
    """A JSON description of an attack configuration: a functools.partial as its
    function and arguments, a module-level function by its qualified name, a
    module by its submodules' classes and attributes, its weights and its mode,
    plain values as they are.
    Anything else (a lambda, a closure, a tensor) cannot name its configuration
    faithfully and is a ValueError."""
    if isinstance(value, functools.partial):
        return {
            "function": describe(value.func),
            "args": [describe(v) for v in value.args],
            "keywords": {k: describe(v) for k, v in sorted(value.keywords.items())},
        }
    if isinstance(value, nn.Module):  # the model, a surrogate, a wrapped model
        return {
            "modules": {
                name or "(top)": {
                    "class": describe(type(module)),
                    # plain attributes too: Temperature's T is no weight
                    **{
                        k: _attribute(v)
                        for k, v in sorted(vars(module).items())
                        if not k.startswith("_") and k != "training"
                    },
                }  # fmt: skip
                for name, module in value.named_modules()
            },
            "weights": zoo.weights_sha256(value.state_dict()),
            "training_mode": value.training,
        }
    if callable(value) and hasattr(value, "__qualname__"):
        name = f"{value.__module__}.{value.__qualname__}"
        if "<" not in name:  # "<lambda>", "<locals>": not the same on the next run
            return name
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    raise ValueError(
        f"cannot key an evaluation on {value!r}: build attacks as functools.partial "
        "of module-level functions (e.g. partial(attacks.pgd, eps=0.3, ...)), or "
        "call evaluation.worst_case, which keeps nothing"
    )


def _attribute(value: object) -> object:
    """A module's attribute as `describe` names it, or its repr (a repr that
    changes from run to run only misses the cache; it never hits a wrong entry)."""
    try:
        return describe(value)
    except ValueError:
        return repr(value)


def _read(path: Path, key: str, device: torch.device, where: str):
    """The entry at `path` as (WorstCase, Source), or None (with a warning) if it
    is corrupt or holds another key."""
    try:
        entry = json.loads(path.read_text())
        if (entry["format"], entry["key"]) != (FORMAT, key):
            raise ValueError(f"it holds key {entry['key']!r}, not {key!r}")
        robust = torch.tensor([c == "1" for c in entry["robust"]], device=device)
        result = evaluation.WorstCase(
            float(entry["clean_accuracy"]),
            float(entry["robust_accuracy"]),
            {k: float(v) for k, v in entry["per_attack"].items()},
            robust,
        )
        if int(robust.sum()) / max(len(robust), 1) != result.robust_accuracy:
            raise ValueError("its robust mask does not give its robust accuracy")
        s = entry["source"]
        source = Source(s["device"], s["cpu"], s["date"], float(s["seconds"]), where)
    except (OSError, ValueError, KeyError, TypeError) as err:
        restore = " (restore it with `git checkout -- data/zoo`)"
        warnings.warn(
            f"evaluation {path} is corrupt ({type(err).__name__}: {err}); "
            f"evaluating again{restore if where == 'shipped' else ''}",
            stacklevel=3,
        )
        return None
    return result, source


def _write(path: Path, key: str, fields: dict, result, source: Source) -> None:
    """Write an entry atomically; a failure to write loses only the copy."""
    entry = {
        "format": FORMAT,
        "key": key,
        "fields": fields,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "per_attack": result.per_attack,
        "robust": "".join("1" if r else "0" for r in result.robust.tolist()),
        "source": source._asdict(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(entry, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        warnings.warn(f"could not keep the evaluation in {path} ({err})", stacklevel=3)
    finally:
        tmp.unlink(missing_ok=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# The kit's wrappers keep the model they wrap as `.model` (defenses.Temperature,
# InputTransform, EOT; certify.Noisy): their weights are its weights under these.
WRAPPED = ("", "model.", "model.model.")


def ship(*, dry_run: bool = False) -> list[Path]:
    """Copy to data/zoo/evaluations/ every cached entry made with the released code
    of a shipped model, or of one of the kit's wrappers around one (WRAPPED), and
    return what was (or would be) copied."""
    shipped = set()
    for entry in zoo.shipped() + zoo.notebook_models():
        path = zoo.SHIPPED_DIR / entry["file"]
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = bare_state_dict(payload["state_dict"])
        for prefix in WRAPPED:
            shipped.add(zoo.weights_sha256({prefix + k: v for k, v in state.items()}))
    if zoo.code_hash() != zoo.CODE_HASH:
        raise RuntimeError(
            f"the code is not the released one (hash {zoo.code_hash()}, released "
            f"{zoo.CODE_HASH}): its evaluations would never be found; see zoo.CODE_HASH"
        )
    copied = []
    for path in sorted((cache_dir() / "evaluations").glob("*.json")):
        try:
            fields = json.loads(path.read_text())["fields"]
        except (OSError, ValueError, KeyError) as err:
            warnings.warn(f"skipping {path} ({err})", stacklevel=2)
            continue
        if fields["model"]["weights"] in shipped and fields["code"] == "released":
            copied.append(SHIPPED_DIR / path.name)
            if not dry_run:
                SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, SHIPPED_DIR / path.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the shipped models' evaluations")
    parser.add_argument("--ship", action="store_true",
                        help="copy the cached evaluations of shipped models to "
                        f"{SHIPPED_DIR.relative_to(zoo.ROOT)}/")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="only list them")
    args = parser.parse_args(argv)
    if not args.ship:
        parser.error("nothing to do: pass --ship (after `make run`)")
    for path in ship(dry_run=args.dry_run):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
