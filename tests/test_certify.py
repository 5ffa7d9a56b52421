"""Certification is sound: bounds contain every output, certificates survive attacks.

The soundness checks run on random points of the ball (hypothesis draws the model's
seed, the points and eps), then against the strongest attacks the kit has, on a
small model trained with the kit's own IBP and noise recipes on the blobs problem.
"""

from __future__ import annotations

import pytest
import scipy.stats
import torch
import toy
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustkit import attacks, certify, data, evaluation, recipes, training
from robustkit.defenses import EOT
from robustkit.models import Normalize


def every_layer(seed: int) -> nn.Sequential:
    """A seeded conv net of every layer IBP supports, BatchNorm in eval mode with
    non-trivial statistics (negative scales included)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        Normalize((0.4,), (0.3,)),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=1, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Sequential(nn.Flatten(), nn.Linear(6 * 2 * 2, 16)),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(16, 5),
    )
    for bn in (model[2], model[9]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(-2, 2)
    return model.eval()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    eps=st.floats(0.0, 0.5),
    corner=st.booleans(),
)
def test_every_output_on_the_ball_lies_inside_its_bounds(seed, eps, corner):
    model = every_layer(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 8, 8, generator=gen)
    y = torch.randint(0, 5, (3,), generator=gen)
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    low, high = certify.interval_bounds(model, lower, upper)
    margins = certify.margin_lower_bounds(model, x, y, eps=eps)
    for _ in range(20):
        u = torch.rand(x.shape, generator=gen)
        if corner:  # the vertices of the box, where linear pieces peak
            u = u.round()
        point = lower + u * (upper - lower)
        with torch.no_grad():
            z = model(point)
        slack = 1e-4 * (1 + z.abs())
        assert torch.all(low - slack <= z) and torch.all(z <= high + slack)
        true = z.gather(1, y[:, None]) - z
        true = true.scatter(1, y[:, None], torch.inf)
        assert torch.all(margins <= true + 1e-4 * (1 + true.abs().nan_to_num()))


def test_the_margin_bound_through_the_last_layer_is_at_least_as_tight():
    """Gowal et al.'s elision: bounding z_y - z_k directly beats l_y - u_k."""
    model = every_layer(0)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 5, (16,))
    elided = certify.margin_lower_bounds(model, x, y, eps=0.05)
    low, high = certify.interval_bounds(model, (x - 0.05).clamp(0, 1),
                                        (x + 0.05).clamp(0, 1))  # fmt: skip
    naive = (low.gather(1, y[:, None]) - high).scatter(1, y[:, None], torch.inf)
    assert torch.all(elided >= naive - 1e-5)
    assert torch.any(elided > naive + 1e-3)


