"""Several processes under `torchrun`: which rows of a batch are this process's, the
reductions of counts across processes, and the DistributedDataParallel wrapper.

    torchrun --nproc_per_node=2 -m robustkit.train pgd          # 2 GPUs, or 2 CPU
    torchrun --nproc_per_node=2 -m robustkit.evaluate pgd       # processes (gloo)

Every process (rank) holds the whole data set and draws the same global batches in
the same order (the same seed, the same RNG calls); each keeps its rows of every
batch (`Shard.rows`), crafts its adversarial examples on them with the bare module,
and steps the DDP-wrapped one, whose backward pass averages the gradients. Random
draws (random starts, noise) are made for the whole batch and sliced, so N processes
train the weights one process would, to float tolerance, and evaluate the same
examples with the same random numbers. Two exceptions: TRADES, whose first inner
step is the sign of a near-zero gradient, drifts by float rounding, and BatchNorm
on the CPU, which normalizes each process's rows (SyncBatchNorm needs CUDA).
"""

from __future__ import annotations

import datetime
import os
import zlib
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from robustkit import evaluation
from robustkit.progress import bar
from robustkit.types import Attack, Loader


class Shard(NamedTuple):
    """This process's part of every batch: process `rank` of `world`."""

    rank: int
    world: int

    def rows(self, n: int) -> slice:
        """Rows of a batch of n: `torch.tensor_split` order, sizes differing by <= 1."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> Shard | None:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on the CPU) and
    return this process's Shard; None when not launched by torchrun."""
    if not launched():
        return None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device {device.type!r} under torchrun: use --device cpu (gloo) or cuda"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Shard(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, CUDA means this process's GPU (cuda:LOCAL_RANK)."""
    if launched() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def close() -> None:
    """Leave the process group (at the end of a torchrun command)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def total(values: Tensor, shard: Shard | None) -> Tensor:
    """The sum of `values` over all processes (counts, not means: a mean of means
    is wrong when the shards differ in size); `values` itself for one process."""
    if shard is None:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def check_same(value: float, shard: Shard | None, what: str) -> None:
    """A RuntimeError unless every process holds the same `value` (e.g. a
    fingerprint of its RNG state: processes that drew different batches would
    train on overlapping shards, silently)."""
    if shard is None:
        return
    device = _collective_device()
    low = torch.tensor([value], dtype=torch.float64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise RuntimeError(
            f"the {shard.world} processes diverged: their {what} differ "
            f"({low.item()} to {high.item()}); every process must make the same "
            "random draws, in the same order"
        )


def _collective_device() -> str:
    """Where a tensor for a collective must live: NCCL takes CUDA, gloo the CPU."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def broadcast(flag: bool, shard: Shard) -> bool:
    """Rank 0's `flag`, on every process."""
    device = _collective_device()
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def wrap(model: nn.Module, shard: Shard | None) -> nn.Module:
    """The model to step: `model` for one process, else DDP around it (BatchNorm
    made SyncBatchNorm on CUDA, so its statistics are those of the global batch;
    on the CPU, which SyncBatchNorm does not support, each process normalizes with
    its own rows' statistics, as DDP does by default)."""
    if shard is None:
        return model
    device = next(model.parameters()).device
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device])
    return nn.parallel.DistributedDataParallel(model)


def rng_fingerprint() -> float:
    """A number that differs, almost surely, between two torch CPU RNG states."""
    return float(zlib.crc32(torch.get_rng_state().numpy().tobytes()))


def bare(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (attacks and evaluations use it: a DDP
    forward prepares a gradient all-reduce even in eval mode); any other model
    as it is."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def bare_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` as the bare module's: the leading `module.` that DDP adds and every
    `_orig_mod.` that torch.compile adds stripped from the keys."""
    out = {}
    for key, value in state.items():
        key = key.replace("_orig_mod.", "")
        while key.startswith("module."):
            key = key.removeprefix("module.")
        out[key] = value
    return out


def worst_case(
    model: nn.Module,
    loader: Loader,
    attack_set: dict[str, Attack],
    *,
    shard: Shard | None,
    seed: int = 0,
    progress: bool = True,
) -> evaluation.WorstCase:
    """`evaluation.worst_case`, per example, batch by batch, with torch's RNG seeded
    by (seed, batch index) before each batch, so the numbers do not depend on
    which process runs a batch. Under torchrun process r takes batches r, r + W,
    r + 2W, ...; the per-example masks and counts are summed over the processes,
    so N processes give exactly the numbers of one."""
    batches = list(loader)
    offsets = [0]
    for _, y in batches:
        offsets.append(offsets[-1] + len(y))
    if not offsets[-1]:
        raise ValueError(evaluation.NO_EXAMPLES)
    device = batches[0][0].device
    rank, world = (0, 1) if shard is None else (shard.rank, shard.world)
    robust = torch.zeros(offsets[-1], dtype=torch.int64, device=device)
    counts = torch.zeros(len(attack_set) + 1, dtype=torch.int64, device=device)
    mine = range(rank, len(batches), world)
    for i in bar(mine, desc="worst case", disable=not progress, unit="batch"):
        torch.manual_seed(seed * 1_000_003 + i)
        x, y = batches[i]
        part = evaluation.worst_case(model, [(x, y)], attack_set, progress=False)
        robust[offsets[i] : offsets[i + 1]] = part.robust.long()
        fractions = [part.clean_accuracy, *part.per_attack.values()]
        counts += torch.tensor([round(f * len(y)) for f in fractions], device=device)
    robust, counts = total(robust, shard), total(counts, shard).tolist()
    n = offsets[-1]
    return evaluation.WorstCase(
        counts[0] / n,
        int(robust.sum()) / n,
        {name: c / n for name, c in zip(attack_set, counts[1:])},
        robust.bool(),
    )
