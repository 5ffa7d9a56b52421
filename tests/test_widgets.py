"""Explorers and the training monitor, driven from code (no frontend needed)."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch

from robustkit import defenses, training, widgets

pytest.importorskip("ipywidgets")
CLASSES = [str(k) for k in range(10)]


def image(fig, k):
    """The image data of the k-th axes of a figure, as an array."""
    return np.asarray(fig.axes[k].images[0].get_array())


def test_import_needs_no_ipywidgets():
    code = "import sys, robustkit.widgets; assert 'ipywidgets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_frontend_outside_a_kernel():
    assert not widgets.has_frontend()


def test_attack_explorer_follows_its_controls(mlp, blobs):
    x, y = blobs[0][:4], blobs[1][:4]
    explorer = widgets.attack_explorer(mlp.eval(), x, y, CLASSES, live=False)
    assert set(explorer.controls) == {"index", "attack", "eps"}
    explorer.controls["index"].value = 0
    clean = image(explorer.fig, 0)
    np.testing.assert_allclose(clean, x[0, 0].numpy(), atol=1e-6)

    explorer.controls["eps"].value = 0.0
    np.testing.assert_allclose(image(explorer.fig, 2), clean, atol=1e-6)

    explorer.controls["eps"].value = 0.3
    adversarial = image(explorer.figure(), 2)
    assert np.abs(adversarial - clean).max() == pytest.approx(0.3, abs=1e-5)

    explorer.controls["attack"].value = "PGD-20"
    assert np.abs(image(explorer.fig, 2) - clean).max() <= 0.3 + 1e-5

    explorer.controls["index"].value = 3
    np.testing.assert_allclose(image(explorer.fig, 0), x[3, 0].numpy(), atol=1e-6)
    assert mlp.training is False


class Fixed(torch.nn.Module):
    """Scripted logits: class 0 for an input whose first pixel is 0, else class 1."""

    def forward(self, x):
        first = x.flatten(1)[:, :1]
        return torch.cat([1 - 2 * first, 2 * first - 1], 1)


def test_the_attack_explorer_opens_on_an_image_the_attack_fools():
    x, y = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 0])  # image 1: wrong
    x[:, 0, 1, 1] = torch.arange(4) / 10  # each image's id, which the model ignores
    fools = {1, 2}  # the scripted attack fools image 2 (and "fools" wrong image 1)

    def attack(model, x, y):
        x_adv = x.clone()
        hit = torch.tensor([round(10 * float(v)) in fools for v in x[:, 0, 1, 1]])
        x_adv[hit, 0, 0, 0] = 1.0
        return x_adv

    assert widgets.first_success(Fixed(), attack, x, y) == 2
    fools.discard(2)  # only the wrong image changes: the first image
    assert widgets.first_success(Fixed(), attack, x, y) == 0
    fools.add(3)
    makers = {"scripted": lambda eps: attack}
    explorer = widgets.attack_explorer(Fixed(), x, y, ["a", "b"], attacks=makers)
    assert explorer.controls["index"].value == 3


def test_controls_name_what_they_show():
    longest = "a rather long attack name (margin loss)"
    box = widgets.dropdown([longest, "FGSM"], "attack")
    assert box.style.description_width == "initial"
    assert f"{len(longest)}ch" in box.layout.width
    assert widgets.describe(partial(defenses.jpeg, quality=50)) == "jpeg(quality=50)"
    assert widgets.describe(partial(defenses.gaussian_blur, sigma=1.0)) == (
        "gaussian_blur(sigma=1)"
    )
    assert widgets.describe(torch.sigmoid) == "sigmoid"
    monitor = widgets.training_monitor("FGSM-RS, eps 0.3", live=False)
    monitor(dict(epoch=1, train_loss=1.0, train_accuracy=0.5))
    assert monitor.figure()._suptitle.get_text() == "FGSM-RS, eps 0.3: epoch 1"


def test_attack_explorer_accepts_custom_attacks_and_builds_a_widget(mlp, blobs):
    x, y = blobs[0][:2], blobs[1][:2]
    calls = []

    def make(eps):
        calls.append(eps)
        return lambda model, x, y: (x + eps).clamp(0, 1)

    explorer = widgets.attack_explorer(
        mlp.eval(), x, y, CLASSES, attacks={"brighten": make}, eps_max=0.2
    )
    # built once to find an image it fools, once to draw it
    assert calls == [0.1, 0.1] and explorer.controls["eps"].max == 0.2
    box = explorer.widget()
    assert len(box.children) == 2  # the controls, then the figure's output area
    with pytest.raises(ValueError, match="eps_max"):
        widgets.attack_explorer(mlp, x, y, CLASSES, eps_max=0)


def test_straight_through_is_t_forward_and_identity_backward():
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    out = widgets.straight_through(lambda v: torch.round(v * 3) / 3)(x)
    torch.testing.assert_close(out, torch.round(x * 3) / 3)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, torch.ones_like(x))


def test_defense_explorer_follows_its_controls(mlp, blobs):
    x, y = blobs[0][:6], blobs[1][:6]

    def quantize(strength):
        levels = round(2 + 30 * (1 - strength))
        return lambda v: torch.round(v * levels) / levels

    transforms = {"quantize": quantize, "none": lambda strength: lambda v: v}
    explorer = widgets.defense_explorer(
        mlp.eval(), x, y, CLASSES, transforms, eps=0.2, steps=3, live=False
    )
    assert set(explorer.controls) == {"index", "transform", "strength"}
    explorer.controls["strength"].value = 1.0  # 2 levels: 0, 0.5 and 1 remain
    assert len(np.unique(image(explorer.fig, 0))) <= 3
    explorer.controls["strength"].value = 0.0
    assert len(np.unique(image(explorer.fig, 0))) > 3
    explorer.controls["transform"].value = "none"
    np.testing.assert_allclose(image(explorer.fig, 0), x[0, 0].numpy(), atol=1e-6)
    naive = image(explorer.fig, 1)
    assert np.abs(naive - x[0, 0].numpy()).max() == pytest.approx(0.2, abs=1e-5)
    assert "accuracy over 6 images" in explorer.fig.texts[0].get_text()


def test_defense_explorer_uses_the_adaptive_model_fn(mlp, blobs):
    x, y = blobs[0][:2], blobs[1][:2]
    seen = []

    def adaptive(model, t):
        seen.append(t)
        return model

    explorer = widgets.defense_explorer(
        mlp.eval(), x, y, CLASSES, {"id": lambda s: lambda v: v},
        eps=0.1, steps=2, adaptive_model_fn=adaptive,
    )  # fmt: skip
    assert len(seen) == 1
    explorer.controls["index"].value = 1  # another image: no new attack
    assert len(seen) == 1
    explorer.controls["strength"].value = 0.2
    assert len(seen) == 2


def test_training_monitor_is_silent_without_a_frontend(mlp, blobs, capsys):
    monitor = widgets.training_monitor()
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    history = training.fit(
        mlp, [blobs], opt=opt, epochs=2, callback=monitor, progress=False
    )
    assert capsys.readouterr().out == ""
    assert monitor.rows == history
    fig = monitor.figure()
    loss_line = fig.axes[0].lines[0]
    assert list(loss_line.get_ydata()) == [r["train_loss"] for r in history]
    assert [line.get_label() for line in fig.axes[1].lines] == ["train"]


def test_training_monitor_redraws_one_display_when_live(monkeypatch):
    import IPython.display

    events = []

    class FakeHandle:
        def display(self, obj):
            events.append(("display", obj))

        def update(self, obj):
            events.append(("update", obj))

    monkeypatch.setattr(IPython.display, "DisplayHandle", FakeHandle)
    monitor = widgets.training_monitor(live=True)
    for epoch in (1, 2, 3):
        monitor(dict(epoch=epoch, train_loss=1 / epoch, test_robust_accuracy=0.1))
    assert [kind for kind, _ in events] == ["display", "update", "update"]
    last = events[-1][1]
    assert len(last.axes[0].lines[0].get_xdata()) == 3
    assert [line.get_label() for line in last.axes[1].lines] == ["test robust"]
