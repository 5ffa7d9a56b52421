"""Attacks: universal invariants over every attack (table-driven, hypothesis-generated
shapes, eps and norms), oracles, and behaviour on small trained models."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from robustkit import attacks, data, models, training


def conv_net(seed=0):
    """A tiny seeded CNN that accepts any image size >= 2x2 (1 channel)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def bn_net(seed=0):
    """conv_net with BatchNorm and Dropout: in train mode a forward pass changes the
    running statistics and is random, which the attacks must survive and undo."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


SURROGATE = conv_net(seed=1)

# name -> (attack(model, x, y, eps, norm), norms it supports, bounded by eps)
ATTACKS = {
    "fgsm": (lambda m, x, y, eps, norm: attacks.fgsm(m, x, y, eps=eps), ["linf"], True),
    "fgsm-targeted": (
        lambda m, x, y, eps, norm: attacks.fgsm(m, x, y, eps=eps, targeted=True),
        ["linf"],
        True,
    ),
    "pgd": (
        lambda m, x, y, eps, norm: attacks.pgd(
            m, x, y, eps=eps, alpha=(eps or 0.1) / 2, steps=3, norm=norm
        ),
        ["linf", "l2"],
        True,
    ),
    "pgd-restarts-margin": (
        lambda m, x, y, eps, norm: attacks.pgd(
            m,
            x,
            y,
            eps=eps,
            alpha=(eps or 0.1) / 2,
            steps=2,
            norm=norm,
            restarts=2,
            loss_fn=attacks.margin,
        ),
        ["linf", "l2"],
        True,
    ),
    "pgd-targeted-dlr": (
        lambda m, x, y, eps, norm: attacks.pgd(
            m,
            x,
            y,
            eps=eps,
            alpha=(eps or 0.1) / 2,
            steps=2,
            norm=norm,
            targeted=True,
            loss_fn=attacks.dlr,
        ),
        ["linf", "l2"],
        True,
    ),
    "mifgsm": (
        lambda m, x, y, eps, norm: attacks.mifgsm(
            m, x, y, eps=eps, alpha=(eps or 0.1) / 3, steps=3
        ),
        ["linf"],
        True,
    ),
    "apgd-ce": (
        lambda m, x, y, eps, norm: attacks.apgd(
            m, x, y, eps=eps, steps=5, norm=norm, restarts=2
        ),
        ["linf", "l2"],
        True,
    ),
    "apgd-dlr": (
        lambda m, x, y, eps, norm: attacks.apgd(
            m, x, y, eps=eps, steps=5, norm=norm, loss_fn="dlr"
        ),
        ["linf", "l2"],
        True,
    ),
    "apgd-t": (
        lambda m, x, y, eps, norm: attacks.apgd_t(
            m, x, y, eps=eps, steps=4, norm=norm, n_targets=2
        ),
        ["linf", "l2"],
        True,
    ),
    "square": (
        lambda m, x, y, eps, norm: attacks.square(m, x, y, eps=eps, queries=20),
        ["linf"],
        True,
    ),
    "transfer": (
        lambda m, x, y, eps, norm: attacks.transfer(
            m,
            x,
            y,
            surrogate=SURROGATE,
            attack=partial(
                attacks.pgd, eps=eps, alpha=(eps or 0.1) / 2, steps=2, norm=norm
            ),
        ),
        ["linf", "l2"],
        True,
    ),
    "cw_l2": (
        lambda m, x, y, eps, norm: attacks.cw_l2(m, x, y, c=1.0, steps=3),
        ["l2"],
        False,
    ),
    "cw_l2_search": (
        lambda m, x, y, eps, norm: attacks.cw_l2_search(
            m, x, y, steps=2, search_steps=2
        ),
        ["l2"],
        False,
    ),
}
CASES = [(name, norm) for name, (_, norms, _) in ATTACKS.items() for norm in norms]


@pytest.mark.parametrize("name, norm", CASES, ids=[f"{a}-{n}" for a, n in CASES])
@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(0, 5),
    h=st.integers(4, 9),
    w=st.integers(4, 9),
    eps=st.floats(0.01, 0.6),
    train_mode=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(n=0, h=4, w=5, eps=0.1, train_mode=False, seed=0)  # an empty batch
@example(n=3, h=5, w=4, eps=0.3, train_mode=True, seed=1)  # BatchNorm updating
def test_universal_invariants(name, norm, n, h, w, eps, train_mode, seed):
    attack, _, bounded = ATTACKS[name]
    model = bn_net()
    with torch.no_grad():  # running statistics that a forward pass would change
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.train(train_mode)
    state = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, h, w, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    x_before = x.clone()
    torch.manual_seed(seed)
    x_adv = attack(model, x, y, eps, norm)
    assert (
        x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    )
    assert not x_adv.requires_grad and x_adv is not x
    assert torch.equal(x, x_before), "the input was modified"
    assert ((x_adv >= 0.0) & (x_adv <= 1.0)).all(), "left the bounds"
    if bounded:
        assert (
            attacks.perturbation_norm(x_adv, x, norm) <= eps * (1 + 1e-5) + 1e-6
        ).all()
    assert all(p.grad is None for p in model.parameters()), (
        "gradients left on parameters"
    )
    assert all(m.training == train_mode for m in model.modules()), "mode changed"
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items()), "buffers changed"


@pytest.mark.parametrize(
    "name, norm",
    [c for c in CASES if ATTACKS[c[0]][2]],
    ids=[f"{a}-{n}" for a, n in CASES if ATTACKS[a][2]],
)
def test_eps_zero_returns_a_copy_of_x(name, norm):
    model, x, y = conv_net(), torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 2])
    x_adv = ATTACKS[name][0](model, x, y, 0.0, norm)
    assert torch.equal(x_adv, x) and x_adv is not x


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, x, y: attacks.pgd(m, x, y, eps=-0.1, alpha=0.1, steps=1), "eps"),
        (lambda m, x, y: attacks.pgd(m, x, y, eps=0.1, alpha=0.1, steps=0), "steps"),
        (lambda m, x, y: attacks.pgd(m, x, y, eps=0.1, alpha=0.0, steps=1), "alpha"),
        (
            lambda m, x, y: attacks.pgd(
                m, x, y, eps=0.1, alpha=0.1, steps=1, norm="l1"
            ),
            "norm",
        ),
        (
            lambda m, x, y: attacks.pgd(
                m, x, y, eps=0.1, alpha=0.1, steps=1, restarts=0
            ),
            "restarts",
        ),
        (lambda m, x, y: attacks.fgsm(m, x * 2, y, eps=0.1), "outside bounds"),
        (lambda m, x, y: attacks.fgsm(m, x, y.float(), eps=0.1), "int64"),
        (lambda m, x, y: attacks.fgsm(m, x, y, eps=0.1, bounds=(1.0, 0.0)), "bounds"),
        (lambda m, x, y: attacks.apgd(m, x, y, eps=0.1, loss_fn="hinge"), "hinge"),
        (lambda m, x, y: attacks.apgd_t(m, x, y, eps=0.1, n_targets=10), "n_targets"),
        (lambda m, x, y: attacks.square(m, x, y, eps=0.1, queries=0), "queries"),
        (lambda m, x, y: attacks.cw_l2(m, x, y, c=-1.0), "c must be"),
        (lambda m, x, y: attacks.cw_l2_search(m, x, y, search_steps=0), "search_steps"),
        (lambda m, x, y: attacks.train_patch(m, x, target=1, size=40), "size"),
        (lambda m, x, y: attacks.apply_patch(x, torch.zeros(3, 2, 2)), "patch must be"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(call, match):
    x, y = torch.rand(2, 1, 6, 6), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=match):
        call(conv_net(), x, y)


# ------------------------------------------------------------------------ oracles


def test_one_step_pgd_without_random_start_equals_fgsm():
    model, x, y = conv_net(), torch.rand(8, 1, 7, 7), torch.randint(0, 10, (8,))
    for targeted in (False, True):
        torch.testing.assert_close(
            attacks.pgd(
                model,
                x,
                y,
                eps=0.1,
                alpha=0.1,
                steps=1,
                random_start=False,
                targeted=targeted,
            ),
            attacks.fgsm(model, x, y, eps=0.1, targeted=targeted),
        )


def linear_binary(w):
    """Two logits (0, w.x): class 1 wins iff w.x > 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(w.numel(), 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros_like(w), w]).flatten(1))
    return model


