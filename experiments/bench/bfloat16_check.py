"""What `model.compute_dtype='bfloat16'` does to AlexNet's numbers, against float32.

Same parameters, same images: the relative difference of the logits at initialisation, and
the loss of a few training steps (the paper's SGD, dropout on, one fixed batch of synthetic
images that the net learns to fit) with each compute type from the same start.

  python -m experiments.bench.bfloat16_check [--batch 8] [--steps 8]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models, train
from configs import alexnet as alexnet_config


def run(dtype: str, batch: int, steps: int, lr: float) -> tuple[np.ndarray, list[float]]:
    """Logits at initialisation and the losses of `steps` steps of the project's training step
    (`train.single_device_step`) on one fixed batch, computing in `dtype`."""
    config = alexnet_config.get_config()
    config.model.compute_dtype = dtype
    config.optimizer.learning_rate = lr
    config.optimizer.schedule = "constant"
    mesh, state, step = train.single_device_step(config)
    model = models.create_model(config.model)
    images = 60.0 * jax.random.normal(jax.random.key(1), (batch, 227, 227, 3))
    labels = jnp.arange(batch) % 1000
    logits = np.asarray(model.apply({"params": state.params}, images))
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(steps):
            state, out = step(state, images, labels, None)
            losses.append(float(out["train_loss"]))
    return logits, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    f32_logits, f32_losses = run("float32", args.batch, args.steps, args.lr)
    bf16_logits, bf16_losses = run("bfloat16", args.batch, args.steps, args.lr)
    diff = np.max(np.abs(bf16_logits - f32_logits)) / np.max(np.abs(f32_logits))
    print(
        f"AlexNet (configs/alexnet.py), batch {args.batch}, 227x227, paper init, "
        f"{jax.devices()[0].platform}"
    )
    print(f"logits at init: max |bf16 - f32| / max |f32| = {diff:.2e}")
    print(f"training loss on one fixed batch, lr {args.lr}, dropout on (same masks):")
    print(f"{'step':>4} {'float32':>9} {'bfloat16':>9}")
    for i, (a, b) in enumerate(zip(f32_losses, bf16_losses), 1):
        print(f"{i:>4} {a:>9.4f} {b:>9.4f}")


if __name__ == "__main__":
    main()