def test_at_eps_zero_the_bounds_are_the_outputs():
    model = every_layer(1)
    x = torch.rand(4, 1, 8, 8)
    low, high = certify.interval_bounds(model, x, x)
    with torch.no_grad():
        torch.testing.assert_close(low, model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(high, model(x), atol=1e-5, rtol=1e-5)
    y = model(x).argmax(1)
    assert certify.verified(model, x, y, eps=0.0).all()


def test_layers_ibp_cannot_pass_are_named():
    class Residual(nn.Module):
        def forward(self, x):
            return x + 1

    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 4), Residual()))
    with pytest.raises(ValueError, match=r"layer 1\.1 \(Residual\)"):
        certify.interval_bounds(model, torch.zeros(1, 4), torch.ones(1, 4))
    bn = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    with pytest.raises(ValueError, match="model.eval"):
        certify.interval_bounds(bn, torch.zeros(2, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="lower <= upper"):
        certify.interval_bounds(bn.eval(), torch.ones(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="eps must be"):
        certify.verified(bn, torch.zeros(2, 4), torch.zeros(2).long(), eps=-0.1)


def _train(recipe: str, blobs, mlp, **overrides) -> nn.Module:
    """`mlp` trained on the blobs by a recipe of the training table."""
    x, y = blobs
    cfg = recipes.config(recipe, epochs=30, **overrides)
    loader = data.Batches(x, y, batch_size=50, shuffle=True)
    opt = torch.optim.Adam(mlp.parameters(), lr=5e-3)
    attack, objective = recipes.recipe_parts(cfg, len(loader))
    training.fit(mlp, loader, opt=opt, epochs=30, attack=attack,
                 objective=objective, progress=False)  # fmt: skip
    return mlp.eval()


@pytest.fixture(scope="module")
def ibp_model():
    blobs = toy.blobs()
    return _train("ibp", blobs, toy.mlp(), eps=0.1, kappa=0.5, eps_warmup=0.3), blobs


def test_no_attack_fools_an_example_ibp_verifies(ibp_model):
    model, (x, y) = ibp_model
    eps = 0.08
    proven = certify.verified(model, x, y, eps=eps)
    assert proven.float().mean() > 0.3, "the IBP-trained model verifies little"
    strong = evaluation.strong_attacks(eps, steps=50, n_targets=3, queries=300)
    result = evaluation.worst_case(model, [(x, y)], strong)
    fooled = ~result.robust
    assert not (proven & fooled).any()
    assert certify.verified_accuracy(model, [(x, y)], eps=eps) <= result.robust_accuracy
    assert result.robust_accuracy <= evaluation.accuracy(model, [(x, y)])


def test_verified_accuracy_falls_with_eps_and_ibp_training_beats_standard(
    ibp_model, blobs
):
    model, (x, y) = ibp_model
    loader = [(x, y)]
    curve = [
        certify.verified_accuracy(model, loader, eps=e) for e in (0, 0.04, 0.08, 0.2)
    ]
    assert curve == sorted(curve, reverse=True)
    standard = _train("standard", blobs, toy.mlp())
    assert certify.verified_accuracy(standard, loader, eps=0.08) < curve[2] - 0.2


def test_ibp_ramps_eps_up_and_kappa_down_over_the_warm_up(monkeypatch):
    seen = []
    real = certify.ibp_loss

    def spy(model, x, y, *, eps, kappa):
        seen.append((eps, kappa))
        return real(model, x, y, eps=eps, kappa=kappa)

    cfg = recipes.config("ibp", epochs=2, eps=0.2, kappa=0.4, eps_warmup=0.5)
    _, objective = recipes.recipe_parts(cfg, steps_per_epoch=4)  # warm-up: 4 batches
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    monkeypatch.setattr(certify, "ibp_loss", spy)
    for _ in range(6):
        objective(model, x, x, y)
    eps, kappa = zip(*seen)
    assert eps == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert kappa == pytest.approx([0.85, 0.7, 0.55, 0.4, 0.4, 0.4])


# ------------------------------------------------------- randomized smoothing


class Constant(nn.Module):
    """Predicts class `c` whatever the input (logits of 10 classes)."""

    def __init__(self, c: int):
        super().__init__()
        self.c = c

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.c), 10).float()


@pytest.mark.parametrize("n, batch_size", [(7, 3), (50, 1000), (1000, 64)])
def test_noise_counts_count_every_draw(n, batch_size):
    x = torch.rand(5, 1, 4, 4)
    counts = certify.noise_counts(Constant(3), x, sigma=0.5, n=n, batch_size=batch_size)
    assert counts.shape == (5, 10)
    assert counts[:, 3].tolist() == [n] * 5 and counts.sum().item() == 5 * n


def test_a_constant_classifier_is_certified_at_the_clopper_pearson_radius():
    """All n draws agree: p_A's one-sided lower bound is alpha^(1/n) (the exact
    beta quantile, computed here by scipy.stats.beta as an independent oracle)."""
    n, alpha, sigma = 500, 0.001, 0.25
    cert = certify.certify(Constant(4), torch.rand(3, 1, 4, 4), sigma=sigma, n0=10,
                           n=n, alpha=alpha)  # fmt: skip
    p = scipy.stats.beta.ppf(alpha, n, 1)
    assert p == pytest.approx(alpha ** (1 / n))
    assert cert.prediction.tolist() == [4, 4, 4]
    torch.testing.assert_close(cert.p_lower, torch.full((3,), p, dtype=torch.float32))
    radius = sigma * scipy.stats.norm.ppf(p)
    torch.testing.assert_close(
        cert.radius, torch.full((3,), radius, dtype=torch.float32)
    )


class CoinFlip(nn.Module):
    """Class 0 or 1 at random: no majority a test can find."""

    def forward(self, x):
        return nn.functional.one_hot(torch.randint(0, 2, (len(x),)), 10).float()


