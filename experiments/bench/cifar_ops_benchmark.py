"""The two CIFAR-net layers rewritten for speed, against Flax's own, and the step they are in.

The offline default (configs/default.py: the §3.3 net `cifar_lrn` on digits) is the network most
runs on this machine train, the tests included. Two of its layers ran far below the rate of
their arithmetic on the CPU:
- local3/local4 (Flax's `nn.ConvLocal`) gather their 3x3 patches with a convolution by an
  identity kernel; `ops.locally_connected` gathers them with nine slices (the same outputs and
  kernel gradient bit for bit);
- pool1/pool2 (`nn.max_pool`) differentiate through XLA's select-and-scatter;
  `cifar_nets.ceil_pool` runs `ops.max_pool`'s closed-form gradient (the same values).
This script times each layer's forward + backward both ways, in one process, interleaved, at the
offline default's batch, and the training step of the offline default as it now is.

  python -m experiments.bench.cifar_ops_benchmark [--batch 32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import datetime

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import cifar_nets, train
from configs import default
from experiments.bench.timing import interleaved_medians
from experiments.paper.default_spread import cpu_model


def _forward_backward(apply, x):
    """jit(x -> (sum of sin(outputs), its input gradient)): a forward and backward pass."""
    return jax.jit(jax.value_and_grad(lambda a: jnp.sum(jnp.sin(apply(a)))))


def _layers(batch: int, repeats: int) -> dict[str, dict[str, float]]:
    init = nn.initializers.lecun_normal()
    zeros = nn.initializers.zeros
    local_x = jax.random.normal(jax.random.key(0), (batch, 8, 8, 64))  # local3's input
    flax_local = nn.ConvLocal(32, (3, 3), padding=1, kernel_init=init, bias_init=zeros)
    ours_local = cifar_nets.LocallyConnected(32, init, zeros)
    params = flax_local.init(jax.random.key(1), local_x)
    pool_x = jax.nn.relu(jax.random.normal(jax.random.key(2), (batch, 32, 32, 64)))  # pool1's
    pads = [(0, 1), (0, 1)]
    runs = {
        "local3 (8x8x64 -> 32): nn.ConvLocal": (
            _forward_backward(lambda a: flax_local.apply(params, a), local_x), local_x),
        "local3 (8x8x64 -> 32): ops.locally_connected": (
            _forward_backward(lambda a: ours_local.apply(params, a), local_x), local_x),
        "pool1 (32x32x64, 3/2): nn.max_pool": (
            _forward_backward(lambda a: nn.max_pool(a, (3, 3), (2, 2), padding=pads), pool_x),
            pool_x),
        "pool1 (32x32x64, 3/2): cifar_nets.ceil_pool": (
            _forward_backward(lambda a: cifar_nets.ceil_pool(a, "max"), pool_x), pool_x),
    }  # fmt: skip
    calls = {name: (lambda f=f, x=x: f(x)) for name, (f, x) in runs.items()}
    return interleaved_medians(calls, 2, repeats)


def _step(batch: int, repeats: int) -> float:
    """Seconds per training step of configs/default.py (one device, no augmentation)."""
    config = default.get_config()
    config.batch_size = batch
    mesh, state, step = train.single_device_step(config)
    images = np.random.default_rng(0).random((batch, 32, 32, 3), np.float32)
    labels = np.arange(batch, dtype=np.int32) % 10
    holder = [state]

    def run():
        holder[0], out = step(holder[0], images, labels, None)
        return out

    with jax.set_mesh(mesh):
        return interleaved_medians({"step": run}, 2, repeats)["step"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    command = "python -m experiments.bench.cifar_ops_benchmark"
    print(f"{command} --batch {args.batch} --repeats {args.repeats}")
    print(
        f"{datetime.date.today()}, {cpu_model()}, JAX {jax.__version__} ({jax.default_backend()}); "
        f"batch {args.batch}, float32, forward + backward, median of {args.repeats} after warm-up"
    )
    times = _layers(args.batch, args.repeats)
    for name, seconds in times.items():
        print(f"{name:<48}{seconds * 1e3:>9.2f} ms")
    names = list(times)
    for flax_name, ours_name in zip(names[::2], names[1::2]):
        ratio = times[flax_name] / times[ours_name]
        print(f"{ours_name.split(': ')[1] + ' / Flax':<48}{ratio:>9.2f}x faster")
    print(f"{'training step of configs/default.py':<48}{_step(args.batch, args.repeats):>9.3f} s")


if __name__ == "__main__":
    main()
