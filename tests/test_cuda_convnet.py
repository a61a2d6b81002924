"""The response normalizations against cuda-convnet's kernels, re-implemented in float64 NumPy.

The released 2012 code (yrmo/AlexNet-Source-Code) calls `convResponseNormCrossMap(images,
denoms, acts, channels, size, scale, pow, minDiv, blocked)` for a `cmrnorm` layer and
`convResponseNorm(images, denoms, acts, channels, size, scale, pow)` for an `rnorm` layer
(src/layer.cu, CrossMapResponseNormLayer::fpropActs and ResponseNormLayer::fpropActs), after
layer.py divided the file's `scale` by `size` (cmrnorm) or `size`^2 (rnorm). The release omits
the kernels; the reference below follows the nearest public source, cuda-convnet2's
`cudaconv3/src/conv_util.cu` (as kept in pytorch/pytorch under caffe2/contrib/cuda-convnet2):

* kFCNorm (cross-map): filter f sums the squares of filters `startF = -sizeF/2 + f` up to
  `startF + sizeF`, clipped by `MAX(0, startF)` and `MIN(numFilters, ...)`; then
  `prod = minDiv + addScale * prod` and `target = imgs * __powf(prod, -powScale)`.
* kCNorm_fewfilter / kCNorm_manyfilter (within-map): pixel p sums the squares of pixels
  `startPx = -sizeX/2 + p` up to `startPx + sizeX` on each axis, clipped to the image
  (`MAX(0, ...)`, `MIN(imgSize, ...)`), each map alone; then the same two lines. The 2012 code's
  rnorm passes no minDiv: its constant is 1 (docs/paper_vs_code.md).

The gradient is computed here from that forward formula by scattering each output's
contribution over its window (the undo kernels' loops visit the same (output, input) pairs from
the input's side), and is itself checked against float64 central differences. Nothing here
calls `alexnet_jax.lrn`'s window sums: the JAX layers are what is tested.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import lrn, models


def c_div(a: int, b: int) -> int:
    """C's integer division (truncation toward zero), as in `-sizeF/2`."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def cross_map_ref(x, size, scale, pow_, min_div):
    """cmrnorm on NHWC float64 maps: (output, denominators), cuda-convnet's loops over filters.

    `scale` is the layer-params file's value; layer.py divides it by size (addScale).
    """
    x = np.asarray(x, np.float64)
    add_scale = scale / size
    filters = x.shape[-1]
    denoms = np.empty_like(x)
    for f in range(filters):
        start = c_div(-size, 2) + f
        lo, hi = max(0, start), min(filters, start + size)
        prod = (x[..., lo:hi] ** 2).sum(-1)
        denoms[..., f] = min_div + add_scale * prod
    return x * denoms**-pow_, denoms


def within_map_ref(x, size, scale, pow_, min_div=1.0):
    """rnorm on NHWC float64 maps: (output, denominators), loops over pixels of each map.

    layer.py divides the file's scale by size^2 for rnorm.
    """
    x = np.asarray(x, np.float64)
    add_scale = scale / size**2
    _, h, w, _ = x.shape
    denoms = np.empty_like(x)
    for py in range(h):
        for px in range(w):
            sy, sx = c_div(-size, 2) + py, c_div(-size, 2) + px
            ys = slice(max(0, sy), min(h, sy + size))
            xs = slice(max(0, sx), min(w, sx + size))
            prod = (x[:, ys, xs, :] ** 2).sum(axis=(1, 2))
            denoms[:, py, px, :] = min_div + add_scale * prod
    return x * denoms**-pow_, denoms


def cross_map_grad_ref(x, g, size, scale, pow_, min_div):
    """d(sum g * cross_map_ref(x)) / dx: every output filter f scatters into its window."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    _, d = cross_map_ref(x, size, scale, pow_, min_div)
    add_scale = scale / size
    filters = x.shape[-1]
    dx = g * d**-pow_
    # y_f = x_f d_f^-p with d_f = minDiv + addScale * sum_{j in W(f)} x_j^2:
    # dy_f / dx_j = -2 p addScale x_f x_j d_f^(-p-1) for every j in W(f).
    common = -2.0 * pow_ * add_scale * g * x * d ** (-pow_ - 1)
    for f in range(filters):
        start = c_div(-size, 2) + f
        for j in range(max(0, start), min(filters, start + size)):
            dx[..., j] += common[..., f] * x[..., j]
    return dx


def within_map_grad_ref(x, g, size, scale, pow_, min_div=1.0):
    """d(sum g * within_map_ref(x)) / dx: every output pixel scatters into its window."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    _, d = within_map_ref(x, size, scale, pow_, min_div)
    add_scale = scale / size**2
    _, h, w, _ = x.shape
    dx = g * d**-pow_
    common = -2.0 * pow_ * add_scale * g * x * d ** (-pow_ - 1)
    for py in range(h):
        for px in range(w):
            sy, sx = c_div(-size, 2) + py, c_div(-size, 2) + px
            ys = slice(max(0, sy), min(h, sy + size))
            xs = slice(max(0, sx), min(w, sx + size))
            dx[:, ys, xs, :] += common[:, py : py + 1, px : px + 1, :] * x[:, ys, xs, :]
    return dx


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _inputs(shape, seed=0, std=20.0):
    """Activation-like float32 inputs (signed: the 2012 code normalizes conv1 before its ReLU)."""
    rng = np.random.default_rng(seed)
    x = (std * rng.normal(size=shape)).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    return x, g