def test_fgsm_on_a_linear_model_matches_the_closed_form():
    """For logits (0, w.x) and label 0, the optimal L-inf step is +eps sign(w), and the
    logit gap moves by exactly eps ||w||_1 (Kolter & Madry, ch. 2)."""
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    model, x = linear_binary(w), torch.rand(5, 1, 4, 4)
    eps, wide = 0.1, (-10.0, 10.0)  # wide bounds: the clip never binds
    for label, sign in [(0, 1.0), (1, -1.0)]:
        y = torch.full((5,), label)
        x_adv = attacks.fgsm(model, x, y, eps=eps, bounds=wide)
        torch.testing.assert_close(x_adv, x + sign * eps * w.sign())
        gap = lambda z: model(z)[:, 1] - model(z)[:, 0]  # noqa: E731
        torch.testing.assert_close(
            gap(x_adv) - gap(x), sign * eps * w.abs().sum().expand(5)
        )


def test_one_step_l2_pgd_is_the_normalized_gradient_step():
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    model, x, y = (
        linear_binary(w),
        torch.rand(3, 1, 4, 4),
        torch.zeros(3, dtype=torch.long),
    )
    x_adv = attacks.pgd(
        model,
        x,
        y,
        eps=0.5,
        alpha=0.5,
        steps=1,
        norm="l2",
        random_start=False,
        bounds=(-10.0, 10.0),
    )
    torch.testing.assert_close(x_adv, x + 0.5 * w / w.norm())


