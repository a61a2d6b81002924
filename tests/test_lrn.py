"""Tests for alexnet_jax.lrn: the paper's formula (§3.3), its gradient and its conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alexnet_jax import lrn
from alexnet_jax.lrn import (
    from_convnet_scale,
    from_torch_alpha,
    local_response_norm,
    to_torch_alpha,
    within_map_norm,
)
from tests import reference

PAPER = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}


def torch_lrn(a: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """PyTorch's nn.LocalResponseNorm in float64: alpha/n times a zero-padded window sum.

    torch pads size//2 channels before and (size-1)//2 after, average-pools over `size` channels
    (zeros included, so the sum is divided by n) and returns a / (k + alpha * mean)^beta.
    """
    a = np.asarray(a, np.float64)
    pad = [(0, 0)] * (a.ndim - 1) + [(size // 2, (size - 1) // 2)]
    sq = np.pad(a**2, pad)
    n_channels = a.shape[-1]
    window_sum = sum(sq[..., j : j + n_channels] for j in range(size))
    return a / (k + alpha / size * window_sum) ** beta


def relu_activations(seed: int, shape: tuple[int, ...], scale: float = 30.0) -> np.ndarray:
    """Post-ReLU-like activations: half zeros, the rest with std ~scale as after conv1."""
    x = np.random.default_rng(seed).normal(0.0, scale, shape)
    return np.maximum(x, 0.0).astype(np.float32)


def assert_rel_close(actual, desired, rtol: float) -> None:
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=0.0)


@pytest.mark.parametrize(
    "shape, size",
    [
        ((4, 6, 6, 96), 5),  # conv1-like: 96 channels, the paper's n.
        ((16, 3), 5),  # Window wider than N: clipped at both ends for every channel.
        ((16, 7), 5),
        ((16, 7), 3),
        ((5, 7), 7),
        ((32,), 1),  # Rank 1; n=1 is just a_i / (k + alpha a_i^2)^beta.
        ((2, 3, 4, 5, 11), 9),  # Rank 5.
    ],
)
@pytest.mark.parametrize("use_custom_vjp", [True, False])
def test_matches_float64_reference(shape, size, use_custom_vjp):
    x = relu_activations(0, shape, scale=40.0)
    params = dict(PAPER, size=size)
    got = local_response_norm(jnp.asarray(x), use_custom_vjp=use_custom_vjp, **params)
    want = reference.lrn(x, **params)
    assert got.shape == x.shape and got.dtype == jnp.float32
    assert_rel_close(got, want, rtol=1e-5)
    # The clipped ends, where a wrong padding or window offset shows first.
    half = size // 2
    if half:
        assert_rel_close(got[..., :half], want[..., :half], rtol=1e-5)
        assert_rel_close(got[..., -half:], want[..., -half:], rtol=1e-5)


def test_normalization_bites_and_alpha_is_not_divided_by_size():
    x = relu_activations(1, (8, 5, 5, 96), scale=40.0)
    got = np.asarray(local_response_norm(jnp.asarray(x), **PAPER), np.float64)
    positive = x > 0
    # Ratio to the alpha=0 output x / k^beta: with std 40 the paper's term shrinks activations
    # by ~13% on average (by half at the largest), which a wrong alpha would change.
    shrink = got[positive] / (x[positive] / PAPER["k"] ** PAPER["beta"])
    assert np.all(shrink <= 1.0)
    assert 0.82 < shrink.mean() < 0.92, shrink.mean()
    assert shrink.min() < 0.6, shrink.min()
    # Caffe/PyTorch-style alpha/n (a term 5x weaker) must be distinguishable at this scale.
    weak = reference.lrn(x, **dict(PAPER, alpha=PAPER["alpha"] / PAPER["size"]))
    assert np.max(np.abs(got - weak) / np.maximum(np.abs(weak), 1e-30)) > 0.1


def test_edge_channels_use_the_clipped_window():
    # One channel of ones: channel i sees only the channels of its clipped window.
    n_channels, size, alpha, beta, k = 7, 5, 0.5, 1.0, 1.0
    x = jnp.ones((n_channels,), jnp.float32)
    got = np.asarray(local_response_norm(x, size=size, alpha=alpha, beta=beta, k=k))
    window_counts = np.array([3, 4, 5, 5, 5, 4, 3], np.float64)
    np.testing.assert_allclose(got, 1.0 / (k + alpha * window_counts), rtol=1e-6)


def test_torch_convention_conversion():
    x = relu_activations(2, (3, 4, 4, 19), scale=40.0)
    torch_alpha = 5e-4  # The paper's constants as written for nn.LocalResponseNorm.
    want = torch_lrn(x, size=5, alpha=torch_alpha, beta=0.75, k=2.0)
    got = local_response_norm(
        jnp.asarray(x), size=5, alpha=from_torch_alpha(torch_alpha, 5), beta=0.75, k=2.0
    )
    assert_rel_close(got, want, rtol=1e-5)
    assert from_torch_alpha(torch_alpha, 5) == pytest.approx(PAPER["alpha"])
    assert to_torch_alpha(PAPER["alpha"], 5) == pytest.approx(torch_alpha)
    assert from_torch_alpha(to_torch_alpha(3e-3, 7), 7) == pytest.approx(3e-3)
    # And torch's formula *is* the paper's once alpha is converted.
    assert_rel_close(reference.lrn(x, **PAPER), want, rtol=1e-12)


@pytest.mark.parametrize("use_custom_vjp", [True, False])
@pytest.mark.parametrize("shape, size", [((2, 3, 3, 12), 5), ((4, 3), 5), ((6,), 3)])
def test_check_grads_float64(shape, size, use_custom_vjp):
    with jax.enable_x64(True):
        x = jnp.asarray(relu_activations(3, shape, scale=20.0), jnp.float64)
        # Shift off zero: the formula is smooth everywhere, but finite differences across the
        # ReLU-like zeros test nothing extra.
        x = x + 1.0

        def f(v):
            return local_response_norm(v, use_custom_vjp=use_custom_vjp, **dict(PAPER, size=size))

        assert f(x).dtype == jnp.float64
        check_grads(f, (x,), order=1, modes=("rev",))


def test_custom_vjp_gradient_matches_autodiff_float32():
    x = jnp.asarray(relu_activations(4, (4, 6, 6, 96), scale=40.0))
    g = jnp.asarray(np.random.default_rng(5).normal(size=x.shape).astype(np.float32))

    def vjp(use_custom_vjp):
        y, pullback = jax.vjp(lambda v: local_response_norm(v, use_custom_vjp=use_custom_vjp), x)
        return y, pullback(g)[0]

    y_custom, dx_custom = vjp(True)
    y_auto, dx_auto = vjp(False)
    np.testing.assert_array_equal(y_custom, y_auto)
    # dx = g d^-beta - 2 alpha beta x (...) subtracts two terms of similar size where x is large,
    # so entries that cancel to ~0 get an absolute floor at 1e-6 of the gradient's scale.
    atol = 1e-6 * float(jnp.max(jnp.abs(dx_auto)))
    np.testing.assert_allclose(dx_custom, dx_auto, rtol=1e-5, atol=atol)


def test_custom_vjp_gradient_matches_autodiff_float64():
    with jax.enable_x64(True):
        x = jnp.asarray(relu_activations(6, (2, 4, 4, 13), scale=40.0), jnp.float64)
        g = jnp.asarray(np.random.default_rng(7).normal(size=x.shape))
        grads = [
            jax.vjp(lambda v, c=c: local_response_norm(v, use_custom_vjp=c), x)[1](g)[0]
            for c in (True, False)
        ]
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_computes_in_float32(dtype):
    x_half = jnp.asarray(relu_activations(8, (2, 5, 5, 96), scale=40.0), dtype)
    got = local_response_norm(x_half, **PAPER)
    assert got.dtype == dtype
    want = local_response_norm(x_half.astype(jnp.float32), **PAPER)
    # Computing in float32 and rounding once bounds the error by half an ulp of the output
    # format: 2^-8 for bfloat16 (8-bit significand), 2^-11 for float16.
    unit_roundoff = 2.0**-8 if dtype == jnp.bfloat16 else 2.0**-11
    assert_rel_close(got, want, rtol=unit_roundoff)
    # The gradient comes back in the input dtype too.
    dx = jax.grad(lambda v: jnp.sum(local_response_norm(v).astype(jnp.float32)))(x_half)
    assert dx.dtype == dtype


@pytest.mark.parametrize("size", [0, -1, 2, 4, 6, 2.5, 5.0, True, None])
def test_size_must_be_positive_odd_int(size):
    with pytest.raises(ValueError, match=r"positive odd integer, got size="):
        local_response_norm(jnp.ones((2, 8)), size=size)


def test_rejects_scalar_and_integer_inputs():
    with pytest.raises(ValueError, match="channel axis"):
        local_response_norm(jnp.float32(1.0))
    with pytest.raises(TypeError, match="floating-point"):
        local_response_norm(jnp.ones((2, 8), jnp.int32))


def test_window_sum_is_reduce_window_with_centred_zero_padding():
    v = jnp.arange(1.0, 8.0)
    np.testing.assert_array_equal(lrn._window_sum(v, 3), [3, 6, 9, 12, 15, 18, 13])
    jaxpr = str(jax.make_jaxpr(lambda x: local_response_norm(x))(jnp.ones((2, 8))))
    assert "reduce_window_sum" in jaxpr


# --- within_map_norm: cuda-convnet's `rnorm`, normalization over a spatial window per map ---

# layers-18pct.cfg's rnorm1/rnorm2 (layer-params-18pct: scale=0.00005, pow=.75; k is 1).
CIFAR_18PCT = {"size": 3, "alpha": 0.00005 / 9, "beta": 0.75, "k": 1.0}


# Strong enough that the window matters: with activations of std ~40 the alpha term is several
# times k, so a window off by one pixel changes outputs by far more than float32 rounding.
STRONG = {"alpha": 1e-3, "beta": 0.75, "k": 1.0}


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("use_custom_vjp", [True, False])
def test_within_map_matches_float64_reference(size, use_custom_vjp):
    # Non-square, so that swapping the two spatial axes would show.
    x = relu_activations(10 + size, (2, 7, 9, 5), scale=40.0)
    got = within_map_norm(jnp.asarray(x), size=size, use_custom_vjp=use_custom_vjp, **STRONG)
    want = reference.within_map(x, size, **STRONG)
    assert got.shape == x.shape and got.dtype == jnp.float32
    assert_rel_close(got, want, rtol=1e-5)
    # Corners (clipped on two sides) and the centre (the full size x size window).
    for y, xx in [(0, 0), (0, -1), (-1, 0), (-1, -1), (3, 4)]:
        assert_rel_close(got[:, y, xx], want[:, y, xx], rtol=1e-5)


def test_within_map_18pct_constants_match_reference():
    x = relu_activations(20, (3, 8, 8, 32), scale=40.0)
    got = within_map_norm(jnp.asarray(x), **CIFAR_18PCT)
    assert_rel_close(got, reference.within_map(x, **CIFAR_18PCT), rtol=1e-5)


@pytest.mark.parametrize(
    "size, rows",
    [
        (3, [2, 3, 4]),  # Centred: the window of p is p-1..p+1.
        (5, [1, 2, 3, 4, 5]),
        # Even: cuda-convnet's start -sizeX/2 + p puts the extra pixel above/left, so the
        # window of p is p-1..p (size 2), p-2..p+1 (size 4); pixel 3 is seen from 3..4, 2..5.
        (2, [3, 4]),
        (4, [2, 3, 4, 5]),
    ],
)
def test_within_map_window_placement(size, rows):
    # Ones everywhere and one large pixel at (3, 3): exactly the pixels whose window holds it
    # are pushed down, which pins the window's offset, including the side of an even window.
    x = np.ones((1, 8, 8, 1), np.float32)
    x[0, 3, 3, 0] = 100.0
    params = dict(size=size, alpha=0.01, beta=1.0)
    got = np.asarray(within_map_norm(jnp.asarray(x), **params))[0, :, :, 0]
    assert got[3, 3] < 0.05 * 100.0
    background = np.asarray(within_map_norm(jnp.ones_like(x), **params))[0, :, :, 0]
    hit = got < 0.5 * background
    hit[3, 3] = True  # The big pixel itself is smaller only relative to its own value.
    want = np.zeros((8, 8), bool)
    want[np.ix_(rows, rows)] = True
    np.testing.assert_array_equal(hit, want)


def test_within_map_border_uses_full_size_squared_scale():
    # A constant map: the denominator is 1 + alpha * (pixels inside the window) and alpha is
    # scale / size^2 everywhere, including the corners where only 4 of 9 pixels exist.
    scale, size = 0.9, 3
    alpha = from_convnet_scale(scale, size, "rnorm")
    got = np.asarray(within_map_norm(jnp.ones((1, 4, 5, 1)), size=size, alpha=alpha, beta=1.0))
    counts = np.array([[4, 6, 6, 6, 4], [6, 9, 9, 9, 6], [6, 9, 9, 9, 6], [4, 6, 6, 6, 4]])
    np.testing.assert_allclose(got[0, :, :, 0], 1.0 / (1.0 + scale / 9 * counts), rtol=1e-6)


def test_within_map_is_spatial_not_cross_map():
    # Channel 0 is huge, channel 1 is ones. Within-map normalization never lets channel 0 reach
    # channel 1; a cross-map window (local_response_norm) would.
    x = np.ones((1, 5, 5, 2), np.float32)
    x[..., 0] = 1000.0
    params = dict(size=3, alpha=0.1, beta=1.0, k=1.0)
    got = np.asarray(within_map_norm(jnp.asarray(x), **params))
    counts = np.outer([2, 3, 3, 3, 2], [2, 3, 3, 3, 2])  # Pixels inside each 3x3 window.
    np.testing.assert_allclose(got[0, :, :, 1], 1.0 / (1.0 + 0.1 * counts), rtol=1e-6)
    alone = np.asarray(within_map_norm(jnp.asarray(x[..., 1:]), **params))
    np.testing.assert_array_equal(got[..., 1:], alone)
    cross = np.asarray(local_response_norm(jnp.asarray(x), **params))
    assert np.all(cross[..., 1] < 0.01 * got[..., 1])


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_spatial_window_sum_transpose(size):
    # <W u, v> == <u, W^T v>: the mirrored padding is the exact transpose of the window sum.
    with jax.enable_x64(True):
        rng = np.random.default_rng(size)
        u = jnp.asarray(rng.normal(size=(2, 6, 7, 3)))
        v = jnp.asarray(rng.normal(size=(2, 6, 7, 3)))
        lhs = jnp.vdot(lrn._spatial_window_sum(u, size), v)
        rhs = jnp.vdot(u, lrn._spatial_window_sum_t(v, size))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
        # Only odd windows are symmetric; for even ones the mirroring is what makes this hold.
        same = np.allclose(lrn._spatial_window_sum_t(v, size), lrn._spatial_window_sum(v, size))
        assert same == (size % 2 == 1)


@pytest.mark.parametrize("size", [2, 3, 4, 5])
@pytest.mark.parametrize("use_custom_vjp", [True, False])
def test_within_map_check_grads_float64(size, use_custom_vjp):
    with jax.enable_x64(True):
        x = jnp.asarray(relu_activations(30 + size, (2, 5, 6, 3), scale=20.0), jnp.float64)
        x = x + 1.0  # Off the ReLU-like zeros, as in test_check_grads_float64.

        def f(v):
            return within_map_norm(
                v, size=size, alpha=1e-3, beta=0.75, k=1.0, use_custom_vjp=use_custom_vjp
            )

        assert f(x).dtype == jnp.float64
        check_grads(f, (x,), order=1, modes=("rev",))


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_within_map_custom_vjp_matches_autodiff(size):
    x32 = jnp.asarray(relu_activations(40 + size, (2, 7, 8, 16), scale=40.0))
    g32 = jnp.asarray(np.random.default_rng(41).normal(size=x32.shape).astype(np.float32))

    def dx(x, g, use_custom_vjp):
        def f(v):
            return within_map_norm(v, size=size, use_custom_vjp=use_custom_vjp, **STRONG)

        return jax.vjp(f, x)[1](g)[0]

    want = dx(x32, g32, False)
    atol = 1e-6 * float(jnp.max(jnp.abs(want)))  # Cancellation floor, as for LRN above.
    np.testing.assert_allclose(dx(x32, g32, True), want, rtol=1e-5, atol=atol)
    with jax.enable_x64(True):
        x64, g64 = jnp.asarray(x32, jnp.float64), jnp.asarray(g32, jnp.float64)
        np.testing.assert_allclose(dx(x64, g64, True), dx(x64, g64, False), rtol=1e-11, atol=1e-14)


def test_from_convnet_scale():
    # layers-18pct rnorm: scale 0.00005 over a 3x3 window.
    assert from_convnet_scale(0.00005, 3, "rnorm") == pytest.approx(0.00005 / 9)
    # layers-145 cnorm2 (rnorm, size 5, scale 0.001) and rnorm1/2 (cmrnorm, size 5, 0.0001).
    assert from_convnet_scale(0.001, 5, "rnorm") == pytest.approx(4e-5)
    assert from_convnet_scale(0.0001, 5, "cmrnorm") == pytest.approx(2e-5)
    # cmrnorm's division by n is PyTorch's alpha/n convention.
    assert from_convnet_scale(5e-4, 5, "cmrnorm") == pytest.approx(from_torch_alpha(5e-4, 5))
    with pytest.raises(ValueError, match="'rnorm'"):
        from_convnet_scale(0.001, 5, "cnorm")


def test_within_map_half_precision_computes_in_float32():
    x_half = jnp.asarray(relu_activations(50, (2, 6, 6, 8), scale=40.0), jnp.bfloat16)
    got = within_map_norm(x_half, **STRONG, size=3)
    assert got.dtype == jnp.bfloat16
    want = within_map_norm(x_half.astype(jnp.float32), **STRONG, size=3)
    assert_rel_close(got, want, rtol=2.0**-8)
    jaxpr = str(jax.make_jaxpr(lambda v: within_map_norm(v, size=3, **STRONG))(x_half))
    assert "reduce_window_sum" in jaxpr


@pytest.mark.parametrize("size", [0, -1, 2.5, 3.0, True, None])
def test_within_map_size_must_be_positive_int(size):
    with pytest.raises(ValueError, match=r"positive integer, got size="):
        within_map_norm(jnp.ones((1, 4, 4, 2)), size=size, alpha=1e-3, beta=0.75)


def test_within_map_rejects_bad_rank_and_integer_inputs():
    with pytest.raises(ValueError, match="rank 4"):
        within_map_norm(jnp.ones((4, 4, 2)), size=3, alpha=1e-3, beta=0.75)
    with pytest.raises(TypeError, match="floating-point"):
        within_map_norm(jnp.ones((1, 4, 4, 2), jnp.int32), size=3, alpha=1e-3, beta=0.75)
