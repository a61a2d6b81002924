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
(experiments/lrn_benchmark.py).
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


def _check_size(size: int) -> None:
    """Raises ValueError unless `size` is a positive odd integer."""
    # bool is an int subclass, but LRN(size=True) is a bug, not a window of 1.
    is_int = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
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
    return jax.lax.reduce_window(
        v,
        # A concrete 0 with lax.add is what makes JAX emit its differentiable reduce_window_sum
        # primitive; a traced init value would give a generic, non-differentiable reduce_window.
        np.zeros((), v.dtype),
        jax.lax.add,
        window_dimensions=(1,) * (ndim - 1) + (size,),
        window_strides=(1,) * ndim,
        # Zero padding makes out-of-range channels contribute nothing, i.e. the max/min bounds.
        padding=((0, 0),) * (ndim - 1) + ((half, half),),
    )


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _lrn_custom_vjp(
    x: jax.Array,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    window_sum: WindowSum,
) -> jax.Array:
    """The paper's formula with a closed-form gradient; call with all arguments positional."""
    return _lrn_autodiff(x, size, alpha, beta, k, window_sum)


def _lrn_fwd(
    x: jax.Array,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    window_sum: WindowSum,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
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
    residuals: tuple[jax.Array, jax.Array],
    g: jax.Array,
) -> tuple[jax.Array]:
    del k  # Only enters through d.
    x, d = residuals
    scale = _inverse_power(d, beta)
    y = x * scale
    # y_i = x_i d_i^-beta and d_i = k + alpha sum_{j in W(i)} x_j^2 give
    #   dx_m = g_m d_m^-beta - 2 alpha beta x_m sum_{i : m in W(i)} g_i y_i / d_i.
    # The window is symmetric (m in W(i) iff i in W(m), zero padding on both sides), so the
    # transpose of the window sum is the window sum itself.
    back = window_sum(g * y / d, size)
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
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"LRN needs a floating-point array, got dtype {x.dtype}; cast it first.")
    # A sum of squares of post-ReLU activations loses too much in bfloat16's 8-bit significand, so
    # half-precision inputs are computed in float32; float64 (under x64) stays float64.
    compute_dtype = jnp.promote_types(x.dtype, jnp.float32)
    impl = _lrn_custom_vjp if use_custom_vjp else _lrn_autodiff
    y = impl(x.astype(compute_dtype), size, float(alpha), float(beta), float(k), _window_sum)
    return y.astype(x.dtype)
