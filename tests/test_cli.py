"""`python -m robustkit.train` and `python -m robustkit.evaluate`: the cache entry the
notebooks load, and arguments checked before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from robustkit import evaluate, train, zoo

TINY = ["n_train=300", "n_val=0", "epochs=1"]


def run(module: str, *args: str, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROBUSTKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def test_train_fills_the_entry_a_notebook_loads_and_evaluate_reads_it(
    tmp_path, monkeypatch
):
    done = run("robustkit.train", "baseline", *TINY, "--no-progress", "--device", "cpu",
               cache=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    cfg = zoo.config("baseline", n_train=300, n_val=0, epochs=1)
    assert summary["key"] == zoo.config_key("baseline", cfg)
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path))

    def no_training(model, config):
        raise AssertionError("the notebook retrained what the command line trained")

    _, metrics = zoo.load_or_train("baseline", cfg, no_training)
    assert metrics["test_accuracy"] == summary["test_accuracy"]
    out = tmp_path / "eval.json"
    done = run("robustkit.evaluate", "baseline", *TINY, "--n-test", "40", "--steps",
               "5", "--queries", "20", "--targets", "1", "--certify", "--no-progress",
               "--precision", "bf16", "--out", str(out), cache=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report == json.loads(done.stdout)
    assert report["n_test"] == 40 and report["eps"] == pytest.approx(0.3)
    assert report["precision"] == "bf16"
    assert 0 <= report["verified_accuracy"] <= report["robust_accuracy"]
    assert report["robust_accuracy"] <= report["clean_accuracy"] <= 1


def test_evaluate_names_the_train_command_for_a_model_it_does_not_have(tmp_path):
    done = run("robustkit.evaluate", "baseline", "n_train=123", "--no-progress",
               cache=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert (
        "python -m robustkit.train baseline n_train=123 --dataset mnist" in done.stderr
    )


@pytest.mark.parametrize(
    "main, argv, message",
    [
        (train.main, ["nonsense"], "unknown zoo model 'nonsense'"),
        (train.main, ["pgd", "epochs=0"], "epochs=0"),
        (train.main, ["pgd", "epoch=5"], "unknown config keys ['epoch']"),
        (train.main, ["pgd", "epochs"], "'epochs' is not KEY=VALUE"),
        (train.main, ["pgd", "--dataset", "imagenet"], "--dataset 'imagenet'"),
        (train.main, ["pgd", "dataset=cifar10"], "as --dataset"),
        (train.main, ["pgd", "--device", "tpu"], "tpu"),
        (evaluate.main, ["pgd", "--n-test", "0"], "--n-test 0: use 1 to 10,000"),
        (evaluate.main, ["pgd", "--eps", "2"], "--eps 2.0"),
        (evaluate.main, ["pgd", "--precision", "int8"], "invalid choice: 'int8'"),
        (evaluate.main, ["pgd", "--targets", "10"], "--targets 10: use 1 to 9"),
        (evaluate.main, ["pgd", "--steps", "0"], "--steps 0"),
    ],
)
def test_bad_arguments_stop_before_any_work_naming_the_value(
    capsys, main, argv, message
):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
