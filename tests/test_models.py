import pytest
import torch

from robustkit import models


@pytest.mark.parametrize(
    "arch, dataset, shape, n_params",
    [
        ("small_cnn", "mnist", (1, 28, 28), 166_406),
        ("mnist_cnn", "mnist", (1, 28, 28), 3_274_634),
        ("preact_resnet18", "cifar10", (3, 32, 32), 11_172_170),
        # the same architectures, built for another dataset's shape
        ("small_cnn", "fashion_mnist", (1, 28, 28), 166_406),
        ("small_cnn", "cifar10", (3, 32, 32), 214_918),
        ("mnist_cnn", "cifar10", (3, 32, 32), 4_259_274),
        ("preact_resnet18", "mnist", (1, 28, 28), 11_171_018),
    ],
)
def test_models_map_unit_range_images_to_logits(arch, dataset, shape, n_params):
    torch.manual_seed(0)
    model = models.create(arch, dataset).eval()
    assert isinstance(model[0], models.Normalize)
    assert sum(p.numel() for p in model.parameters()) == n_params
    logits = model(torch.rand(2, *shape))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert model[0].mean.numel() == shape[0]  # Normalize has the dataset's channels


def test_normalize_matches_formula_and_follows_device():
    norm = models.Normalize((0.5, 0.25), (0.5, 2.0))
    x = torch.rand(3, 2, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 2.0], 1)
    torch.testing.assert_close(norm(x), expected)
    assert set(dict(norm.named_buffers())) == {
        "mean",
        "std",
    }  # saved and moved with the model


def test_normalize_rejects_bad_statistics():
    with pytest.raises(ValueError, match="std"):
        models.Normalize((0.5,), (0.0,))
    with pytest.raises(ValueError, match="must match"):
        models.Normalize((0.5, 0.5), (1.0,))


def test_create_rejects_unknown_names():
    with pytest.raises(ValueError, match="resnet50"):
        models.create("resnet50", "mnist")
    with pytest.raises(ValueError, match="svhn"):
        models.create("small_cnn", "svhn")