def _numeric_grad(f, x, g, eps=1e-4, picks=40, seed=1):
    """Central differences of sum(g * f(x)) at `picks` random entries, float64."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float64)
    out = []
    for flat in rng.choice(x.size, picks, replace=False):
        i = np.unravel_index(flat, x.shape)
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        out.append((i, ((g * f(up)).sum() - (g * f(down)).sum()) / (2 * eps)))
    return out


# (size, scale, pow, minDiv): the 2012 code's rnorm1/rnorm2 (layer-params-145.cfg), a stronger
# scale that makes the denominators far from k, and a 3-map window.
CROSS_MAP_CASES = [(5, 1e-4, 0.75, 2.0), (5, 0.05, 0.75, 2.0), (3, 0.02, 0.5, 1.0)]
# The 2012 code's cnorm2 (size 5, scale 0.001), layers-18pct's rnorm (size 3, scale 5e-5), a
# strong scale, and even windows (the extra row/column above/left).
WITHIN_MAP_CASES = [(5, 1e-3, 0.75), (3, 5e-5, 0.75), (5, 0.5, 0.75), (4, 0.2, 0.75), (2, 0.1, 0.5)]


def test_the_references_gradients_are_the_derivative_of_their_forward_passes():
    x, g = _inputs((2, 6, 6, 7))
    x, g = x.astype(np.float64), g.astype(np.float64)
    cases = [(cross_map_ref, cross_map_grad_ref, c) for c in CROSS_MAP_CASES]
    cases += [(within_map_ref, within_map_grad_ref, c) for c in WITHIN_MAP_CASES]
    for forward, grad, constants in cases:
        want = grad(x, g, *constants)
        for i, v in _numeric_grad(lambda z, f=forward, c=constants: f(z, *c)[0], x, g):
            assert abs(want[i] - v) <= 1e-6 * max(1.0, abs(v)), (forward.__name__, constants, i)


def _jax_forward_and_grad(fn, x, g):
    y, vjp = jax.vjp(fn, jnp.asarray(x))
    return np.asarray(y), np.asarray(vjp(jnp.asarray(g))[0])


@pytest.mark.parametrize("size, scale, pow_, min_div", CROSS_MAP_CASES)
@pytest.mark.parametrize("towers", [1, 2])
def test_cross_map_matches_cuda_convnet(size, scale, pow_, min_div, towers):
    # Each tower is its own cmrnorm layer in the 2012 code (rnorm1a reads conv1a's 48 maps).
    x, g = _inputs((2, 7, 7, 24))
    alpha = models.per_term_alpha(scale, size, "cross_map", "divided_by_n")
    y, dx = _jax_forward_and_grad(
        lambda v: models.tower_norm(
            v, towers, "cross_map", size=size, alpha=alpha, beta=pow_, k=min_div
        ),
        x,
        g,
    )
    parts = np.split(x.astype(np.float64), towers, axis=-1)
    gparts = np.split(g.astype(np.float64), towers, axis=-1)
    want_y = np.concatenate([cross_map_ref(p, size, scale, pow_, min_div)[0] for p in parts], -1)
    want_dx = np.concatenate(
        [cross_map_grad_ref(p, q, size, scale, pow_, min_div) for p, q in zip(parts, gparts)], -1
    )
    assert rel(y, want_y) < 1e-6
    assert rel(dx, want_dx) < 1e-6
    # The per-term reading of the same file value is a different layer (when it matters).
    if scale >= 0.01:
        wrong = models.tower_norm(
            jnp.asarray(x), towers, "cross_map", size=size, alpha=scale, beta=pow_, k=min_div
        )
        assert rel(wrong, want_y) > 1e-3


@pytest.mark.parametrize("size, scale, pow_", WITHIN_MAP_CASES)
def test_within_map_matches_cuda_convnet(size, scale, pow_):
    x, g = _inputs((2, 9, 9, 5))
    alpha = models.per_term_alpha(scale, size, "within_map", "divided_by_n")
    y, dx = _jax_forward_and_grad(
        lambda v: lrn.within_map_norm(v, size=size, alpha=alpha, beta=pow_, k=1.0), x, g
    )
    assert rel(y, within_map_ref(x, size, scale, pow_)[0]) < 1e-6
    assert rel(dx, within_map_grad_ref(x, g, size, scale, pow_)) < 1e-6


def test_the_2012_code_config_runs_these_layers():
    """configs/alexnet_2012_code.py's constants reach the layers as the files state them."""
    from configs import alexnet_2012_code

    m = alexnet_2012_code.get_config().model
    assert (m.lrn_size, m.lrn_alpha, m.lrn_beta, m.lrn_k) == (5, 1e-4, 0.75, 2.0)
    assert m.lrn_alpha_convention == "divided_by_n"
    assert models.lrn_alpha(m) == pytest.approx(2e-5)
    assert (m.within_map_size, m.within_map_alpha, m.within_map_beta, m.within_map_k) == (
        5, 1e-3, 0.75, 1.0,
    )  # fmt: skip
    net = models.create_model(m)
    assert net.within_map_alpha == pytest.approx(4e-5)
    assert net.lrn_before_relu == ("conv1",) and net.within_map_after == ("conv2",)
