"""The evaluation cache: a hit is the miss's result, keyed on everything it
depends on, never stale, never lost (robustkit.evalcache)."""

from __future__ import annotations

import hashlib
import json
import re
from functools import partial

import pytest
import torch

import robustkit
from robustkit import attacks, data, defenses, evalcache, evaluation, utils

PGD = partial(attacks.pgd, eps=0.1, alpha=0.03, steps=5)  # random start: seeded


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(evalcache, "SHIPPED_DIR", tmp_path / "shipped")
    return tmp_path / "cache" / "evaluations"


@pytest.fixture
def setup(blobs, mlp):
    x, y = blobs
    return mlp.eval(), data.Batches(x[:120], y[:120], batch_size=50)


def _same(a, b):
    assert a.clean_accuracy == b.clean_accuracy
    assert a.robust_accuracy == b.robust_accuracy and a.per_attack == b.per_attack
    assert torch.equal(a.robust, b.robust)


def test_a_miss_is_worst_case_under_the_seed_and_a_hit_returns_it(cache, setup):
    model, loader = setup
    attack_set = {"PGD": PGD, "FGSM": partial(attacks.fgsm, eps=0.1)}
    utils.seed_everything(3)
    expected = evaluation.worst_case(model, loader, attack_set, progress=False)
    first, source = evalcache.worst_case(model, loader, attack_set, seed=3)
    _same(first, expected)
    assert source.where == "computed now" and "REEVALUATE" not in str(source)
    assert len(list(cache.glob("*.json"))) == 1
    hit, source = evalcache.worst_case(model, loader, attack_set, seed=3)
    _same(hit, expected)
    assert source.where == "the cache" and str(source).startswith("computed on cpu")
    assert str(source).endswith("from the cache: REEVALUATE=True reruns it")


def test_a_hit_computes_nothing_and_leaves_the_rng_as_a_miss_does(
    cache, setup, monkeypatch
):
    model, loader = setup
    torch.manual_seed(11)
    evalcache.worst_case(model, loader, {"PGD": PGD})
    after_miss = torch.rand(3)

    def fail(*args, **kwargs):
        raise AssertionError("a hit must not evaluate")

    monkeypatch.setattr(evaluation, "worst_case", fail)
    torch.manual_seed(11)
    evalcache.worst_case(model, loader, {"PGD": PGD})
    assert torch.equal(torch.rand(3), after_miss)


@pytest.mark.parametrize(
    "change",
    [
        "weights",
        "images",
        "batch size",
        "attack keyword",
        "attack name",
        "loss",
        "seed",
        "train mode",
        "code",
        "temperature",
    ],  # fmt: skip
)
def test_each_part_of_the_key_changes_it(setup, change, monkeypatch):
    model, loader = setup
    if change == "temperature":  # a plain attribute, not a weight
        model = defenses.Temperature(model, 100.0)
    attack_set, seed = {"PGD": PGD}, 0
    before = evalcache.key_fields(model, loader, attack_set, seed)[0]
    assert evalcache.key_fields(model, loader, {"PGD": partial(PGD)}, 0)[0] == before
    if change == "weights":
        with torch.no_grad():
            model[1].bias[0] += 1e-6
    elif change == "images":
        x, y = loader.x.clone(), loader.y
        x[7, 0, 0, 0] = 1 - x[7, 0, 0, 0]
        loader = data.Batches(x, y, batch_size=50)
    elif change == "batch size":  # the seeded draws fall on other images
        loader = data.Batches(loader.x, loader.y, batch_size=60)
    elif change == "attack keyword":
        attack_set = {"PGD": partial(PGD, steps=6)}
    elif change == "attack name":
        attack_set = {"pgd": PGD}
    elif change == "loss":
        attack_set = {"PGD": partial(PGD, loss_fn=attacks.margin)}
    elif change == "seed":
        seed = 1
    elif change == "train mode":
        model.train()
    elif change == "temperature":
        model = defenses.Temperature(model.model, 1e-3)
    elif change == "code":
        monkeypatch.setattr(evalcache.zoo, "code_hash", lambda: "edited")
    assert evalcache.key_fields(model, loader, attack_set, seed)[0] != before