def test_projection_and_random_init():
    torch.manual_seed(0)
    delta = torch.randn(200, 1, 5, 5)
    for norm in ("linf", "l2"):
        p = attacks.project(delta, 0.3, norm)
        assert (attacks.lp_norm(p, norm) <= 0.3 + 1e-6).all()
        torch.testing.assert_close(attacks.project(p, 0.3, norm), p)  # idempotent
        inside = delta * 0.01
        torch.testing.assert_close(attacks.project(inside, 0.3, norm), inside)
        r = attacks.random_init(delta, 0.3, norm)
        assert (attacks.lp_norm(r, norm) <= 0.3 + 1e-6).all()
    # uniform by volume in the L2 ball of dimension d: E[radius] = eps * d / (d + 1)
    radius = attacks.lp_norm(
        attacks.random_init(torch.zeros(4000, 1, 2, 2), 1.0, "l2"), "l2"
    )
    assert radius.mean().item() == pytest.approx(4 / 5, abs=0.02)


def test_losses_on_hand_made_logits():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -2.0]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(attacks.margin(logits, y), torch.tensor([-2.0, 2.0]))
    # dlr = margin / (z_pi1 - z_pi3): invariant to shifting and scaling the logits
    torch.testing.assert_close(
        attacks.dlr(logits, y), torch.tensor([-2.0 / 3.0, 2.0 / 2.0])
    )
    torch.testing.assert_close(attacks.dlr(5 * logits + 7, y), attacks.dlr(logits, y))
    t = torch.tensor([1, 1])
    torch.testing.assert_close(
        attacks.dlr_targeted(logits, y, t), torch.tensor([-2.0 / 3.5, 2.0 / 3.0])
    )


# ------------------------------------------------------------ on trained models


