"""Local response normalization across channels (paper §3.3).

The paper normalizes the ReLU output a of conv1 and conv2 across the channel axis:

    b_i = a_i / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j^2)^beta

with n=5, k=2, alpha=1e-4, beta=0.75 and N the number of channels. Those are the defaults of
`local_response_norm` below, in the paper's own convention: alpha multiplies the plain sum of
squares, it is *not* divided by the window size n.

Frameworks disagree on that convention, so copying constants between them silently changes the
layer:

- PyTorch `nn.LocalResponseNorm(size, alpha, beta, k)`, Caffe, MXNet and cuda-convnet put
  alpha/n in front of the sum, so their alpha is ours times `size`. The paper's layer in PyTorch
  is `nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)`; convert with `to_torch_alpha`
  and `from_torch_alpha`.
- TensorFlow `tf.nn.local_response_normalization(depth_radius, bias, alpha, beta)` uses the same
  alpha as ours, `bias` is our k and `depth_radius = size // 2` (2 for the paper).
- Caffe's bvlc_alexnet uses k=1 and alpha=1e-4 divided by n=5, i.e. an alpha of 2e-5 here: its
  alpha term is 25 times weaker than the paper's, and its constant 1 instead of 2. It is a
  different layer, not a reproduction of §3.3.

The window sum is a `jax.lax.reduce_window` over the channel axis with size//2 zeros on each
side, which is exactly the paper's max/min clipping of the sum. The gradient is the closed form
in `_lrn_custom_vjp`; `_lrn_autodiff` keeps the plain autodiff version for comparison
(experiments/bench/lrn_benchmark.py).

`within_map_norm` is cuda-convnet's other response normalization, layer type `rnorm`: the same
formula with the sum taken over a size x size *spatial* neighbourhood inside each map instead
of across maps. cuda-convnet's CIFAR-10 net layers-18pct.cfg uses it (rnorm1, rnorm2: size 3,
scale 0.00005, pow .75), and the released 2012 ImageNet code adds it after conv2's cross-map
norm (layers/layers-145.cfg: cnorm2a/b, type=rnorm, size 5, scale 0.001, pow 0.75). What the
released source does (yrmo/AlexNet-Source-Code: layer.py, src/layer.cu's ResponseNormLayer,
which calls `convResponseNorm(input, denoms, acts, channels, size, scale, pow)`; the release
omits the cudaconv library that defines it, so the kernels below are cuda-convnet's own
src/conv_util.cu, as in dnouri/cuda-convnet, whose convResponseNorm has that signature):

- layer.py, NormLayerParser.add_params: `dic['scale'] /= dic['size'] if self.norm_type ==
  self.CROSSMAP_RESPONSE_NORM else dic['size']**2`, so the kernels' addScale is the file's
  scale / size^2 for rnorm (/ size for cmrnorm); `minDiv` (the constant k) is read only for
  cmrnorm. `from_convnet_scale` does this conversion.
- kCNorm_fewfilter / kCNorm_manyfilter / kCNorm2: `denom = 1 + addScale * sum of squares`,
  `target = imgs * __powf(denom, -powScale)`: k is fixed at 1, pow is the exponent of the
  whole denominator, and the squares are of the input itself (`convResponseNorm` passes the
  images as their own "meanDiffs"; the mean-subtracted version is `cnorm`, a different layer).
- The window of pixel p starts at `-sizeX/2 + p` and is sizeX wide, with the loops clipped to
  `MAX(0, start)` .. `MIN(imgSize, start + sizeX)`: centred for odd sizes, one extra pixel
  above/left for even ones (C's -sizeX/2 truncates, e.g. -2 for size 4), and at the border
  only the pixels inside the image are summed while the scale stays divided by the full
  size^2. The gradient kernels (kRNormUndo, kRNormUndo2) sum over the mirrored window
  `p + sizeX/2 - sizeX + 1` .. `p + sizeX/2`, the transpose of that placement.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# A window sum maps (x, size) to the sum of x over the `size` channels centred on each channel.
WindowSum = Callable[[jax.Array, int], jax.Array]


def to_torch_alpha(alpha: float, size: int) -> float:
    """Converts an alpha in the paper's convention to PyTorch's (and Caffe's, MXNet's).

    Args:
      alpha: alpha multiplying the plain sum of squares, as in the paper (§3.3).
      size: window size n.

    Returns:
      The alpha to pass to `torch.nn.LocalResponseNorm(size, alpha, ...)`, which divides it by n.
    """
    return alpha * size


def from_torch_alpha(alpha: float, size: int) -> float:
    """Converts an alpha in PyTorch's (and Caffe's, MXNet's) convention to the paper's.

    Args:
      alpha: alpha of `torch.nn.LocalResponseNorm(size, alpha, ...)`, which divides it by n.
      size: window size n.

    Returns:
      The alpha to pass to `local_response_norm`.
    """
    return alpha / size


def from_convnet_scale(scale: float, size: int, kind: str) -> float:
    """Converts a cuda-convnet layer-params `scale` to the alpha of this module's convention.

    cuda-convnet's layer.py (NormLayerParser.add_params) divides the file's scale by the number
    of terms in the window before the kernels multiply the plain sum of squares by it; here
    alpha multiplies the plain sum, so alpha is that divided scale.

    Args:
      scale: the `scale=` of a layer-params file, e.g. 0.00005 for layers-18pct's rnorm1.
      size: the layer's `size=`.
      kind: the layer's `type=`: 'rnorm' (within-map, a size x size window: scale / size^2,
        for `within_map_norm`) or 'cmrnorm' (cross-map, size maps: scale / size, for
        `local_response_norm`).

    Returns:
      alpha for `within_map_norm` ('rnorm') or `local_response_norm` ('cmrnorm').

    Raises:
      ValueError: for another kind; 'cnorm' (contrast normalization) is a different formula.
    """
    if kind == "rnorm":
        return scale / size**2
    if kind == "cmrnorm":
        return scale / size
    raise ValueError(f"kind must be 'rnorm' (within-map) or 'cmrnorm' (cross-map), got {kind!r}.")


def _is_int(size: object) -> bool:
    """Whether `size` is a Python or NumPy integer (and not a bool)."""
    # bool is an int subclass, but LRN(size=True) is a bug, not a window of 1.
    return isinstance(size, (int, np.integer)) and not isinstance(size, bool)


def _check_size(size: int) -> None:
    """Raises ValueError unless `size` is a positive odd integer."""
    is_int = _is_int(size)
    # The paper's window runs from i - n/2 to i + n/2, which is n channels wide only for odd n;
    # Caffe rejects even sizes for the same reason.
    if not is_int or size < 1 or size % 2 == 0:
        hint = f"size={size + 1}" if is_int and size >= 1 else "size=5 as in the paper"
        raise ValueError(
            f"LRN size must be a positive odd integer, got size={size!r}: the window "
            f"i-n/2..i+n/2 of paper §3.3 is n channels wide only for odd n. Pass an odd int, "
            f"e.g. {hint}."
        )


def _window_sum(v: jax.Array, size: int) -> jax.Array:
    """Sums `v` over the `size` channels centred on each channel (last axis), zeros outside.

    Args:
      v: array whose last axis is channels.
      size: odd window size n.

    Returns:
      Array of v's shape; entry i holds sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} v_j.
    """
    ndim = v.ndim
    half = size // 2
    # Zero padding makes out-of-range channels contribute nothing, i.e. the max/min bounds.
    return _zero_padded_window_sum(
        v, (1,) * (ndim - 1) + (size,), ((0, 0),) * (ndim - 1) + ((half, half),)
    )


def _zero_padded_window_sum(
    v: jax.Array, window: tuple[int, ...], padding: tuple[tuple[int, int], ...]
) -> jax.Array:
    """Stride-1 sum of `v` over `window`, after zero-padding each axis by (before, after)."""
    return jax.lax.reduce_window(
        v,
        # A concrete 0 with lax.add is what makes JAX emit its differentiable reduce_window_sum
        # primitive; a traced init value would give a generic, non-differentiable reduce_window.
        np.zeros((), v.dtype),
        jax.lax.add,
        window_dimensions=window,
        window_strides=(1,) * v.ndim,
        padding=padding,
    )


def _spatial_window_sum(v: jax.Array, size: int) -> jax.Array:
    """Sums NHWC `v` over cuda-convnet's size x size window of each pixel, zeros outside.

    Args:
      v: array of shape (N, H, W, C).
      size: window side, any positive integer.

    Returns:
      Array of v's shape; entry (n, y, x, c) holds the sum of v[n, y', x', c] over
      y' in [y - size//2, y - size//2 + size) and likewise x', clipped to the image: the
      loop bounds MAX(0, start) .. MIN(imgSize, start + sizeX) of cuda-convnet's kCNorm
      kernels with start = -sizeX/2 + p, so an even window has its extra pixel above/left.
    """
    # reduce_window's window at output p covers padded p .. p+size-1, i.e. unpadded
    # p-before .. p-before+size-1; before = size//2 and after = size-1-before keep H and W.
    return _spatial_sum(v, size, before=size // 2, after=(size - 1) // 2)


def _spatial_window_sum_t(v: jax.Array, size: int) -> jax.Array:
    """The transpose of `_spatial_window_sum`: entry p sums over the pixels whose window holds p.

    q's window holds p iff q - size//2 <= p <= q - size//2 + size - 1, i.e. iff
    p - (size-1)//2 <= q <= p + size//2: the same window with the padding mirrored (cuda-convnet's
    kRNormUndo loops from p + sizeX/2 - sizeX + 1 to p + sizeX/2). It equals the window sum
    itself for odd sizes only.
    """
    return _spatial_sum(v, size, before=(size - 1) // 2, after=size // 2)


def _spatial_sum(v: jax.Array, size: int, *, before: int, after: int) -> jax.Array:
    """Sum over size x size windows on axes 1 and 2 of NHWC `v`, zero-padded (before, after)."""
    spatial = (before, after)
    return _zero_padded_window_sum(v, (1, size, size, 1), ((0, 0), spatial, spatial, (0, 0)))


def _denominator_base(
    x: jax.Array, size: int, alpha: float, k: float, window_sum: WindowSum
) -> jax.Array:
    """d_i = k + alpha * sum_{j in window(i)} x_j^2, the base of the power in §3.3."""
    return k + alpha * window_sum(x * x, size)


def _inverse_power(d: jax.Array, beta: float) -> jax.Array:
    """d ** -beta; for the paper's beta = 0.75 as rsqrt(d) * sqrt(rsqrt(d)).

    A general power is an exp and a log per element, which made it most of LRN's time on a CPU;
    the square-root form of d^-3/4 is 7x faster there and agrees to float rounding (3.6e-7
    relative on conv1-sized activations).
    """
    if beta == 0.75:
        r = jax.lax.rsqrt(d)
        return r * jnp.sqrt(r)
    return d ** (-beta)


def _lrn_autodiff(
    x: jax.Array,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    window_sum: WindowSum = _window_sum,
) -> jax.Array:
    """The paper's formula, differentiated by plain autodiff; kept as the reference."""
    d = _denominator_base(x, size, alpha, k, window_sum)
    return x * _inverse_power(d, beta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _lrn_custom_vjp(
    x: jax.Array,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    window_sum: WindowSum,
    window_sum_t: WindowSum | None = None,
) -> jax.Array:
    """The paper's formula with a closed-form gradient; call with all arguments positional.

    `window_sum_t` is the transpose of `window_sum` (entry m sums over the i whose window holds
    m); None means the window is symmetric, so the transpose is `window_sum` itself.
    """
    del window_sum_t  # Only the gradient needs it.
    return _lrn_autodiff(x, size, alpha, beta, k, window_sum)


def _lrn_fwd(
    x: jax.Array,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    window_sum: WindowSum,
    window_sum_t: WindowSum | None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    del window_sum_t
    d = _denominator_base(x, size, alpha, k, window_sum)
    # Two residuals of x's size; d^-beta and y are cheap to recompute from them, and keeping
    # fewer activations alive matters more than one extra power on the backward pass.
    return x * _inverse_power(d, beta), (x, d)


def _lrn_bwd(
    size: int,
    alpha: float,
    beta: float,
    k: float,
    window_sum: WindowSum,
    window_sum_t: WindowSum | None,
    residuals: tuple[jax.Array, jax.Array],
    g: jax.Array,
) -> tuple[jax.Array]:
    del k  # Only enters through d.
    x, d = residuals
    scale = _inverse_power(d, beta)
    y = x * scale
    # y_i = x_i d_i^-beta and d_i = k + alpha sum_{j in W(i)} x_j^2 give
    #   dx_m = g_m d_m^-beta - 2 alpha beta x_m sum_{i : m in W(i)} g_i y_i / d_i,
    # a sum over W's transpose. A centred odd window is symmetric (m in W(i) iff i in W(m), the
    # same zero padding on both sides), so that is the window sum itself; an even spatial window
    # (within_map_norm) passes its mirror image as window_sum_t.
    back = (window_sum if window_sum_t is None else window_sum_t)(g * y / d, size)
    return (g * scale - (2.0 * alpha * beta) * x * back,)


_lrn_custom_vjp.defvjp(_lrn_fwd, _lrn_bwd)


@functools.partial(jax.jit, static_argnames=("size", "alpha", "beta", "k", "use_custom_vjp"))
def local_response_norm(
    x: jax.Array,
    *,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    use_custom_vjp: bool = True,
) -> jax.Array:
    """Local response normalization across the last (channel) axis, paper §3.3.

    b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta, with the
    paper's alpha (not divided by n; see the module docstring for other frameworks).

    Args:
      x: floating array of rank >= 1, channels last (e.g. NHWC activations after the ReLU).
      size: window size n, a positive odd integer (paper: 5).
      alpha: scale of the sum of squares, paper convention (paper: 1e-4).
      beta: exponent (paper: 0.75).
      k: additive constant (paper: 2).
      use_custom_vjp: differentiate with the closed-form gradient (True) or plain autodiff
        (False); both give the same values, the flag exists for benchmarks and tests.

    Returns:
      Array of x's shape and dtype. bfloat16/float16 inputs are normalized in float32 and the
      result is rounded back once.

    Raises:
      ValueError: if size is not a positive odd integer or x is a scalar.
      TypeError: if x is not floating point.
    """
    _check_size(size)
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(
            f"LRN needs an array with a channel axis, got a scalar of shape {x.shape}."
        )
    _check_floating(x, "LRN")
    return _normalize(x, size, alpha, beta, k, use_custom_vjp, _window_sum)


def _check_floating(x: jax.Array, layer: str) -> None:
    """Raises TypeError unless `x` is floating point; `layer` names the caller in the message."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{layer} needs a floating-point array, got dtype {x.dtype}; cast it first."
        )


def _normalize(
    x: jax.Array,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    use_custom_vjp: bool,
    window_sum: WindowSum,
    window_sum_t: WindowSum | None = None,
) -> jax.Array:
    """x / (k + alpha * window_sum(x^2))^beta for a checked floating x, in x's dtype."""
    # A sum of squares of post-ReLU activations loses too much in bfloat16's 8-bit significand, so
    # half-precision inputs are computed in float32; float64 (under x64) stays float64.
    v = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    params = (size, float(alpha), float(beta), float(k), window_sum)
    if use_custom_vjp:
        y = _lrn_custom_vjp(v, *params, window_sum_t)
    else:
        y = _lrn_autodiff(v, *params)
    return y.astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("size", "alpha", "beta", "k", "use_custom_vjp"))
def within_map_norm(
    x: jax.Array,
    *,
    size: int,
    alpha: float,
    beta: float,
    k: float = 1.0,
    use_custom_vjp: bool = True,
) -> jax.Array:
    """Response normalization within each map, cuda-convnet's layer type `rnorm`.

    b[n,y,x,c] = a[n,y,x,c] / (k + alpha * sum_{(y',x') in W(y,x)} a[n,y',x',c]^2)^beta, where
    W(y,x) is the size x size window with rows y - size//2 .. y - size//2 + size - 1 (columns
    likewise) clipped to the image: centred for odd sizes, the extra row/column above/left for
    even ones, as in cuda-convnet's kernels (module docstring). alpha is in the convention of
    `local_response_norm`, multiplying the plain sum of squares: a layer-params file's `scale`
    converts as `from_convnet_scale(scale, size, 'rnorm')` = scale / size^2, also at the border,
    where fewer than size^2 pixels are summed.

    Args:
      x: floating NHWC array (e.g. pooled activations, as in layers-18pct.cfg).
      size: window side, a positive integer (layers-18pct: 3; layers-145 cnorm2: 5).
      alpha: scale of the sum of squares (layers-18pct: 0.00005 / 9).
      beta: exponent of the whole denominator (cuda-convnet's pow; .75 in both nets).
      k: additive constant; cuda-convnet's rnorm kernels hard-code 1 (minDiv is cmrnorm-only).
      use_custom_vjp: differentiate with the closed-form gradient (True) or plain autodiff
        (False); both give the same values.

    Returns:
      Array of x's shape and dtype. bfloat16/float16 inputs are normalized in float32 and the
      result is rounded back once.

    Raises:
      ValueError: if size is not a positive integer or x is not rank 4.
      TypeError: if x is not floating point.
    """
    if not _is_int(size) or size < 1:
        raise ValueError(
            f"within_map_norm size must be a positive integer, got size={size!r}; "
            f"e.g. size=3 as in cuda-convnet's layers-18pct.cfg."
        )
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"within_map_norm needs an NHWC array of rank 4, got shape {x.shape}.")
    _check_floating(x, "within_map_norm")
    return _normalize(
        x, size, alpha, beta, k, use_custom_vjp, _spatial_window_sum, _spatial_window_sum_t
    )
