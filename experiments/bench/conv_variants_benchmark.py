"""Reformulations of AlexNet's stride-1 convolutions against XLA's own, timed on this device.

For the convolution shapes of conv2-conv5 at batch 128 (one tower, float32), in one process,
interleaved (`timing.interleaved_medians`), each checked against XLA's result first:

  forward:     XLA's `conv_general_dilated` | im2col (every kernel offset gathered into the
               channels) + one matmul
  input grad:  XLA's transpose of the convolution (`jax.vjp`) | a forward convolution of the
               output gradient with the flipped, in/out-swapped kernel | the same as column
               gathers + one matmul + row-shifted adds

  python -m experiments.bench.conv_variants_benchmark [--batch 128] [--repeats 7]

docs/performance.md reads it: none of the reformulations beats XLA's own convolution on the
CPU, which is why `ops.conv2d` keeps XLA's forward and input gradient.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common, files
from experiments.bench.timing import interleaved_medians

SHAPES = {  # name: (H, C in, C out, K, padding)
    "conv2": (27, 48, 128, 5, 2),
    "conv3": (13, 256, 384, 3, 1),
    "conv4": (13, 192, 192, 3, 1),
    "conv5": (13, 192, 128, 3, 1),
}


def xla_conv(x, k, p):
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, k, (1, 1), [(p, p)] * 2, dimension_numbers=dn)


def im2col_conv(x, k, p):
    b, h, w, c = x.shape
    size, out = k.shape[0], k.shape[3]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = h + 2 * p - size + 1, w + 2 * p - size + 1
    cols = [xp[:, i : i + oh, j : j + ow] for i in range(size) for j in range(size)]
    cols = jnp.concatenate(cols, axis=-1).reshape(-1, size * size * c)
    return jnp.matmul(cols, k.reshape(-1, out)).reshape(b, oh, ow, out)


def rows_conv(x, k, p):
    """Columns of each kernel column gathered into the channels, one matmul against the kernel
    rows side by side, the rows' partial sums added with their offsets."""
    b, h, w, c = x.shape
    size, out = k.shape[0], k.shape[3]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = h + 2 * p - size + 1, w + 2 * p - size + 1
    cols = jnp.concatenate([xp[:, :, j : j + ow] for j in range(size)], axis=-1)
    kb = k.transpose(1, 2, 0, 3).reshape(size * c, size * out)
    part = jnp.matmul(cols.reshape(-1, size * c), kb).reshape(b, h + 2 * p, ow, size, out)
    return sum(part[:, i : i + oh, :, i] for i in range(size))


def flipped(k):
    return jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)


def variants(p: int, q: int) -> dict:
    """The jitted computations, each a function of (x, kernel, output gradient)."""

    def input_grad_xla(x, k, g):
        return jax.vjp(lambda a: xla_conv(a, k, p), x)[1](g)[0]

    return {
        "forward xla": jax.jit(lambda x, k, g: xla_conv(x, k, p)),
        "forward im2col": jax.jit(lambda x, k, g: im2col_conv(x, k, p)),
        "input grad xla": jax.jit(input_grad_xla),
        "input grad flipped conv": jax.jit(lambda x, k, g: xla_conv(g, flipped(k), q)),
        "input grad rows+matmul": jax.jit(lambda x, k, g: rows_conv(g, flipped(k), q)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows, result = [], {}
    for name, (h, c, o, size, p) in SHAPES.items():
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(args.batch, h, h, c)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(size, size, c, o)), jnp.float32)
        g = jnp.asarray(rng.normal(size=(args.batch, h, h, o)), jnp.float32)
        q = size - 1 - p
        fns = variants(p, q)
        ref = {"forward": fns["forward xla"](x, k, g), "input grad": fns["input grad xla"](x, k, g)}
        for what, fn in fns.items():
            want = ref["forward" if what.startswith("forward") else "input grad"]
            err = float(jnp.max(jnp.abs(fn(x, k, g) - want)) / jnp.max(jnp.abs(want)))
            assert err < 1e-4, (name, what, err)
        ms = interleaved_medians(
            {w: (lambda f=f, x=x, k=k, g=g: f(x, k, g)) for w, f in fns.items()}, 2, args.repeats
        )
        flops = 2 * args.batch * h * h * c * o * size * size
        result[name] = {w: 1e3 * s for w, s in ms.items()}
        for what, seconds in ms.items():
            rows.append([name, what, f"{1e3 * seconds:.1f}", f"{flops / seconds / 1e9:.0f}"])
        print(name, {w: f"{1e3 * s:.1f} ms" for w, s in ms.items()}, flush=True)
    command = "python -m experiments.bench.conv_variants_benchmark" + "".join(
        f" {a}" for a in (argv if argv is not None else __import__("sys").argv[1:])
    )
    table = common.markdown_table(["layer (one tower)", "computation", "ms", "GFLOP/s"], rows)
    text = (
        f"# {command}  ({common.machine()}; batch {args.batch}, float32, medians of "
        f"{args.repeats} interleaved calls, {time.strftime('%H:%M')} UTC)\n{table}\n"
    )
    out = common.results_dir("benchmark", args.out)
    files.write_report(out, "conv_variants_cpu", text, {"command": command, "ms": result})
    return result


if __name__ == "__main__":
    main()
