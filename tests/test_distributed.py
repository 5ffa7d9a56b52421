"""Training and evaluation under torchrun: two gloo processes on this machine give
the weights and the robust accuracy of one process; rows, prefixes and the random
starts in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from robustkit import attacks, distributed, models, recipes, zoo
from robustkit.distributed import Shard

# FGSM-RS / PGD-AT: one epoch of 8 batches, the last one of 3 images (2 + 1: the
# processes' losses must be weighed by their share of the batch).
# SGD, not the zoo's Adam: Adam's first steps divide each gradient by its size and
# so magnify float noise in near-zero components; the comparison is of the mechanism.
SMALL = ["n_train=451", "n_val=200", "batch_size=64", "epochs=1", "attack_steps=3",
         "optimizer='sgd'", "lr=0.05"]  # fmt: skip


def launch(module: str, *args: str, cache: Path, processes: int = 1, **popen):
    """`python -m module` (processes=1) or `torchrun --nproc_per_node=processes -m
    module`, on the CPU, one thread per process, with its own cache."""
    env = {**os.environ, "ROBUSTKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    prefix = [sys.executable]
    if processes > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}"]  # fmt: skip
    argv = [*prefix, "-m", module, *args, "--device", "cpu", "--no-progress"]
    if popen:
        return subprocess.Popen(argv, env=env, text=True, **popen)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def trained(name: str, cache: Path, processes: int) -> tuple[dict, dict]:
    done = launch("robustkit.train", name, *SMALL, cache=cache, processes=processes)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    payload = torch.load(summary["checkpoint"], weights_only=True)
    return summary, payload["state_dict"]


@pytest.mark.parametrize("name", ["fgsm_rs", "pgd"])
def test_two_processes_train_the_weights_of_one(tmp_path, name):
    one, weights_one = trained(name, tmp_path / "one", processes=1)
    two, weights_two = trained(name, tmp_path / "two", processes=2)
    assert two["processes"] == 2 and two["key"] == one["key"]
    assert list(weights_two) == list(weights_one)  # the bare module's keys
    start = zoo.initial_model(one["config"]).state_dict()
    moved = max((weights_one[k] - start[k]).abs().max() for k in start)
    assert moved > 1e-3  # training changed the weights: the comparison is not empty
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=0, atol=1e-6)
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=2e-4)

    # what torchrun wrote, a notebook (zoo.model) and one process load, untrained
    cache = tmp_path / "two"
    env = {"ROBUSTKIT_CACHE": str(cache)}
    code = (
        "from robustkit import zoo; import sys, json\n"
        f"cfg = json.loads({json.dumps(json.dumps(one['config']))})\n"
        "def refuse(model, config): sys.exit('retrained')\n"
        f"net, m = zoo.load_or_train({name!r}, cfg, refuse)\n"
        "print(m['test_accuracy'])"
    )
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == two["test_accuracy"]


def test_two_processes_evaluate_exactly_as_one(tmp_path):
    trained("pgd", tmp_path, processes=1)
    flags = ["--n-test", "150", "--steps", "5", "--queries", "30", "--targets", "2"]
    reports = []
    for processes in (1, 2):
        done = launch("robustkit.evaluate", "pgd", *SMALL, *flags, cache=tmp_path,
                      processes=processes)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        reports.append(json.loads(done.stdout))
    one, two = reports
    assert two["processes"] == 2 and one["n_test"] == two["n_test"] == 150
    for field in ("clean_accuracy", "robust_accuracy", "robust_accuracy_after"):
        assert two[field] == one[field], field


def test_a_killed_process_fails_the_run_and_caches_nothing(tmp_path):
    run = launch("robustkit.train", "pgd", "epochs=200", "n_train=2000",
                 cache=tmp_path, processes=2, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)  # fmt: skip
    rank1 = _wait_for_rank(run.pid, rank=1, timeout=120)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("zoo/*.lock")) and time.monotonic() < deadline:
        time.sleep(0.2)  # rank 0 takes the entry's lock right before training
    time.sleep(3)  # into the training loop
    os.kill(rank1, signal.SIGKILL)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode != 0
    assert "Signal 9 (SIGKILL)" in stderr or "exitcode  : -9" in stderr, stderr[-2000:]
    left = list((tmp_path / "zoo").glob("*")) if (tmp_path / "zoo").exists() else []
    assert not [f for f in left if not f.name.endswith(".lock")], left


def _wait_for_rank(parent: int, *, rank: int, timeout: float) -> int:
    """The pid of torchrun's worker with RANK=rank (found through /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent and f"RANK={rank}".encode() in environ:
                return int(proc.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under torchrun {parent}")


def test_bad_arguments_stop_every_process_naming_the_value(tmp_path):
    done = launch("robustkit.train", "pgd", "epochs=0", cache=tmp_path, processes=2)
    assert done.returncode != 0 and "epochs=0" in done.stderr


# ------------------------------------------------------------------ in-process


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_rows_split_every_batch_like_tensor_split(world):
    for n in range(0, 23):
        rows = [Shard(rank, world).rows(n) for rank in range(world)]
        expected = torch.tensor_split(torch.arange(n), world)
        assert [torch.arange(n)[r].tolist() for r in rows] == [
            e.tolist() for e in expected
        ]


def fake_pgd(model, x, y, *, eps, alpha, steps, random_start=True, init=None):
    """PGD's random start without its steps (whose float rounding depends on the
    batch's size): x + the start it draws, or + init."""
    if init is None:
        init = attacks.random_init(x, eps, "linf") if random_start else 0 * x
    return x + init


def fake_n_fgsm(model, x, y, *, eps, alpha, noise, init=None):
    return x + (attacks.random_init(x, noise * eps, "linf") if init is None else init)


def fake_trades(model, x, y, *, eps, alpha, steps, init=None):
    return x + (0.001 * torch.randn_like(x) if init is None else init)


@pytest.mark.parametrize("name", ["fgsm_rs", "n_fgsm", "pgd", "trades", "noise"])
def test_a_batch_crafted_in_rows_is_the_batch_crafted_whole(name, monkeypatch):
    """Each process draws the random start of the whole batch and keeps its rows,
    so the rows of all processes put together are one process's batch."""
    monkeypatch.setattr(attacks, "pgd", fake_pgd)
    monkeypatch.setattr(attacks, "trades_pgd", fake_trades)
    monkeypatch.setattr(attacks, "n_fgsm", fake_n_fgsm)
    cfg = recipes.config(name, attack_steps=2)
    x, y = torch.rand(11, 1, 28, 28), torch.randint(0, 10, (11,))
    state = torch.get_rng_state()
    attack, _ = recipes.recipe_parts(cfg, steps_per_epoch=4)
    whole = attack(None, x, y)
    parts = []
    for rank in range(3):
        torch.set_rng_state(state)
        attack, _ = recipes.recipe_parts(cfg, steps_per_epoch=4)
        parts.append(attack(None, x, y, rows=Shard(rank, 3).rows(len(x))))
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(whole, x)


@pytest.mark.parametrize("attack", ["pgd", "trades_pgd", "n_fgsm"])
def test_the_attacks_start_from_init_as_from_their_own_draw(attack):
    torch.manual_seed(0)
    model = models.create("small_cnn", "mnist").eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    state = torch.get_rng_state()
    fn = getattr(attacks, attack)
    kwargs = dict(eps=0.3, alpha=0.1) | ({} if attack == "n_fgsm" else dict(steps=2))
    drawn = fn(model, x, y, **kwargs)
    torch.set_rng_state(state)
    init = {
        "pgd": lambda: attacks.random_init(x, 0.3, "linf"),
        "trades_pgd": lambda: 0.001 * torch.randn_like(x),
        "n_fgsm": lambda: attacks.random_init(x, 2 * 0.3, "linf"),  # noise 2
    }[attack]()
    assert torch.equal(fn(model, x, y, **kwargs, init=init), drawn)
    with pytest.raises(ValueError, match=r"init must be a delta shaped like x"):
        fn(model, x, y, **kwargs, init=init[:2])


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner  # the attribute DDP keeps the model in


def test_prefixes_of_ddp_and_compile_are_stripped():
    state = {"module.0.weight": 1, "module._orig_mod.1.bias": 2, "2.module.w": 3,
             "_orig_mod.module.3.x": 4}  # fmt: skip
    assert distributed.bare_state_dict(state) == {
        "0.weight": 1,
        "1.bias": 2,
        "2.module.w": 3,  # a submodule named "module" keeps its name
        "3.x": 4,
    }


def test_a_checkpoint_of_a_wrapped_model_loads_into_the_bare_one(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path))
    cfg = zoo.config("baseline", n_train=10, n_val=0, epochs=1)
    net = zoo.initial_model(cfg)
    path = zoo.checkpoint_path("baseline", cfg)
    path.parent.mkdir(parents=True)
    with monkeypatch.context() as m:  # as written by code that does not strip
        m.setattr(zoo, "bare_state_dict", lambda state: state)
        zoo.save(path, Wrapper(net), "baseline", cfg, {"test_accuracy": 0.5})
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in stored)

    def refuse(model, config):
        raise AssertionError("retrained")

    loaded, _ = zoo.load_or_train("baseline", cfg, refuse)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    zoo.save(path, Wrapper(net), "baseline", cfg, {"test_accuracy": 0.5})
    assert list(torch.load(path, weights_only=True)["state_dict"]) == list(
        net.state_dict()
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(recipe="distillation"), "'distillation' does not run under torchrun"),
        (dict(recipe="grad_align"), "'grad_align' does not run under torchrun"),
        (dict(batch_size=1), r"batch_size \(1 images"),
        (dict(n_train=129, batch_size=64), r"the last batch \(1 images"),
    ],
)
def test_configs_that_cannot_be_split_are_refused(overrides, message):
    cfg = recipes.config(overrides.pop("recipe", "pgd"), **overrides)
    with pytest.raises(ValueError, match=message):
        recipes.check_shardable(cfg, Shard(0, 2))


