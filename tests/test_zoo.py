import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from robustkit import datasets, zoo

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
    with pytest.raises(zoo.CheckpointError, match="SHA-256.*git checkout -- data/zoo"):
        zoo.load_or_train("t-ship", CONFIG, train)  # stops: no silent hour-long retrain
    assert train.calls == 1


@pytest.mark.parametrize(
    "manifest, message",
    [(None, "manifest .* is missing"), ("{not json", "not valid JSON"),
     ('{"name": "x"}', "not a list of entries")],
)  # fmt: skip
def test_a_missing_or_invalid_manifest_stops_with_the_fix(
    tmp_path, monkeypatch, manifest, message
):
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(manifest)
    monkeypatch.setattr(zoo, "SHIPPED_DIR", tmp_path)
    train = Trainer()
    with pytest.raises(zoo.CheckpointError, match=f"{message}.*git checkout"):
        zoo.load_or_train("t-manifest", CONFIG, train)
    assert train.calls == 0


def test_a_flipped_byte_inside_a_cached_weight_is_caught_and_retrained():
    train = Trainer()
    model, _ = zoo.load_or_train("t-flip", CONFIG, train)
    path = zoo.checkpoint_path("t-flip", CONFIG)
    raw = bytearray(path.read_bytes())
    weight = model[1].weight.detach().numpy().tobytes()  # the first conv's weights
    at = raw.find(weight[:64])
    assert at > 0 and raw.find(weight[:64], at + 1) == -1
    raw[at + 32] ^= 0xFF  # one byte of one float, inside the zip record
    path.write_bytes(bytes(raw))
    flipped = torch.load(path, weights_only=True)["state_dict"]  # torch does not see it
    assert not torch.equal(flipped["1.weight"], model[1].weight)
    with pytest.warns(UserWarning, match="corrupt.*SHA-256.*training 't-flip' again"):
        again, _ = zoo.load_or_train("t-flip", CONFIG, train)
    assert train.calls == 2 and torch.equal(weights(again), weights(model))


def test_edited_training_code_gets_its_own_key(tmp_path, monkeypatch):
    import shutil

    package = tmp_path / "robustkit"
    shutil.copytree(zoo.ROOT / "robustkit", package)
    training = package / "training.py"
    original = training.read_text()
    assert zoo.code_hash(package) == zoo.code_hash()
    training.write_text(original.replace("# LambdaLR applies", "# a comment\n    #"))
    reformatted = original.replace('"""Training loops', '"""Edited: training loops')
    (package / "models.py").write_text((package / "models.py").read_text() + "\n\n")
    assert zoo.code_hash.__wrapped__(package) == zoo.code_hash()  # comments, docs
    training.write_text(reformatted)
    recipes = package / "recipes.py"
    recipes.write_text(recipes.read_text().replace("beta=6.0", "beta=5.0"))  # a recipe
    edited = zoo.code_hash.__wrapped__(package)
    assert edited != zoo.code_hash()
    released = zoo.config_key("t", CONFIG)
    monkeypatch.setattr(zoo, "code_hash", lambda: edited)
    assert zoo.config_key("t", CONFIG) != released  # never the released model


def test_the_training_code_is_the_released_one():
    assert zoo.code_hash() == zoo.CODE_HASH, (
        f"the training code changed (hash {zoo.code_hash()}): if the models it trains "
        "are unchanged (a new check, a refactor), set zoo.CODE_HASH to it; if not, "
        "bump robustkit.__version__ and rebuild the shipped models (make zoo)"
    )


def test_each_entry_records_what_trained_it():
    zoo.load_or_train("t-env", CONFIG, Trainer())
    payload = torch.load(zoo.checkpoint_path("t-env", CONFIG), weights_only=True)
    env = json.loads(payload["environment"])
    assert env["threads"] == torch.get_num_threads() and env["device"] == "cpu"
    assert env["torch"] == torch.__version__ and env["code"] == zoo.code_hash()


