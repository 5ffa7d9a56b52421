"""Input-transformation defenses, BPDA and EOT: invariants, oracles and behaviour."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from robustkit import attacks, data, defenses, evaluation, recipes, zoo

TRANSFORMS = {
    "jpeg": partial(defenses.jpeg, quality=50),
    "bit_depth": partial(defenses.bit_depth, bits=3),
    "gaussian_blur": partial(defenses.gaussian_blur, sigma=1.0),
    "median_filter": partial(defenses.median_filter, size=3),
    "tv_denoise": partial(defenses.tv_denoise, weight=0.1, steps=10),
    "gaussian_noise": partial(defenses.gaussian_noise, sigma=0.2),
    "random_resize_pad": partial(defenses.random_resize_pad, max_extra=4),
    "compose": defenses.compose(
        partial(defenses.bit_depth, bits=4), partial(defenses.median_filter, size=3)
    ),
}
RANDOM = {"gaussian_noise", "random_resize_pad"}
QUANTIZERS = {"jpeg": TRANSFORMS["jpeg"], "bit_depth": TRANSFORMS["bit_depth"]}
ZERO_GRADIENT = {"jpeg", "bit_depth", "compose"}  # compose starts with bit_depth


def images(n=4, c=1, size=12, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=gen).to(dtype)


def accuracy(model, x, y, attack):
    loader = data.Batches(x, y, batch_size=200)
    return evaluation.robust_accuracy(model, loader, attack, progress=False)


@pytest.fixture(scope="module")
def mnist_surrogate(private_cache):
    """A separately trained, smaller MNIST model: the transfer attacker's surrogate."""
    cfg = recipes.config(n_train=2_000, epochs=2, seed=1)
    model, _ = zoo.load_or_train(
        "baseline", cfg, partial(recipes.train, progress=False)
    )
    return model


# ------------------------------------------------------------------ the transforms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_keep_shape_dtype_device_range_and_input(name, channels, dtype):
    x = images(c=channels, dtype=dtype)
    before = x.clone()
    out = TRANSFORMS[name](x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before) and out is not x
    assert not out.requires_grad


@pytest.mark.parametrize("name", TRANSFORMS)
def test_deterministic_transforms_repeat_and_random_ones_do_not(name):
    x = images()
    torch.manual_seed(0)
    first = TRANSFORMS[name](x)
    assert torch.equal(first, TRANSFORMS[name](x)) == (name not in RANDOM)
    torch.manual_seed(0)  # the global RNG is the only source of randomness
    assert torch.equal(first, TRANSFORMS[name](x))