@pytest.fixture(scope="module")
def trained():
    """An MLP trained on the blob problem of conftest (10 classes, 1x8x8)."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.rand(10, 1, 8, 8, generator=gen)
    y = torch.arange(10).repeat(30)
    x = (centers[y] + 0.1 * torch.randn(len(y), 1, 8, 8, generator=gen)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    training.fit(
        model,
        data.Batches(x, y, batch_size=50, shuffle=True),
        opt=opt,
        epochs=20,
        progress=False,
    )
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    return model, x, y


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_attacks_lower_accuracy_and_pgd_beats_fgsm(trained):
    model, x, y = trained
    eps = 0.15
    a_fgsm = accuracy(model, attacks.fgsm(model, x, y, eps=eps), y)
    a_pgd = accuracy(
        model, attacks.pgd(model, x, y, eps=eps, alpha=eps / 4, steps=20), y
    )
    a_apgd = accuracy(model, attacks.apgd(model, x, y, eps=eps, steps=20), y)
    a_square = accuracy(model, attacks.square(model, x, y, eps=eps, queries=300), y)
    assert a_pgd <= a_fgsm < accuracy(model, x, y)
    assert a_apgd <= a_pgd + 0.02 and a_square < accuracy(model, x, y)


def test_restarts_keep_the_worst_case_per_example(trained):
    model, x, y = trained
    kwargs = dict(eps=0.08, alpha=0.02, steps=5)
    torch.manual_seed(3)
    single = attacks.pgd(model, x, y, **kwargs)
    torch.manual_seed(3)  # the first restart draws the same start as `single`
    multi = attacks.pgd(model, x, y, restarts=4, **kwargs)
    fooled = lambda z: model(z).argmax(1) != y  # noqa: E731
    with torch.no_grad():
        assert (fooled(multi) | ~fooled(single)).all(), "a restart lost a success"
        assert fooled(multi).sum() >= fooled(single).sum()


def test_targeted_attacks_reach_the_target(trained):
    model, x, y = trained
    target = (y + 3) % 10
    for x_adv in [
        attacks.pgd(model, x, target, eps=0.5, alpha=0.05, steps=40, targeted=True),
        attacks.apgd(model, x, target, eps=0.5, steps=40, targeted=True),
        attacks.cw_l2(model, x, target, c=10.0, steps=200, lr=0.05, targeted=True),
    ]:
        with torch.no_grad():
            assert (model(x_adv).argmax(1) == target).float().mean() >= 0.9


def test_apgd_t_targets_other_classes_and_finds_misclassifications(trained):
    model, x, y = trained
    x_adv = attacks.apgd_t(model, x, y, eps=0.15, steps=20, n_targets=3)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)


def test_cw_finds_smaller_l2_perturbations_than_pgd_l2_at_equal_success(trained):
    model, x, y = trained
    x_cw = attacks.cw_l2_search(model, x, y, steps=100, lr=0.05, search_steps=6)
    fooled_cw = model(x_cw).argmax(1) != y
    l2_cw = attacks.perturbation_norm(x_cw, x, "l2")
    eps = l2_cw[fooled_cw].max().item()  # PGD-L2 gets every budget CW needed
    x_pgd = attacks.pgd(model, x, y, eps=eps, alpha=eps / 8, steps=40, norm="l2")
    with torch.no_grad():
        fooled_pgd = model(x_pgd).argmax(1) != y
    both = fooled_cw & fooled_pgd
    assert fooled_cw.float().mean() > 0.9 and both.sum() > 0.8 * fooled_cw.sum()
    l2_pgd = attacks.perturbation_norm(x_pgd, x, "l2")
    assert l2_cw[both].mean() < 0.8 * l2_pgd[both].mean()


def test_transfer_crafts_on_the_surrogate_only(trained):
    model, x, y = trained
    calls = []
    surrogate = copy.deepcopy(model)
    surrogate.register_forward_hook(lambda *args: calls.append(1))
    target = copy.deepcopy(model)
    target.register_forward_hook(lambda *args: pytest.fail("the target was queried"))
    attack = partial(attacks.pgd, eps=0.15, alpha=0.05, steps=5)
    x_adv = attacks.transfer(target, x, y, surrogate=surrogate, attack=attack)
    assert calls and accuracy(model, x_adv, y) < accuracy(model, x, y)


def test_patch_is_pasted_where_asked():
    patch = torch.full((1, 3, 3), 0.5)
    out = attacks.apply_patch(
        torch.zeros(2, 1, 8, 8),
        patch,
        top=torch.tensor([0, 5]),
        left=torch.tensor([1, 4]),
    )
    assert out[0, 0, 0:3, 1:4].eq(0.5).all() and out[1, 0, 5:8, 4:7].eq(0.5).all()
    assert out.sum() == 2 * 9 * 0.5
    torch.manual_seed(0)
    placed = attacks.apply_patch(
        torch.zeros(500, 1, 10, 10), torch.ones(1, 2, 2), margin=3
    )
    rows = placed.sum((0, 1, 3)).nonzero().squeeze(1)
    assert rows.min() == 3 and rows.max() == 6  # the margin keeps it inside


def test_trained_patch_forces_the_target_far_more_than_a_random_one(mnist_baseline):
    model, x, y = mnist_baseline
    torch.manual_seed(0)
    patch = attacks.train_patch(
        model, x, target=8, size=12, steps=150, margin=4, progress=False
    )
    assert patch.shape == (1, 12, 12) and patch.min() >= 0 and patch.max() <= 1
    others = x[y != 8]
    with torch.no_grad():
        hit = model(attacks.apply_patch(others, patch, margin=4)).argmax(1) == 8
        noise = attacks.apply_patch(others, torch.rand(1, 12, 12), margin=4)
        base = model(noise).argmax(1) == 8
    assert hit.float().mean() > base.float().mean() + 0.2


def test_n_fgsm_leaves_the_ball_but_not_the_bounds():
    """N-FGSM's example is a training perturbation: up to noise * eps + alpha."""
    torch.manual_seed(0)
    model = models.create("small_cnn", "mnist").eval()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    before = x.clone()
    x_adv = attacks.n_fgsm(model, x, y, eps=0.1, alpha=0.1)
    delta = (x_adv - x).abs()
    assert delta.max() <= 0.3 + 1e-6 and delta.max() > 0.1  # not projected to eps
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x, before) and not model.training
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="noise"):
        attacks.n_fgsm(model, x, y, eps=0.1, alpha=0.1, noise=-1)