def test_an_unwritable_cache_warns_before_training_and_returns_the_model(
    tmp_path, monkeypatch
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(blocker / "cache"))  # even root fails
    warned_before = []

    def train(model, config):
        warned_before.append(len(record))
        return Trainer()(model, config)

    with pytest.warns(
        UserWarning, match="a-file/cache/zoo cannot be written"
    ) as record:
        model, metrics = zoo.load_or_train("t-ro", CONFIG, train)
    assert warned_before == [1] and metrics["calls"] == 1 and not model.training


def test_a_failed_save_warns_with_the_path_keeps_the_model_and_no_tmp_file(
    monkeypatch,
):
    def full_disk(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zoo.torch, "save", full_disk)
    path = zoo.checkpoint_path("t-full", CONFIG)
    with pytest.warns(UserWarning, match=f"could not save 't-full' to {path}.*space"):
        model, metrics = zoo.load_or_train("t-full", CONFIG, Trainer())
    assert metrics["calls"] == 1 and model[-1].bias.sum() != 0
    left = {p.name for p in path.parent.glob("t-full-*")} - {f"{path.name}.lock"}
    assert not left  # no .tmp file, no entry


def test_two_processes_asking_for_one_entry_train_it_once(tmp_path):
    script = f"""
import json, sys, time, torch
from robustkit import zoo
def train(model, config):
    with open({str(tmp_path / "calls")!r}, "a") as f:
        f.write("x")
    time.sleep(3)
    with torch.no_grad():
        model[-1].bias.add_(1.0)
    return {{}}
model, _ = zoo.load_or_train("t-lock", {CONFIG!r}, train)
print(float(model[-1].bias.sum()))
"""
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert (tmp_path / "calls").read_text() == "x"  # the second waited and loaded
    assert outputs[0] == outputs[1]


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


# The shipped models of each dataset, and the clean accuracy each must keep.
SHIPPED = {
    "mnist": ({"baseline", "fgsm_rs", "pgd", "trades", "ibp", "noise"}, 0.98),
    "fashion_mnist": ({"baseline", "fgsm_rs", "pgd", "trades"}, 0.75),
}
# a certified model pays in clean accuracy: its own floor, below the dataset's
CLEAN_FLOOR = {"ibp": 0.9}