@pytest.mark.parametrize(
    "call, match",
    [
        (partial(defenses.jpeg, quality=0), "quality"),
        (partial(defenses.jpeg, quality=101), "quality"),
        (partial(defenses.jpeg, quality=50.0), "quality"),
        (lambda x: defenses.jpeg(x.repeat(1, 2, 1, 1)), "channels"),
        (partial(defenses.bit_depth, bits=0), "bits"),
        (partial(defenses.gaussian_blur, sigma=-1.0), "sigma"),
        (partial(defenses.gaussian_blur, kernel_size=4), "kernel_size"),
        (partial(defenses.gaussian_blur, kernel_size=25), "kernel_size"),
        (partial(defenses.median_filter, size=4), "size"),
        (partial(defenses.median_filter, size=0), "size"),
        (partial(defenses.tv_denoise, weight=-0.1), "weight"),
        (partial(defenses.tv_denoise, steps=0), "steps"),
        (partial(defenses.gaussian_noise, sigma=-0.1), "sigma"),
        (partial(defenses.random_resize_pad, max_extra=-1), "max_extra"),
        (lambda x: defenses.bit_depth(x[0]), r"\(N, C, H, W\)"),
        (lambda x: defenses.median_filter((x * 255).to(torch.uint8)), "float"),
        (lambda x: defenses.compose(), "at least one"),
        (lambda x: defenses.compose(defenses.jpeg, 3), "callable"),
        (lambda x: defenses.InputTransform(torch.nn.Identity(), "jpeg"), "callable"),
        (lambda x: defenses.EOT(torch.nn.Identity(), samples=0), "samples"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call(images())


def test_bit_depth_quantizes_to_2_to_the_bits_levels():
    x = images(n=16)
    assert set(defenses.bit_depth(x, bits=1).unique().tolist()) <= {0.0, 1.0}
    levels = defenses.bit_depth(x, bits=2).unique()
    torch.testing.assert_close(levels, torch.tensor([0, 1, 2, 3]) / 3)
    eight_bit = (x * 255).round() / 255
    torch.testing.assert_close(defenses.bit_depth(eight_bit, bits=8), eight_bit)


def test_jpeg_at_quality_100_stays_close_and_low_quality_does_not():
    # smooth images (upsampled noise), like natural ones; RGB loses some colour
    # detail even at quality 100 (libjpeg subsamples chroma), so compare means
    for c in (1, 3):
        x = F.interpolate(images(c=c, size=4), size=32, mode="bilinear")
        close = (defenses.jpeg(x, quality=100) - x).abs().mean()
        assert close <= 0.01
        assert (defenses.jpeg(x, quality=5) - x).abs().mean() > 4 * close
    x = F.interpolate(images(size=8), size=32, mode="bilinear")
    assert (defenses.jpeg(x, quality=100) - x).abs().max() <= 4 / 255


def test_smoothing_matches_reference_implementations():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    from torchvision.transforms.functional import gaussian_blur

    x = images(c=3)
    for sigma, k in [(1.0, 7), (0.5, 3), (2.0, 9)]:
        torch.testing.assert_close(
            defenses.gaussian_blur(x, sigma=sigma, kernel_size=k),
            gaussian_blur(x, [k, k], [sigma, sigma]),  # also reflect padding
        )
    for size in (3, 5):
        # scipy's "mirror" is torch's "reflect": the edge pixel is not repeated
        expected = scipy_ndimage.median_filter(
            x.numpy(), (1, 1, size, size), mode="mirror"
        )
        torch.testing.assert_close(
            defenses.median_filter(x, size=size), torch.from_numpy(expected)
        )


def test_smoothing_keeps_constants_and_median_removes_a_spike():
    constant = torch.full((2, 3, 10, 10), 0.3)
    for t in ("gaussian_blur", "median_filter", "tv_denoise"):
        torch.testing.assert_close(TRANSFORMS[t](constant), constant)
    spiky = constant.clone()
    spiky[:, :, 4, 6] = 1.0
    torch.testing.assert_close(defenses.median_filter(spiky), constant)


def test_tv_denoise_lowers_the_objective_it_minimizes():
    x, weight = images(n=2, size=16), 0.1

    def objective(u):
        g_h, g_w = defenses._grad(u)
        tv = (g_h**2 + g_w**2).sqrt().flatten(1).sum(1)
        return 0.5 * (u - x).pow(2).flatten(1).sum(1) + weight * tv

    u = defenses.tv_denoise(x, weight=weight, steps=50)
    assert (objective(u) < 0.7 * objective(x)).all()
    for _ in range(5):  # a minimum: random nearby points are worse
        nearby = (u + 0.01 * torch.randn_like(u)).clamp(0, 1)
        assert (objective(u) < objective(nearby)).all()


def test_random_resize_pad_draws_per_image_and_is_identity_without_extra():
    x = images()
    torch.testing.assert_close(defenses.random_resize_pad(x, max_extra=0), x)
    torch.manual_seed(0)
    same = defenses.random_resize_pad(x[:1].expand(16, -1, -1, -1), max_extra=6)
    assert len({tuple(img.flatten().tolist()) for img in same}) > 1


def test_compose_applies_in_order():
    x = images()
    halve = lambda v: v / 2  # noqa: E731
    binarize = partial(defenses.bit_depth, bits=1)
    chained = defenses.compose(halve, binarize)
    torch.testing.assert_close(chained(x), binarize(halve(x)))
    assert not torch.equal(chained(x), halve(binarize(x)))


# ------------------------------------------------------------- BPDA and true gradients


@pytest.mark.parametrize("name", ["jpeg", "bit_depth", "median_filter", "tv_denoise"])
def test_bpda_backward_is_the_identity(mlp, blobs, name):
    x, y = blobs[0][:32], blobs[1][:32]
    t = TRANSFORMS[name]
    bpda = defenses.InputTransform(mlp, t, bpda=True)
    grad = attacks.input_gradient(bpda, x, y, attacks.cross_entropy)
    expected = attacks.input_gradient(mlp, t(x), y, attacks.cross_entropy)
    torch.testing.assert_close(grad, expected)
    # the same forward pass as the defended model, and no gradient left on weights
    torch.testing.assert_close(bpda(x), defenses.InputTransform(mlp, t)(x))
    assert all(p.grad is None for p in mlp.parameters())
    assert "bpda=True" in repr(bpda)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_true_gradient_is_zero_through_quantizers_only(mlp, blobs, name):
    x, y = blobs[0][:32], blobs[1][:32]
    defended = defenses.InputTransform(mlp, TRANSFORMS[name])
    torch.manual_seed(0)
    grad = attacks.input_gradient(defended, x, y, attacks.cross_entropy)
    assert torch.isfinite(grad).all()
    assert (grad == 0).all() == (name in ZERO_GRADIENT)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_sanity_checks_flag_the_masked_gradients_of_quantizers(mnist_baseline, name):
    model, x, y = mnist_baseline
    defended = defenses.InputTransform(model, QUANTIZERS[name])
    torch.manual_seed(0)
    report = evaluation.sanity_checks(
        defended, x[:64], y[:64], eps=0.2, steps=3, queries=20, noise_draws=2
    )
    assert {
        "input gradients finite and non-zero",
        "unbounded attack reaches chance",
    } <= set(report.failed())


def test_adaptive_attack_beats_transfer_and_the_true_gradient_on_jpeg(
    mnist_baseline, mnist_surrogate
):
    model, x, y = mnist_baseline
    x, y = x[:200], y[:200]
    t = partial(defenses.jpeg, quality=75)
    defended = defenses.InputTransform(model, t)
    pgd = partial(attacks.pgd, eps=0.2, alpha=0.025, steps=20)
    torch.manual_seed(0)
    adaptive = accuracy(defenses.InputTransform(model, t, bpda=True), x, y, pgd)
    transfer = accuracy(
        defended, x, y, partial(attacks.transfer, surrogate=mnist_surrogate, attack=pgd)
    )
    gray_box = accuracy(  # the undefended model itself as the surrogate
        defended, x, y, partial(attacks.transfer, surrogate=model, attack=pgd)
    )
    naive = accuracy(defended, x, y, pgd)  # through jpeg's true (zero) gradient
    assert adaptive <= transfer - 0.10
    assert adaptive <= naive - 0.10
    assert adaptive <= gray_box + 0.02


# --------------------------------------------------------------------------- EOT


def test_eot_averages_logits_over_fresh_draws(mlp, blobs):
    x = blobs[0][:16]
    noisy = defenses.InputTransform(mlp, TRANSFORMS["gaussian_noise"])
    torch.manual_seed(0)
    expected = torch.stack([noisy(x) for _ in range(5)]).mean(0)
    torch.manual_seed(0)
    torch.testing.assert_close(defenses.EOT(noisy, samples=5)(x), expected)
    torch.testing.assert_close(defenses.EOT(mlp, samples=3)(x), mlp(x))


def test_eot_attack_beats_a_single_draw_on_random_resizing(mnist_baseline):
    model, x, y = mnist_baseline
    x, y = x[:200], y[:200]
    randomized = defenses.InputTransform(
        model, partial(defenses.random_resize_pad, max_extra=4)
    )
    pgd = partial(attacks.pgd, eps=0.15, alpha=0.0375, steps=10)
    eot = partial(
        attacks.transfer, surrogate=defenses.EOT(randomized, samples=10), attack=pgd
    )
    torch.manual_seed(0)
    single_draw = accuracy(randomized, x, y, pgd)
    torch.manual_seed(0)
    assert accuracy(randomized, x, y, eot) <= single_draw - 0.05


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_stay_on_the_gpu(name):
    x = images(c=3).cuda()
    out = TRANSFORMS[name](x)
    assert out.device == x.device and out.shape == x.shape
    if name not in RANDOM:
        expected = TRANSFORMS[name](x.cpu())
        torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=0)
