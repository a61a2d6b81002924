"""Three AlexNet operations written for speed, with the same numbers as their plain versions.

`strided_conv`: conv1's 11x11 stride-4 convolution of a 3-channel image is a poor shape for a
convolution library (3 input channels, a large stride): XLA's CPU convolution runs it at a fifth
of the matmul rate and its kernel gradient slower still. Rewritten as a space-to-depth
reshape and one matmul, both directions run at matmul speed.

`conv2d`: XLA's stride-1 convolution with the kernel gradient computed as one matmul, which
XLA's CPU backend runs faster than its own kernel-gradient convolution.

`max_pool`: XLA differentiates max pooling through a select-and-scatter that first recomputes
the window argmax; on the CPU that backward pass takes 4-10x the forward. The closed-form
gradient below routes each output's gradient to the first maximum of its window in row-major
order, which is exactly what select-and-scatter does, as one fused elementwise pass.

`python -m experiments.bench.benchmark` measures the whole network; tests/test_ops.py checks each
against `jax.lax.conv_general_dilated` and `jax.lax.reduce_window` (values and gradients).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def accumulation_dtype(x: Array) -> jnp.dtype:
    """Sums in float32 for bfloat16 inputs, in the input's own type otherwise (float64 in tests)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def strided_conv(x: Array, kernel: Array, stride: int) -> Array:
    """VALID convolution of NHWC `x` with an HWIO `kernel`, computed as space-to-depth + matmul.

    The image is cut into stride x stride blocks whose pixels become channels (the kernel is
    zero-padded to a whole number of blocks, ceil(K / stride) per side); the convolution is then
    a ceil(K/s) x ceil(K/s) convolution of stride 1 over the blocks. Its columns are gathered
    into the channels (a concatenation of ceil(K/s) shifted slices) and its rows computed by one
    matmul against the kernel's rows side by side, the partial sums of each kernel row added with
    the row offset. For conv1 (K=11, s=4, 3 channels) that is one (B*57*55, 144) x (144, 288)
    matmul: 19% more multiply-adds than the convolution (the zero padding of the kernel to 12x12
    and the two extra block rows), at several times the speed on a CPU. The gradients are the
    autodiff of these reshapes and the matmul (the kernel gradient is again one matmul).

    Args:
      x: (batch, H, W, C) input, already padded as the layer wants (VALID from here on).
      kernel: (K, K, C, O) kernel, square.
      stride: the convolution's stride s (1 works too, but gains nothing).

    Returns:
      (batch, (H - K) // s + 1, (W - K) // s + 1, O), equal to
      `lax.conv_general_dilated(x, kernel, (s, s), 'VALID', ('NHWC', 'HWIO', 'NHWC'))` up to
      float rounding.
    """
    batch, height, width, channels = x.shape
    size, size_w, kernel_channels, features = kernel.shape
    if size != size_w or kernel_channels != channels:
        raise ValueError(
            f"strided_conv needs a square (K, K, C, O) kernel matching the input's {channels} "
            f"channels, got kernel shape {kernel.shape}."
        )
    if height < size or width < size:
        raise ValueError(f"input {x.shape[1:3]} is smaller than the {size}x{size} kernel.")
    s = stride
    out_h, out_w = (height - size) // s + 1, (width - size) // s + 1
    blocks = -(-size // s)  # kernel rows/columns in blocks
    rows, cols = out_h - 1 + blocks, out_w - 1 + blocks  # blocks of the input that are read
    # Zero rows/columns up to whole blocks (they only meet the kernel's zero padding), or drop
    # trailing pixels no output reads.
    x = jnp.pad(x, ((0, 0), (0, max(0, s * rows - height)), (0, max(0, s * cols - width)), (0, 0)))
    x = x[:, : s * rows, : s * cols]
    depth = s * s * channels
    xb = x.reshape(batch, rows, s, cols, s, channels).transpose(0, 1, 3, 2, 4, 5)
    xb = xb.reshape(batch, rows, cols, depth)  # channel = (row in block, column in block, c)
    pad = blocks * s - size
    kb = jnp.pad(kernel, ((0, pad), (0, pad), (0, 0), (0, 0)))
    kb = kb.reshape(blocks, s, blocks, s, channels, features).transpose(0, 2, 1, 3, 4, 5)
    # (block row i, block column j, row in block, column in block, c, o) -> rows (j, ..., c),
    # columns (i, o): every block row's kernel side by side.
    kb = kb.reshape(blocks, blocks * depth, features).transpose(1, 0, 2)
    kb = kb.reshape(blocks * depth, blocks * features)
    columns = jnp.concatenate([xb[:, :, j : j + out_w] for j in range(blocks)], axis=-1)
    # bfloat16 inputs are multiplied with float32 sums, like the model's other layers.
    partial = jnp.matmul(
        columns.reshape(-1, blocks * depth), kb, preferred_element_type=accumulation_dtype(x)
    )
    partial = partial.reshape(batch, rows, out_w, blocks, features)
    return sum(partial[:, i : i + out_h, :, i] for i in range(blocks))


def _conv_plain(x: Array, kernel: Array, padding: int) -> Array:
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        [(padding, padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=accumulation_dtype(x),
    )


def _conv_kernel_grad(x: Array, g: Array, size: int, padding: int) -> Array:
    """dL/dkernel of a stride-1 convolution as one matmul over every (image, row, column).

    kernel_grad[i, j, c, o] = sum_{b,h,w} xpad[b, h+i, w+j, c] g[b, h, w, o]. With the columns
    of each kernel position gathered into channels, columns[b, r, w, (j, c)] = xpad[b, r, w+j, c],
    and the output gradient shifted down by each kernel row, shifted[b, r, w, (i, o)] =
    g[b, r-i, w, o] (zero outside), every (i, j, c, o) is one entry of columns^T @ shifted.
    """
    batch, height, width, channels = x.shape
    out_h, out_w, features = g.shape[1:]
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    columns = jnp.concatenate([xp[:, :, j : j + out_w] for j in range(size)], axis=-1)
    g = g.astype(x.dtype)
    rows = xp.shape[1]
    shifted = jnp.concatenate(
        [jnp.pad(g, ((0, 0), (i, rows - out_h - i), (0, 0), (0, 0))) for i in range(size)],
        axis=-1,
    )
    grad = jnp.matmul(
        columns.reshape(-1, size * channels).T,
        shifted.reshape(-1, size * features),
        preferred_element_type=accumulation_dtype(x),
    )
    return grad.reshape(size, channels, size, features).transpose(2, 0, 1, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: Array, kernel: Array, padding: int) -> Array:
    return _conv_plain(x, kernel, padding)


def _conv_fwd(x: Array, kernel: Array, padding: int):
    return _conv_plain(x, kernel, padding), (x, kernel)


def _conv_bwd(padding: int, residuals: tuple[Array, Array], g: Array):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda a: _conv_plain(a, kernel, padding), x)
    (dx,) = input_vjp(g)
    dk = _conv_kernel_grad(x, g, kernel.shape[0], padding).astype(kernel.dtype)
    return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: Array, kernel: Array, padding: int) -> Array:
    """Stride-1 convolution of NHWC `x` with a square HWIO `kernel`, zero `padding` all round.

    The forward pass and the input gradient are XLA's convolutions; the kernel gradient is
    `_conv_kernel_grad`'s single matmul, which XLA's CPU backend runs 1.5-1.8x faster than its
    own kernel-gradient convolution for conv3 and conv4 at batch 128 (a convolution whose
    contraction runs over the batch). Outputs accumulate in float32 for bfloat16 inputs.
    """
    if kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"conv2d needs a square kernel, got {kernel.shape}.")
    x, kernel = _same_varying_axes(x, kernel)
    return _conv(x, kernel, padding)


