"""Times forward+backward of local response normalization (paper §3.3) in four ways.

LRN sits after conv1 and conv2, on the two largest activations of AlexNet, so its backward pass
is a visible share of a training step. This script compares, in one process and on the same
inputs:

  (a) reduce_window window sum, gradient by plain autodiff (`use_custom_vjp=False`);
  (b) reduce_window window sum, closed-form `jax.custom_vjp` (the default of
      `alexnet_jax.lrn.local_response_norm`);
  (c) window sum as `size` shifted slices of a zero-padded array, plain autodiff;
  (d) shifted slices with the same closed-form custom_vjp.

Each is jitted as one function (x, g) -> (y, dx), warmed up, then run round-robin with the
others (this machine's speed drifts, so interleaving keeps the ratios fair) and timed with
block_until_ready. Medians are reported with ratios against (a); only ratios from one run mean
anything.

Run from the repository root:

  python -m experiments.bench.lrn_benchmark [--repeats 15]
"""

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import lrn

PAPER = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}

# Activations entering LRN for a batch of 32: conv1 (55x55x96) and conv2 (27x27x256), §3.5.
SHAPES = {"conv1": (32, 55, 55, 96), "conv2": (32, 27, 27, 256)}


def shifted_window_sum(v: jax.Array, size: int) -> jax.Array:
    """The window sum of `lrn._window_sum` as `size` shifted slices of a zero-padded copy."""
    half, n_channels = size // 2, v.shape[-1]
    padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(half, half)])
    return sum(padded[..., j : j + n_channels] for j in range(size))


def _variants() -> dict[str, Callable[[jax.Array], jax.Array]]:
    size, alpha, beta, k = PAPER["size"], PAPER["alpha"], PAPER["beta"], PAPER["k"]
    return {
        "(a) reduce_window, autodiff": lambda x: lrn.local_response_norm(
            x, use_custom_vjp=False, **PAPER
        ),
        "(b) reduce_window, custom_vjp": lambda x: lrn.local_response_norm(x, **PAPER),
        "(c) shifted slices, autodiff": lambda x: lrn._lrn_autodiff(
            x, size, alpha, beta, k, shifted_window_sum
        ),
        "(d) shifted slices, custom_vjp": lambda x: lrn._lrn_custom_vjp(
            x, size, alpha, beta, k, shifted_window_sum
        ),
    }


def _forward_backward(f: Callable[[jax.Array], jax.Array]) -> Callable:
    """Jits (x, g) -> (y, dx); returning y keeps the forward pass from being pruned."""

    @jax.jit
    def step(x, g):
        y, pullback = jax.vjp(f, x)
        return y, pullback(g)[0]

    return step


def _time(step: Callable, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs after compiling")
    args = parser.parse_args()

    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, float32, paper constants")
    rows = []
    for layer, shape in SHAPES.items():
        rng = np.random.default_rng(0)
        # Post-ReLU magnitudes, as in the tests, so no variant meets only zeros.
        x = jnp.asarray(np.maximum(rng.normal(0.0, 30.0, shape), 0.0), jnp.float32)
        g = jnp.asarray(rng.normal(size=shape), jnp.float32)
        steps = {name: _forward_backward(f) for name, f in _variants().items()}

        outputs = {name: jax.block_until_ready(step(x, g)) for name, step in steps.items()}
        for step in steps.values():
            for _ in range(args.warmup):
                _time(step, x, g)
        times = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                times[name].append(_time(step, x, g))

        y_ref, dx_ref = outputs["(a) reduce_window, autodiff"]
        y_scale, dx_scale = float(jnp.max(jnp.abs(y_ref))), float(jnp.max(jnp.abs(dx_ref)))
        base = statistics.median(times["(a) reduce_window, autodiff"])
        for name, (y, dx) in outputs.items():
            median = statistics.median(times[name])
            # Same numbers, or the timing compares different things.
            y_err = float(jnp.max(jnp.abs(y - y_ref))) / y_scale
            dx_err = float(jnp.max(jnp.abs(dx - dx_ref))) / dx_scale
            rows.append(
                (layer, name, median * 1e3, min(times[name]) * 1e3, median / base, y_err, dx_err)
            )

    header = (
        f"{'layer':6} {'variant':32} {'median ms':>10} {'min ms':>8} {'vs (a)':>7} "
        f"{'max|dy|/max|y|':>15} {'max|ddx|/max|dx|':>17}"
    )
    print(header)
    print("-" * len(header))
    for layer, name, median, best, ratio, y_err, dx_err in rows:
        print(
            f"{layer:6} {name:32} {median:10.1f} {best:8.1f} {ratio:7.2f} {y_err:15.1e} "
            f"{dx_err:17.1e}"
        )


if __name__ == "__main__":
    main()
