"""Figure 4 (§6.1): for some test images, the training images whose last hidden layer (fc7,
4096-d) lies nearest in Euclidean distance.

The paper: neighbours in fc7 space are semantically alike even when their pixels are not (a
dog in other poses). Features are those of the centre patch with the training mean subtracted
(the evaluation view); the CIFAR nets have no fc7, so the input of their last layer is used.
Also printed: how often a neighbour has the query's label (the quantitative form of the claim),
in feature space and, for reference, in raw pixel space.

  python -m experiments.neighbors --workdir=/tmp/alexnet --queries=5 --k=6
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from alexnet_jax import augment, models
from experiments import common


def feature_layer(config) -> str:
    """fc7 for AlexNet; for a CIFAR net the output feeding its final layer."""
    if config.model.name == "alexnet":
        return "fc7_out"
    last = models.CIFAR_NETS[config.model.name][-2]
    return f"pool{last.name[-1]}_out" if last.pool else f"{last.name}_out"


def features(config, params, split: str, layer: str):
    """(features (N, D), labels (N,), uint8 images (N, S, S, 3)) of every image of `split`."""
    model = models.create_model(config.model)
    stats, _, batches = common.eval_batches(config, split)

    @jax.jit
    def embed(images):
        x = augment.eval_views(images, stats, config.augment, config.image_size, ten_crop=False)
        _, state = model.apply({"params": params}, x, train=False, mutable=["intermediates"])
        h = state["intermediates"][layer][0]
        return h.reshape(h.shape[0], -1)

    feats, labels, images = [], [], []
    for batch in batches():
        feats.append(np.asarray(embed(batch["image"])))
        labels.append(batch["label"])
        images.append(batch["image"])
    return np.concatenate(feats), np.concatenate(labels), np.concatenate(images)


def nearest(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k keys nearest each query in Euclidean distance, nearest first."""
    d2 = (queries**2).sum(1)[:, None] - 2 * queries @ keys.T + (keys**2).sum(1)[None]
    return np.argsort(d2, axis=1)[:, :k]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="a training run's workdir")
    parser.add_argument("--checkpoint", default=None, help="or one checkpoint folder")
    parser.add_argument("--queries", type=int, default=5, help="test images shown")
    parser.add_argument("--k", type=int, default=6, help="neighbours shown per query")
    parser.add_argument("--max_train", type=int, default=0, help="> 0: first N training images")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not (args.workdir or args.checkpoint):
        parser.error("give --workdir or --checkpoint")
    config, step, params = common.load_run(args.workdir, args.checkpoint, progress_bar=False)
    if config.dataset in ("digits", "synthetic"):
        config.num_workers = 0
    layer = feature_layer(config)
    train_f, train_y, train_x = features(config, params, config.train_split, layer)
    test_f, test_y, test_x = features(config, params, config.eval_split, layer)
    if args.max_train:
        train_f, train_y, train_x = (a[: args.max_train] for a in (train_f, train_y, train_x))

    # Label agreement of the k nearest, over every test image; then the shown queries.
    idx = nearest(test_f, train_f, args.k)
    agree = float(np.mean(train_y[idx] == test_y[:, None]))
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32)  # noqa: E731
    pixel_idx = nearest(flat(test_x), flat(train_x), args.k)
    pixel_agree = float(np.mean(train_y[pixel_idx] == test_y[:, None]))
    shown = np.linspace(0, len(test_f) - 1, args.queries).astype(int)

    plt = common.plt()
    fig, axes = plt.subplots(
        len(shown), args.k + 1, figsize=(1.3 * (args.k + 1), 1.4 * len(shown)), squeeze=False
    )
    names = common.input_pipeline.create_source(config, config.eval_split).class_names
    label = lambda y: names[y] if names else str(y)  # noqa: E731
    for row, q in enumerate(shown):
        cells = [(test_x[q], f"query: {label(test_y[q])}")]
        cells += [(train_x[j], label(train_y[j])) for j in idx[q]]
        for col, (image, title) in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(image, interpolation="nearest")
            ax.set_title(title, fontsize=7, color="black" if col == 0 else "dimgray")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2)
    fig.suptitle(
        f"{layer} neighbours, {config.model.name} step {step} ({config.dataset})", fontsize=9
    )
    fig.tight_layout()
    out = common.results_dir("neighbors", args.out)
    fig.savefig(out / "neighbors.png", dpi=110)
    plt.close(fig)

    text = common.markdown_table(
        ["space", f"neighbours (k={args.k}) with the query's label, all test images"],
        [[f"{layer} ({train_f.shape[1]}-d)", f"{agree:.1%}"], ["raw pixels", f"{pixel_agree:.1%}"]],
    )
    measured = (
        f"{config.model.name} at step {step} on {config.dataset}: {len(test_f)} test queries "
        f"against {len(train_f)} training images; machine: {common.machine()}."
    )
    (out / "results.md").write_text(
        f"# Figure 4: nearest neighbours in {layer}\n\n{measured}\n\n{text}\n\n"
        "![neighbours](neighbors.png)\n"
    )
    summary = {
        "run": args.workdir or args.checkpoint,
        "step": step,
        "layer": layer,
        "k": args.k,
        "label_agreement": agree,
        "pixel_label_agreement": pixel_agree,
        "shown_queries": shown.tolist(),
        "neighbours": idx[shown].tolist(),
        "machine": common.machine(),
    }
    common.write_json(out / "results.json", summary)
    print(measured + "\n\n" + text + f"\n\nwritten to {out}")
    return summary


if __name__ == "__main__":
    main()
