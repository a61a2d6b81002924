"""Independent float64 NumPy computations of the network's layers, written from the paper and
the released layer definitions (loops and sliding windows, no JAX), that the tests compare the
model against: one copy for every test module.

Layouts are the library's: NHWC maps, HWIO convolution kernels, and for AlexNet's tower layers
kernels with a leading tower axis, (T, k, k, in, width) or (T, in, width).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def rel(a, b) -> float:
    """max |a - b| / max |b| in float64: the largest error relative to the largest value."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def conv(x, kernel, stride=1, pad=(0, 0)):
    """NHWC convolution, HWIO kernel, `pad` rows/columns before/after, float64."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), pad, pad, (0, 0)))
    kernel = np.asarray(kernel, np.float64)
    k = kernel.shape[0]
    win = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    b, h, w = win.shape[:3]
    patches = win.transpose(0, 1, 2, 4, 5, 3).reshape(b * h * w, -1)
    return (patches @ kernel.reshape(-1, kernel.shape[-1])).reshape(b, h, w, -1)


def tower_conv(x, kernel, bias, sees, stride=1, pad=(0, 0)):
    """A tower layer's convolution (§3.2): kernel (T, k, k, in, w); 'own' layers read their
    tower's share of the input maps, 'both' layers all of them."""
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64).reshape(-1)
    towers = kernel.shape[0]
    if sees == "both":
        full = np.concatenate(list(kernel), axis=-1)
        return conv(x, full, stride, pad) + bias
    parts = np.split(np.asarray(x, np.float64), towers, axis=-1)
    return np.concatenate([conv(p, k, stride, pad) for p, k in zip(parts, kernel)], -1) + bias


def tower_fc(x, kernel, bias):
    """A tower layer's fully connected part: every tower reads all of `x`, kernel (T, in, w)."""
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64).reshape(-1)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x @ np.concatenate(list(kernel), axis=-1) + bias


def lrn(a, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1):
    """§3.3's response normalization across channels, within each of `groups` channel groups
    (towers), one channel at a time with its max/min window bounds; alpha multiplies the plain
    sum of squares."""
    a = np.asarray(a, np.float64)
    out = np.empty_like(a)
    n = a.shape[-1] // groups
    for g in range(groups):
        for i in range(n):
            lo, hi = max(0, i - size // 2), min(n - 1, i + size // 2)
            s = (a[..., g * n + lo : g * n + hi + 1] ** 2).sum(-1)
            out[..., g * n + i] = a[..., g * n + i] / (k + alpha * s) ** beta
    return out


def within_map(a, size=3, alpha=5e-5 / 9, beta=0.75, k=1.0):
    """cuda-convnet's rnorm (its kCNorm loops), one pixel at a time: each map over a size x size
    window that starts at p - size//2 (the kernels' `-sizeX/2 + pxIdx`, C division truncating
    toward zero; centred for odd sizes, an extra row and column above and left for even ones)
    and runs to min(image size, start + size), so at the border only the pixels inside the
    image are summed."""
    a = np.asarray(a, np.float64)
    h, w = a.shape[1:3]
    out = np.empty_like(a)
    lo = size // 2
    for y in range(h):
        for x in range(w):
            ys = slice(max(0, y - lo), min(h, y - lo + size))
            xs = slice(max(0, x - lo), min(w, x - lo + size))
            s = (a[:, ys, xs, :] ** 2).sum(axis=(1, 2))
            out[:, y, x, :] = a[:, y, x, :] / (k + alpha * s) ** beta
    return out


def pool(x, window, stride=2, kind="max", ceil=False):
    """Pooling over H and W; `ceil`: cuda-convnet's rounded-up output, windows clipped."""
    x = np.asarray(x, np.float64)
    h = x.shape[1]
    out_n = -(-(h - window) // stride) + 1 if ceil else (h - window) // stride + 1
    out = np.empty((x.shape[0], out_n, out_n, x.shape[3]))
    for i in range(out_n):
        for j in range(out_n):
            win = x[:, i * stride : i * stride + window, j * stride : j * stride + window]
            out[:, i, j] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return out
