"""Seeding, device selection, result recording and the project's folders."""

from __future__ import annotations

import json
import math
import os
import platform
import random
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and PyTorch (CPU and every GPU) with `seed`."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_device(name: str = "auto") -> torch.device:
    """Return the torch device for "auto", "cpu", "cuda" (or "cuda:N") or "mps".

    "auto" picks CUDA, then MPS, then the CPU. Asking for a device that is not there
    is an error rather than a silent fallback, so a run never reports CPU numbers as
    GPU numbers.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} requested but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use DEVICE='auto' or 'cpu'"
            )
        return torch.device(name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(
                "device 'mps' requested but Apple's Metal backend is not available; "
                "use DEVICE='auto' or 'cpu'"
            )
        return torch.device("mps")
    raise ValueError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda' or 'mps'")


def cache_dir() -> Path:
    """Folder for trained checkpoints (`ROBUSTKIT_CACHE` overrides `<repo>/.cache`)."""
    return Path(os.environ.get("ROBUSTKIT_CACHE", ROOT / ".cache"))


def record_results(
    results: dict, path: str | os.PathLike = "", *, provenance: dict | None = None
) -> dict:
    """Check `results` is a flat JSON record and write it to `path` (if not empty).

    Values must be numbers, strings, booleans, None or lists of those; NaN and
    infinity are refused because JSON cannot carry them faithfully. `provenance`
    (`parameters.run_info`: parameters, dataset, device, threads, versions) is
    written beside them under that key, so a results file says what made it.

    Returns:
        The same dict, so a notebook cell can end with it and show it.
    """
    if "provenance" in results:
        raise ValueError("results key 'provenance' is reserved for `provenance=`")
    for key, value in results.items():
        if not isinstance(key, str) or not key.isidentifier() or key != key.lower():
            raise ValueError(f"results key {key!r} is not a snake_case identifier")
        for v in value if isinstance(value, list) else [value]:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(f"results[{key!r}] holds {type(v).__name__}, not JSON")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"results[{key!r}] is {v}, which JSON cannot hold")
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {**results, "provenance": provenance} if provenance else results
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return results


def environment(device: torch.device) -> dict:
    """Where a result was computed: device, threads, CPU and versions (results can
    differ in the last digits across CPUs and thread counts)."""
    import robustkit

    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {
        "device": name,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "robustkit": robustkit.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