@pytest.mark.parametrize("dataset", SHIPPED)
def test_every_shipped_model_verifies_and_loads_without_training(dataset):
    names, clean_bar = SHIPPED[dataset]
    entries = zoo.shipped(dataset)
    assert names <= {e["name"] for e in entries}

    def no_training(model, config):
        raise AssertionError("a shipped model was retrained")

    for entry in entries:
        file = zoo.SHIPPED_DIR / entry["file"]
        assert hashlib.sha256(file.read_bytes()).hexdigest() == entry["sha256"]
        variants = zoo.SHIPPED_VARIANTS.get(entry["name"], ({},))
        variant = {k: entry["config"][k] for k in variants[0]}
        assert variant in variants
        cfg = zoo.config(entry["name"], dataset, **variant)  # what zoo.model asks for
        assert zoo.canonical(cfg) == zoo.canonical(entry["config"])
        assert zoo.config_key(entry["name"], cfg) == entry["key"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model, metrics = zoo.load_or_train(entry["name"], cfg, no_training)
        assert 0 <= entry["robust_accuracy"] <= entry["clean_accuracy"] <= 1
        assert entry["evaluation"]["eps"] == pytest.approx(datasets.get(dataset).eps)
        assert metrics["test_accuracy"] >= CLEAN_FLOOR.get(entry["name"], clean_bar)
        # a proof no attack refutes: verified <= worst case, wherever it was measured
        verified = (entry.get("certified") or {}).get("verified") or {}
        eps = entry["evaluation"]["eps"]
        assert verified.get(f"{eps:g}", 0) <= entry["robust_accuracy"]
    if dataset == "mnist":
        shipped_noise = [{"sigma": e["config"]["sigma"]} for e in entries
                         if e["name"] == "noise"]  # fmt: skip
        assert sorted(shipped_noise, key=str) == sorted(
            zoo.SHIPPED_VARIANTS["noise"], key=str
        )


def test_a_variant_of_a_shipped_model_has_its_own_file_and_key():
    assert zoo._file_name("noise", "mnist", {"sigma": 0.5}) == "noise-sigma0.5.pt"
    assert zoo._file_name("pgd", "fashion_mnist") == "fashion_mnist-pgd.pt"
    keys = {zoo.config_key("noise", zoo.config("noise", sigma=s)) for s in (0.25, 0.5)}
    assert len(keys) == 2


def test_readme_table_of_shipped_models_is_the_manifest():
    manifest = json.loads((zoo.SHIPPED_DIR / "manifest.json").read_text())
    assert all(e["train_device"] for e in manifest)
    readme = (zoo.SHIPPED_DIR.parents[1] / "README.md").read_text()
    assert zoo.manifest_table() in readme, "run python -m robustkit.zoo --table"
    assert zoo.smoothing_table() in readme, "run python -m robustkit.zoo --table"


def _defaults(notebook: str) -> dict:
    import ast

    import papermill as pm

    declared = pm.inspect_notebook(str(zoo.ROOT / "notebooks" / f"{notebook}.ipynb"))
    return {k: ast.literal_eval(v["default"]) for k, v in declared.items()
            if k in ("EPOCHS", "TEMPERATURES", "SWEEP_N_TRAIN", "SWEEP_EPOCHS",
                     "SWEEP_STEPS", "BETAS", "SURROGATE_SEED")}  # fmt: skip


def test_the_notebook_models_are_what_the_notebooks_train_at_their_defaults():
    d02 = _defaults("02_evaluating_robustness")
    assert d02["EPOCHS"] == zoo.config("baseline")["epochs"]
    assert zoo.NOTEBOOK_MODELS["02_evaluating_robustness"] == [
        ("baseline", dict(seed=d02["SURROGATE_SEED"]))
    ]
    d04 = _defaults("04_defensive_distillation")
    assert zoo.NOTEBOOK_MODELS["04_defensive_distillation"] == [
        ("distilled", dict(epochs=d04["EPOCHS"], temperature=t))
        for t in d04["TEMPERATURES"]
    ]
    d03 = _defaults("03_adversarial_training")
    sizes = dict(n_train=d03["SWEEP_N_TRAIN"], epochs=d03["SWEEP_EPOCHS"],
                 attack_steps=d03["SWEEP_STEPS"])  # fmt: skip
    assert zoo.NOTEBOOK_MODELS["03_adversarial_training"] == [
        ("trades", dict(sizes, beta=b)) for b in d03["BETAS"]
    ]
    source = (zoo.ROOT / "notebooks" / "03_adversarial_training.ipynb").read_text()
    assert "alpha=2.5 * EPS / SWEEP_STEPS" in source  # as notebook_overrides has it


def test_every_shipped_notebook_model_verifies_and_loads_without_training():
    entries = zoo.notebook_models()
    wanted = {
        (name, json.dumps(zoo.notebook_overrides(name, o, "mnist"), sort_keys=True))
        for models_ in zoo.NOTEBOOK_MODELS.values()
        for name, o in models_
    }
    assert len(entries) == len(wanted)

    def no_training(model, config):
        raise AssertionError("a shipped notebook model was retrained")

    for entry in entries:
        file = zoo.SHIPPED_DIR / entry["file"]
        assert hashlib.sha256(file.read_bytes()).hexdigest() == entry["sha256"]
        name, cfg = entry["name"], entry["config"]
        overrides = next(
            json.loads(o) for n, o in wanted
            if n == name and all(cfg[k] == v for k, v in json.loads(o).items())
        )  # fmt: skip
        expected = zoo.config(name, "mnist", **overrides)
        assert zoo.config_key(name, expected) == entry["key"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, metrics = zoo.load_or_train(name, expected, no_training)
        assert metrics["test_accuracy"] == entry["test_accuracy"] >= 0.8
