"""How one device should compute the towers' own-tower convolutions (conv2, conv4, conv5).

Both towers on one device can run as one grouped convolution (`feature_group_count=2`, what
`jax.vmap` over the towers would also produce) or as one ordinary convolution per tower. XLA's
grouped convolution is slow in the backward pass on the CPU (jax-ml/jax issue 13800), so this
script measures both, in one process, on the paper's network, and prints the ratio.

  python -m experiments.bench.tower_conv_benchmark [--batch 16] [--repeats 5]

The default `config.model.grouped_conv` is the faster of the two on the machine it was measured on.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from alexnet_jax import models, train
from configs import alexnet as alexnet_config
from experiments.bench.timing import interleaved_medians


def measure(grouped: bool, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Images/s of the project's training step (`train.single_device_step`) and of inference."""
    config = alexnet_config.get_config()
    config.model.grouped_conv = grouped
    config.image_size = size
    mesh, state, step = train.single_device_step(config)
    model = models.create_model(config.model)
    params = jax.tree.map(jnp.copy, state.params)
    images = 60.0 * jax.random.normal(jax.random.key(1), (batch, size, size, 3))
    labels = jnp.arange(batch) % 1000
    holder = [state]

    def run_step():
        holder[0], out = step(holder[0], images, labels, None)
        return out

    infer = jax.jit(lambda p: model.apply({"params": p}, images))
    with jax.set_mesh(mesh):
        s = interleaved_medians({"train": run_step, "infer": lambda: infer(params)}, 1, repeats)
    return {"train_images_per_sec": batch / s["train"], "infer_images_per_sec": batch / s["infer"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"AlexNet, paper config, both towers on one {jax.devices()[0].platform} device, "
        f"batch {args.batch}, {args.image_size}x{args.image_size}, float32, "
        f"median of {args.repeats} after warm-up"
    )
    split = measure(False, args.batch, args.image_size, args.repeats)
    grouped = measure(True, args.batch, args.image_size, args.repeats)
    print(f"{'own-tower convs':<28}{'train img/s':>12}{'infer img/s':>12}")
    for name, r in (("one conv per tower", split), ("grouped (feature_group_count)", grouped)):
        print(f"{name:<28}{r['train_images_per_sec']:>12.2f}{r['infer_images_per_sec']:>12.2f}")
    print(
        f"{'split / grouped':<28}"
        f"{split['train_images_per_sec'] / grouped['train_images_per_sec']:>12.2f}"
        f"{split['infer_images_per_sec'] / grouped['infer_images_per_sec']:>12.2f}"
    )


if __name__ == "__main__":
    main()
