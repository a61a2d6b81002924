"""Figure 3 (§6.1): conv1's kernels as an image grid, one block per tower, and how colourful
each tower's kernels are.

The paper: of the 96 11x11x3 kernels learned on ImageNet, the 48 of tower 1 are largely
colour-agnostic and the 48 of tower 2 largely colour-specific, whatever the initialisation.

Colourfulness of a kernel w (11x11x3): the share of its energy (about its mean) off the grey
axis, sum((w - grey)^2) / sum((w - mean(w))^2) where grey is the mean over the three colour
channels at each pixel; 0 for a kernel with R = G = B, 2/3 for colour noise. Each kernel is
drawn with its own contrast (min to max of that kernel mapped to 0..255), as in Figure 3.

  python -m experiments.paper.filters --workdir=/tmp/alexnet
  python -m experiments.paper.filters --checkpoint=/tmp/alexnet/checkpoints/450000
"""

from __future__ import annotations

import argparse

import numpy as np

from alexnet_jax import orbax_quiet
from experiments import common, files


def conv1_kernels(params) -> np.ndarray:
    """conv1's kernels as (towers, kernels, h, w, 3): AlexNet's kernel is (towers, h, w, 3, k),
    the CIFAR nets' (h, w, 3, k) (one block)."""
    kernel = np.asarray(params["conv1"]["kernel"], np.float64)
    if kernel.ndim == 4:
        kernel = kernel[None]
    return np.moveaxis(kernel, -1, 1)


def colourfulness(kernels: np.ndarray) -> np.ndarray:
    """Share of each kernel's energy off the grey axis; kernels (..., h, w, 3) -> (...)."""
    centred = kernels - kernels.mean(axis=(-3, -2, -1), keepdims=True)
    grey = kernels.mean(axis=-1, keepdims=True)
    return np.sum((kernels - grey) ** 2, axis=(-3, -2, -1)) / np.maximum(
        np.sum(centred**2, axis=(-3, -2, -1)), 1e-30
    )


def grid(kernels: np.ndarray, columns: int = 8, gap: int = 1) -> np.ndarray:
    """(n, h, w, 3) kernels, each min-max scaled, tiled into a float image in [0, 1]."""
    n, h, w, _ = kernels.shape
    rows = -(-n // columns)
    image = np.ones((rows * (h + gap) + gap, columns * (w + gap) + gap, 3))
    for i, k in enumerate(kernels):
        lo, hi = k.min(), k.max()
        r, c = divmod(i, columns)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        image[y : y + h, x : x + w] = (k - lo) / (hi - lo) if hi > lo else 0.5
    return image


def main(argv=None) -> dict:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="a training run's workdir")
    parser.add_argument("--checkpoint", default=None, help="or one checkpoint folder")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not (args.workdir or args.checkpoint):
        parser.error("give --workdir or --checkpoint")
    config, step, params = common.load_run(args.workdir, args.checkpoint)
    kernels = conv1_kernels(params)
    towers, n = kernels.shape[:2]
    colour = colourfulness(kernels)

    plt = common.plt()
    fig, axes = plt.subplots(towers, 1, figsize=(6, 3.4 * towers), squeeze=False)
    for t in range(towers):
        ax = axes[t, 0]
        ax.imshow(grid(kernels[t]), interpolation="nearest")
        ax.set_title(f"tower {t + 1}: {n} kernels, mean colourfulness {colour[t].mean():.3f}")
        ax.axis("off")
    fig.suptitle(f"conv1 of {config.model.name}, step {step}, {config.dataset}", fontsize=10)
    fig.tight_layout()
    out = common.results_dir("filters", args.out)
    fig.savefig(out / "conv1_filters.png", dpi=110)
    plt.close(fig)

    rows = [
        [f"tower {t + 1}", n, f"{colour[t].mean():.3f} ± {colour[t].std():.3f}",
         f"{np.median(colour[t]):.3f}"]
        for t in range(towers)
    ]  # fmt: skip
    text = common.markdown_table(["tower", "kernels", "colourfulness mean ± std", "median"], rows)
    measured = (
        f"conv1 of {config.model.name} at step {step}, trained on {config.dataset}; machine: "
        f"{common.machine()}. Colourfulness: share of a kernel's energy off the grey axis "
        "(0 = R=G=B, about 2/3 = colour noise). Paper: tower 1 colour-agnostic, tower 2 "
        "colour-specific."
    )
    (out / "results.md").write_text(
        f"# Figure 3: conv1 kernels\n\n{measured}\n\n{text}\n\n![conv1](conv1_filters.png)\n"
    )
    summary = {
        "run": args.workdir or args.checkpoint,
        "step": step,
        "dataset": config.dataset,
        "colourfulness": colour.tolist(),
        "tower_mean": colour.mean(axis=1).tolist(),
        "machine": common.machine(),
    }
    files.write_json(out / "results.json", summary)
    print(measured + "\n\n" + text + f"\n\nwritten to {out}")
    return summary


if __name__ == "__main__":
    main()
