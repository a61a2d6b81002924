"""How one device should compute the towers' own-tower convolutions (conv2, conv4, conv5).

Both towers on one device can run as one grouped convolution (`feature_group_count=2`, what
`jax.vmap` over the towers would also produce) or as one ordinary convolution per tower. XLA's
grouped convolution is slow in the backward pass on the CPU (jax-ml/jax issue 13800), so this
script measures both, in one process, on the paper's network, and prints the ratio.

  python -m experiments.tower_conv_benchmark [--batch 16] [--repeats 5]

The default `config.model.grouped_conv` is the faster of the two on the machine it was measured on.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from alexnet_jax import models, parallel
from configs import alexnet as alexnet_config
from experiments.timing import median_seconds


def measure(grouped: bool, batch: int, size: int, repeats: int) -> dict[str, float]:
    mc = alexnet_config.get_model_config()
    mc.grouped_conv = grouped
    model = models.create_model(mc)
    params = parallel.init_params(mc, (size, size, 3), jax.random.key(0))
    images = 60.0 * jax.random.normal(jax.random.key(1), (batch, size, size, 3))
    labels = jnp.arange(batch) % 1000
    tx = optax.sgd(0.01, momentum=0.9)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state):
        def loss_fn(p):
            logits = model.apply(
                {"params": p}, images, train=True, rngs={"dropout": jax.random.key(2)}
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    infer = jax.jit(lambda p: model.apply({"params": p}, images))
    train_s = median_seconds(lambda: train_step(params, opt_state), repeats)
    infer_s = median_seconds(lambda: infer(params), repeats)
    return {"train_images_per_sec": batch / train_s, "infer_images_per_sec": batch / infer_s}


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