def test_smoothing_abstains_where_the_vote_is_a_coin_flip():
    torch.manual_seed(0)
    x = torch.rand(20, 1, 4, 4)
    assert (certify.predict(CoinFlip(), x, sigma=0.5, n=200) == certify.ABSTAIN).mean(
        dtype=torch.float
    ) > 0.9
    cert = certify.certify(CoinFlip(), x, sigma=0.5, n0=20, n=200)
    assert (cert.prediction == certify.ABSTAIN).all() and (cert.radius == 0).all()


def test_certified_accuracy_is_non_increasing_in_the_radius():
    cert = certify.Certificate(
        torch.tensor([0, 1, certify.ABSTAIN, 3]),
        torch.tensor([0.1, 0.6, 0.0, 1.2]),
        torch.tensor([0.6, 0.8, 0.4, 0.9]),
    )
    y = torch.tensor([0, 1, 2, 0])
    assert certify.certified_accuracy(cert, y, [0.0, 0.25, 0.5, 1.0]) == [
        0.5,
        0.25,
        0.25,
        0.0,
    ]


def test_bad_sampling_arguments_are_named():
    for bad in (dict(sigma=0), dict(sigma=-1.0), dict(n=0), dict(batch_size=1.5)):
        args = dict(sigma=0.25, n=10, batch_size=10) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            certify.noise_counts(Constant(0), torch.zeros(1, 1, 2, 2), **args)


@pytest.fixture(scope="module")
def smoothed_model():
    blobs = toy.blobs()
    return _train("noise", blobs, toy.mlp(), sigma=0.25), blobs


def test_certified_examples_survive_an_attack_on_the_smoothed_classifier(
    smoothed_model,
):
    """EOT-PGD-L2 on the noisy model (Salman et al. 2019) inside each certified
    radius: the smoothed prediction of the attacked point, when it decides, is
    still the certified class (at alpha 0.001 a flip would be a broken proof)."""
    model, (x, y) = smoothed_model
    torch.manual_seed(0)
    sigma, x, y = 0.25, x[:60], y[:60]
    cert = certify.certify(model, x, sigma=sigma, n0=50, n=500, alpha=0.001)
    ok = (cert.prediction == y) & (cert.radius > 0.05)
    assert ok.float().mean() > 0.5, "too few certified examples to test"
    xs, ys, radii = x[ok], y[ok], cert.radius[ok]
    noisy = EOT(certify.Noisy(model, sigma=sigma), samples=16)
    x_adv = torch.stack([
        attacks.pgd(noisy, xi[None], yi[None], eps=float(r), alpha=float(r) / 4,
                    steps=10, norm="l2")[0]
        for xi, yi, r in zip(xs, ys, radii)
    ])  # fmt: skip
    assert torch.all((x_adv - xs).flatten(1).norm(dim=1) <= radii + 1e-4)
    after = certify.predict(model, x_adv, sigma=sigma, n=500, alpha=0.001)
    flipped = (after != ys) & (after != certify.ABSTAIN)
    assert int(flipped.sum()) == 0
    # and the same attack with 4x the radius does flip some: it is a real attack
    far = torch.stack([
        attacks.pgd(noisy, xi[None], yi[None], eps=4 * float(r), alpha=float(r),
                    steps=10, norm="l2")[0]
        for xi, yi, r in zip(xs, ys, radii)
    ])  # fmt: skip
    assert (certify.predict(model, far, sigma=sigma, n=200) != ys).any()


def test_noise_training_draws_fresh_noise_every_batch():
    """ART's smoothing trainer once drew its noise a single time (PR #1678)."""
    cfg = recipes.config("noise", sigma=0.5)
    noisy, objective = recipes.recipe_parts(cfg)  # the noise takes the attack's place
    seen = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    spy = lambda z: (seen.append(z.clone()), model(z))[1]  # noqa: E731
    x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
    for _ in range(2):
        objective(spy, x, noisy(model, x, y), y)
    assert not torch.equal(seen[0], seen[1])
    assert 0.3 < float((seen[0] - x).std()) < 0.7  # sigma 0.5, not clipped to [0, 1]


def test_the_default_partial_configs_train(blobs):
    """The recipe table's IBP and noise rows make configs the zoo can key."""
    for recipe in ("ibp", "noise"):
        cfg = recipes.config(recipe)
        assert cfg["recipe"] == recipe
    with pytest.raises(ValueError, match="kappa"):
        recipes.config("ibp", kappa=1.5)
    with pytest.raises(ValueError, match="sigma"):
        recipes.config("noise", sigma=0)
