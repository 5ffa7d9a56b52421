import hashlib
import json
import warnings

import pytest
import torch

from robustkit import zoo

CONFIG = dict(arch="small_cnn", dataset="mnist", seed=0, note="tiny")


class Trainer:
    """A train_fn that counts its calls and nudges the weights (no real training)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, config):
        self.calls += 1
        with torch.no_grad():
            model[-1].bias.add_(1.0)
        return {"test_accuracy": 0.5, "calls": self.calls}


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_miss_trains_then_hit_loads_the_same_weights():
    train = Trainer()
    m1, metrics1 = zoo.load_or_train("t-hit", CONFIG, train)
    m2, metrics2 = zoo.load_or_train("t-hit", CONFIG, train)
    assert train.calls == 1 and metrics1 == metrics2 == {
        "test_accuracy": 0.5,
        "calls": 1,
    }
    assert torch.equal(weights(m1), weights(m2)) and not m2.training


def test_config_change_retrains():
    train = Trainer()
    zoo.load_or_train("t-change", CONFIG, train)
    zoo.load_or_train("t-change", {**CONFIG, "seed": 1}, train)
    assert train.calls == 2
    assert zoo.config_key("t", CONFIG) != zoo.config_key("t", {**CONFIG, "seed": 1})


def test_initial_weights_depend_only_on_the_config_seed():
    seen = []
    torch.manual_seed(5)
    zoo.load_or_train("t-init-a", CONFIG, lambda m, c: seen.append(weights(m)) or {})
    torch.manual_seed(7)
    zoo.load_or_train("t-init-b", CONFIG, lambda m, c: seen.append(weights(m)) or {})
    assert torch.equal(seen[0], seen[1])


def test_caller_rng_state_is_restored():
    torch.manual_seed(0)
    zoo.load_or_train("t-rng", CONFIG, Trainer())
    after_miss = torch.rand(3)
    torch.manual_seed(0)
    zoo.load_or_train("t-rng", CONFIG, Trainer())
    assert torch.equal(
        torch.rand(3), after_miss
    )  # a hit and a miss leave the same state


def test_corrupt_file_is_reported_and_retrained():
    train = Trainer()
    zoo.load_or_train("t-corrupt", CONFIG, train)
    path = zoo.checkpoint_path("t-corrupt", CONFIG)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="corrupt.*training 't-corrupt' again"):
        _, metrics = zoo.load_or_train("t-corrupt", CONFIG, train)
    assert train.calls == 2 and metrics["calls"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry loads cleanly
        zoo.load_or_train("t-corrupt", CONFIG, train)
    assert train.calls == 2


def test_mismatched_file_is_reported_and_retrained():
    train = Trainer()
    zoo.load_or_train("t-other", {**CONFIG, "seed": 9}, train)
    other = zoo.checkpoint_path("t-other", {**CONFIG, "seed": 9})
    other.rename(zoo.checkpoint_path("t-other", CONFIG))  # right name, wrong contents
    with pytest.warns(UserWarning, match="another config"):
        zoo.load_or_train("t-other", CONFIG, train)
    assert train.calls == 2


def test_checkpoint_loads_with_weights_only(tmp_path):
    zoo.load_or_train("t-safe", CONFIG, Trainer())
    payload = torch.load(zoo.checkpoint_path("t-safe", CONFIG), weights_only=True)
    assert json.loads(payload["config"]) == CONFIG


def test_shipped_checkpoint_is_used_and_verified(tmp_path, monkeypatch):
    train = Trainer()
    model, _ = zoo.load_or_train("t-ship", CONFIG, train)
    shipped = tmp_path / "zoo"
    shipped.mkdir()
    file = shipped / "t-ship.pt"
    zoo.checkpoint_path("t-ship", CONFIG).rename(file)  # only the shipped copy remains
    entry = dict(
        name="t-ship",
        key=zoo.config_key("t-ship", CONFIG),
        file=file.name,
        sha256=hashlib.sha256(file.read_bytes()).hexdigest(),
    )
    (shipped / "manifest.json").write_text(json.dumps([entry]))
    monkeypatch.setattr(zoo, "SHIPPED_DIR", shipped)
    loaded, _ = zoo.load_or_train("t-ship", CONFIG, train)
    assert train.calls == 1 and torch.equal(weights(loaded), weights(model))
    entry["sha256"] = "0" * 64
    (shipped / "manifest.json").write_text(json.dumps([entry]))
    with pytest.warns(UserWarning, match="SHA-256.*git checkout"):
        zoo.load_or_train("t-ship", CONFIG, train)
    assert train.calls == 2


@pytest.mark.parametrize("missing", ["arch", "dataset", "seed"])
def test_config_needs_arch_dataset_and_seed(missing):
    config = {k: v for k, v in CONFIG.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        zoo.load_or_train("t-bad", config, Trainer())


def test_options_left_at_none_do_not_change_the_key():
    assert zoo.config_key("t", CONFIG) == zoo.config_key(
        "t", {**CONFIG, "new_option": None}
    )
    assert zoo.config_key("t", CONFIG) != zoo.config_key(
        "t", {**CONFIG, "new_option": 1}
    )


def test_every_shipped_model_verifies_and_loads_without_training():
    manifest = json.loads((zoo.SHIPPED_DIR / "manifest.json").read_text())
    assert {e["name"] for e in manifest} == set(zoo.SHIPPED)

    def no_training(model, config):
        raise AssertionError("a shipped model was retrained")

    for entry in manifest:
        file = zoo.SHIPPED_DIR / entry["file"]
        assert hashlib.sha256(file.read_bytes()).hexdigest() == entry["sha256"]
        cfg = zoo.shipped_config(entry["name"])
        assert zoo.config_key(entry["name"], cfg) == entry["key"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model, metrics = zoo.load_or_train(entry["name"], cfg, no_training)
        assert 0 <= entry["robust_accuracy"] <= entry["clean_accuracy"] <= 1
        assert metrics["test_accuracy"] >= 0.98  # the clean-accuracy bar


def test_readme_table_of_shipped_models_is_the_manifest():
    manifest = json.loads((zoo.SHIPPED_DIR / "manifest.json").read_text())
    assert all(e["train_device"] for e in manifest)
    readme = (zoo.SHIPPED_DIR.parents[1] / "README.md").read_text()
    assert zoo.manifest_table() in readme, "run python -m robustkit.zoo --table"