def _same_varying_axes(*arrays: Array) -> tuple[Array, ...]:
    """Marks every array as varying over the union of their `jax.shard_map` manual axes.

    Inside a shard_map the kernel is the same on every 'data' shard while the activations
    differ; a custom_vjp must return a kernel gradient of the kernel's type, so the kernel is
    marked as varying first and autodiff sums its gradient over 'data' outside the custom rule,
    exactly where it would for XLA's own convolution.
    """
    axes = frozenset().union(*(jax.typeof(a).mat.varying for a in arrays))
    return tuple(
        jax.lax.pcast(a, tuple(sorted(axes - jax.typeof(a).mat.varying)), to="varying")
        for a in arrays
    )


def _max_pool_plain(x: Array, window: int, stride: int) -> Array:
    return jax.lax.reduce_window(
        x,
        np.array(-np.inf, x.dtype),
        jax.lax.max,
        (1, window, window, 1),
        (1, stride, stride, 1),
        "VALID",
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: Array, window: int, stride: int) -> Array:
    return _max_pool_plain(x, window, stride)


def _max_pool_fwd(x: Array, window: int, stride: int) -> tuple[Array, tuple[Array, Array]]:
    y = _max_pool_plain(x, window, stride)
    return y, (x, y)


def _max_pool_bwd(window: int, stride: int, residuals: tuple[Array, Array], g: Array):
    x, y = residuals
    batch, height, width, channels = x.shape
    out_h, out_w = y.shape[1:3]
    zero = np.array(0, x.dtype)
    taken = jnp.zeros(y.shape, bool)
    dx = jnp.zeros_like(x)
    # Window offsets in row-major order; the first one holding the maximum takes the gradient,
    # as in XLA's select-and-scatter (select = greater-or-equal keeps the earlier element).
    for di in range(window):
        for dj in range(window):
            end = (batch, di + stride * (out_h - 1) + 1, dj + stride * (out_w - 1) + 1, channels)
            seen = jax.lax.slice(x, (0, di, dj, 0), end, (1, stride, stride, 1))
            mine = (seen == y) & ~taken
            taken = taken | mine
            # Back to the input grid: output (r, c) read input (stride*r + di, stride*c + dj).
            dx = dx + jax.lax.pad(
                jnp.where(mine, g, zero),
                zero,
                (
                    (0, 0, 0),
                    (di, height - end[1], stride - 1),
                    (dj, width - end[2], stride - 1),
                    (0, 0, 0),
                ),
            )
    return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: Array, window: int, stride: int) -> Array:
    """VALID max pooling of NHWC `x` over window x window patches, with a fused gradient.

    Same values as `flax.linen.max_pool(x, (window, window), (stride, stride), 'VALID')`; the
    gradient goes to the first maximum of each window in row-major order, like XLA's
    select-and-scatter (ties, such as a window of ReLU zeros, resolve the same way).
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool expects NHWC input, got shape {x.shape}.")
    return _max_pool(x, window, stride)