def test_reevaluate_computes_again_and_replaces_the_entry(cache, setup):
    model, loader = setup
    evalcache.worst_case(model, loader, {"PGD": PGD})
    (path,) = cache.glob("*.json")
    first = json.loads(path.read_text())["source"]["date"]
    entry = json.loads(path.read_text())
    entry["source"]["date"] = "2000-01-01T00:00:00+00:00"
    path.write_text(json.dumps(entry))
    _, source = evalcache.worst_case(model, loader, {"PGD": PGD}, reevaluate=True)
    assert source.where == "computed now"
    assert json.loads(path.read_text())["source"]["date"] >= first


@pytest.mark.parametrize(
    "corrupt",
    ["not json", "truncated", "another key", "mask disagrees", "no source"],
)
def test_a_corrupt_entry_is_reported_and_computed_again(cache, setup, corrupt):
    model, loader = setup
    expected, _ = evalcache.worst_case(model, loader, {"PGD": PGD})
    (path,) = cache.glob("*.json")
    text = path.read_text()
    entry = json.loads(text)
    if corrupt == "not json":
        path.write_text("{" + text[:40])
    elif corrupt == "truncated":
        path.write_text("")
    elif corrupt == "another key":
        path.write_text(json.dumps({**entry, "key": "0" * 16}))
    elif corrupt == "mask disagrees":
        path.write_text(json.dumps({**entry, "robust": "1" * len(entry["robust"])}))
    elif corrupt == "no source":
        path.write_text(json.dumps({k: v for k, v in entry.items() if k != "source"}))
    with pytest.warns(UserWarning) as warned:
        result, source = evalcache.worst_case(model, loader, {"PGD": PGD})
    (warning,) = warned  # once, naming the file
    assert re.search(f"{path.name} is corrupt.*evaluating again", str(warning.message))
    _same(result, expected)
    assert source.where == "computed now"
    assert json.loads(path.read_text()) == entry | {"source": json.loads(
        path.read_text())["source"]}  # fmt: skip


def test_a_shipped_entry_is_found_after_the_cache(cache, setup, tmp_path):
    model, loader = setup
    expected, _ = evalcache.worst_case(model, loader, {"PGD": PGD})
    (path,) = cache.glob("*.json")
    evalcache.SHIPPED_DIR.mkdir()
    path.rename(evalcache.SHIPPED_DIR / path.name)
    result, source = evalcache.worst_case(model, loader, {"PGD": PGD})
    _same(result, expected)
    assert source.where == "shipped" and "from shipped: REEVALUATE" in str(source)
    assert not path.exists()  # a shipped hit is not copied into the cache


def test_an_unwritable_cache_warns_and_returns_the_result(setup, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(blocker / "cache"))
    model, loader = setup
    with pytest.warns(UserWarning, match="a-file/cache/evaluations cannot be written"):
        result, source = evalcache.worst_case(model, loader, {"PGD": PGD})
    assert source.where == "computed now" and 0 <= result.robust_accuracy <= 1


@pytest.mark.parametrize(
    "attack, match",
    [
        (lambda m, x, y: x, "cannot key an evaluation on <function"),
        (partial(PGD, init=torch.zeros(1)), "cannot key an evaluation on tensor"),
    ],
)
def test_an_attack_that_cannot_name_its_configuration_is_refused(
    cache, setup, attack, match
):
    model, loader = setup
    with pytest.raises(ValueError, match=match):
        evalcache.worst_case(model, loader, {"a": attack})
    assert not cache.exists() or not list(cache.glob("*.json"))


def test_a_function_model_an_empty_or_a_shuffled_loader_is_refused(cache, setup):
    model, loader = setup
    with pytest.raises(ValueError, match="only an nn.Module can be kept"):
        evalcache.worst_case(lambda x: model(x), loader, {"PGD": PGD})
    with pytest.raises(ValueError, match="no examples"):
        evalcache.worst_case(model, [], {"PGD": PGD})
    shuffled = data.Batches(loader.x, loader.y, batch_size=50, shuffle=True)
    with pytest.raises(ValueError, match="shuffled.*shuffle=False"):
        evalcache.worst_case(model, shuffled, {"PGD": PGD})


