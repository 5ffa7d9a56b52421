import json
import random

import numpy as np
import pytest
import torch

from robustkit import utils


def test_seed_everything_seeds_every_rng():
    utils.seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    utils.seed_everything(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


@pytest.mark.parametrize("bad", [-1, 1.5, "0"])
def test_seed_everything_rejects_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        utils.seed_everything(bad)


def test_get_device():
    assert utils.get_device("cpu") == torch.device("cpu")
    assert utils.get_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="tpu"):
        utils.get_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_get_device_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        utils.get_device("cuda")


def test_record_results_writes_json(tmp_path):
    results = {"clean_accuracy": 0.9, "eps_values": [0.0, 0.1], "device": "cpu", "n": 3}
    path = tmp_path / "sub" / "r.json"
    assert utils.record_results(results, path) is results
    assert json.loads(path.read_text()) == results
    assert utils.record_results(results, "") is results  # empty path: nothing written


@pytest.mark.parametrize(
    "bad",
    [{"Accuracy": 0.5}, {"a": float("nan")}, {"a": torch.tensor(0.5)}, {"a": {"b": 1}}],
)
def test_record_results_rejects_non_flat_json(bad):
    with pytest.raises(ValueError):
        utils.record_results(bad)