def test_make_zoo_trains_each_shipment_with_the_command_line(monkeypatch):
    ran, built = [], []
    monkeypatch.setattr("subprocess.run", lambda cmd, check: ran.append(cmd))
    monkeypatch.setattr(zoo, "build", lambda names, **kw: built.append(names))
    monkeypatch.setattr(zoo, "shipped", lambda dataset: [])
    launch = "torchrun --standalone --nproc_per_node=2"
    assert zoo.main(["pgd", "noise", "--launch", launch, "--device", "cpu"]) == 0
    tail = ["--dataset", "mnist", "--device", "cpu"]
    head = [*launch.split(), "-m", "robustkit.train"]
    assert ran == [
        [*head, "pgd", *tail],
        [*head, "noise", "sigma=0.25", *tail],
        [*head, "noise", "sigma=0.5", *tail],
    ]
    assert built == [["pgd", "noise"]]


DIVERGING = """
import torch
from robustkit import distributed
shard = distributed.init(torch.device("cpu"))
torch.manual_seed(shard.rank)  # as if one process had drawn a number the other did not
try:
    distributed.check_same(distributed.rng_fingerprint(), shard, "RNG states")
except RuntimeError as err:
    print(err)
distributed.close()
"""


def test_processes_whose_random_draws_diverge_are_stopped(tmp_path):
    script = tmp_path / "diverge.py"
    script.write_text(DIVERGING)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node=2", str(script)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("the 2 processes diverged: their RNG states differ") == 2