def test_a_curve_is_kept_point_by_point_and_equals_the_uncached_one(cache, setup):
    model, loader = setup

    def make(eps):  # no random start: the same numbers seeded or not
        return partial(attacks.pgd, eps=eps, alpha=eps / 4, steps=5, random_start=False)

    eps_values = [0.0, 0.05, 0.1]
    expected = evaluation.robust_accuracy_curve(model, loader, make, eps_values)
    points, source = evalcache.curve(model, loader, make, eps_values)
    assert points == expected and source.where == "computed now"
    assert len(list(cache.glob("*.json"))) == 2  # eps 0 is the clean accuracy
    again, source = evalcache.curve(model, loader, make, eps_values)
    assert again == expected and source.where == "the cache"


def test_every_shipped_evaluation_is_valid_and_of_the_released_code():
    paths = sorted(evalcache.SHIPPED_DIR.glob("*.json"))
    assert paths, "no shipped evaluations: see robustkit.evalcache"
    for path in paths:
        entry = json.loads(path.read_text())
        fields = json.dumps(entry["fields"], sort_keys=True).encode()
        assert entry["key"] == path.stem == hashlib.sha256(fields).hexdigest()[:16]
        assert entry["fields"]["code"] == "released", path.name
        assert entry["fields"]["version"] == robustkit.__version__, path.name
        assert entry["robust"].count("1") / len(entry["robust"]) == pytest.approx(
            entry["robust_accuracy"], abs=1e-12
        )


def test_robust_accuracy_a_surrogate_in_the_attack_and_the_report(
    cache, setup, monkeypatch
):
    model, loader = setup
    monkeypatch.setattr(evalcache, "_used", {})
    assert evalcache.report() == "no kept evaluation used yet"
    surrogate = torch.nn.Sequential(*[torch.nn.Flatten(), torch.nn.Linear(64, 10)])
    transfer = partial(attacks.transfer, surrogate=surrogate.eval(), attack=PGD)
    utils.seed_everything(0)
    expected = evaluation.robust_accuracy(model, loader, PGD, progress=False)
    assert evalcache.robust_accuracy(model, loader, PGD) == expected
    evalcache.robust_accuracy(model, loader, transfer)
    assert evalcache.report().startswith("2 evaluations computed now: computed on cpu")
    with torch.no_grad():
        surrogate[1].bias[0] += 1  # another surrogate: another evaluation
    evalcache.robust_accuracy(model, loader, transfer)
    assert len(list(cache.glob("*.json"))) == 3
    evalcache.robust_accuracy(model, loader, PGD)
    lines = evalcache.report().splitlines()
    assert lines[0].startswith("1 evaluation from the cache: computed on cpu")
    assert lines[1].startswith("2 evaluations computed now")
    assert lines[2] == "REEVALUATE=True computes them again"


def test_ship_copies_the_cached_evaluations_of_shipped_weights_only(
    cache, setup, monkeypatch, tmp_path
):
    model, loader = setup
    shipped_dir = tmp_path / "zoo"
    shipped_dir.mkdir()
    torch.save({"state_dict": model.state_dict()}, shipped_dir / "m.pt")
    monkeypatch.setattr(evalcache.zoo, "SHIPPED_DIR", shipped_dir)
    monkeypatch.setattr(evalcache.zoo, "shipped", lambda: [{"file": "m.pt"}])
    monkeypatch.setattr(evalcache.zoo, "notebook_models", lambda: [])

    def evaluate(net):  # the entry it writes
        before = set(cache.glob("*.json"))
        evalcache.worst_case(net, loader, {"PGD": PGD})
        (new,) = set(cache.glob("*.json")) - before
        return evalcache.SHIPPED_DIR / new.name

    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    expected = sorted([
        evaluate(model),  # the shipped weights
        evaluate(defenses.EOT(defenses.Temperature(model, 10.0), samples=1).eval()),
    ])  # fmt: skip
    evaluate(other)  # weights not shipped
    evaluate(defenses.Temperature(other, 10.0))
    assert sorted(evalcache.ship(dry_run=True)) == expected
    assert not evalcache.SHIPPED_DIR.exists()
    evalcache.ship()
    assert sorted(evalcache.SHIPPED_DIR.iterdir()) == expected
    monkeypatch.setattr(evalcache.zoo, "code_hash", lambda: "edited")
    with pytest.raises(RuntimeError, match="not the released one"):
        evalcache.ship()
