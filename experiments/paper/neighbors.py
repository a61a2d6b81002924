"""Figure 4 (§6.1): for some test images, the training images whose last hidden layer (fc7,
4096-d) lies nearest in Euclidean distance.

The paper: neighbours in fc7 space are semantically alike even when their pixels are not (a
dog in other poses). Features are those of the centre patch with the training mean subtracted
(the evaluation view), computed by `alexnet_jax.features`: for AlexNet `fc7_out`, fc7 after the
ReLU and dropout's test-time scaling; the CIFAR nets have no fc7, so the input of their last
layer is used.
Also printed: how often a neighbour has the query's label (the quantitative form of the claim),
in feature space and, for reference, in raw pixel space (the S x S x 3 uint8 image the
evaluation pipeline delivers).

The search streams the training set. The queries (the first --max_queries test images, default
all) are embedded first and held: their features (Q x D float32) and their pixels (Q x P uint8,
P = S * S * 3). Then the training split goes by one evaluation batch at a time (B images):
embedded, its squared distances to every query computed (in float64, in blocks of queries),
and merged into each query's running k nearest (`TopK`), in feature and in pixel space. No
training feature or image is kept; the few neighbour images of the figure are read back by
index from the training source at the end. Peak memory is therefore

  O(Q x (D + P) + B x (D + P) + Q x (B + k))   bytes: Q*(4D + P) + 8*B*(D + P) + 8*Q*B + ...

independent of the number of training images (measured flat from 1k to 64k training images
in experiments/results/neighbors_memory/, experiments/bench/neighbors_memory.py). On ImageNet with
all 50,000 validation queries that is 0.8 GB of fc7 features plus 9.8 GB of 256 x 256 pixels;
--max_queries bounds it. --max_train N reads only the first N training images (nothing after
them is decoded or embedded).

Ties are broken by the lower training index, so the neighbours equal a brute-force stable
argsort of the full distance matrix, whatever the batch size.

  python -m experiments.paper.neighbors --workdir=/tmp/alexnet --queries=5 --k=6
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import numpy as np

from alexnet_jax import cifar_nets, feature_layers, features, input_pipeline, orbax_quiet
from experiments import common, files

# Queries are converted to float64 for the distance products this many bytes at a time.
_BLOCK_BYTES = 1 << 26


def feature_layer(config) -> str:
    """fc7 for AlexNet; for a CIFAR net the output feeding its final layer."""
    if config.model.name == "alexnet":
        return "fc7_out"
    last = cifar_nets.CIFAR_NETS[config.model.name][-2]
    return f"pool{last.name[-1]}_out" if last.pool else f"{last.name}_out"


def stream(config, split: str, limit: int = 0) -> Iterator[tuple[np.ndarray, ...]]:
    """(source indices, uint8 images (n, S, S, 3), labels) of the first `limit` (0: all)
    examples of `split`, one evaluation batch at a time, in source order; unreadable examples
    are left out (masked by the pipeline), so the indices say which ones these are."""
    source = input_pipeline.create_source(config, split)
    if limit:
        source = features.Prefix(source, limit)
    yield from features.kept_batches(config, source)


def embedder(config, params, layer: str, stats) -> Callable[[np.ndarray], np.ndarray]:
    """images uint8 (n, S, S, 3) -> float32 features (n, D) of `layer` (a name
    `alexnet_jax.features` accepts) for the centre patch, computed by
    `features.feature_function`: a short batch is padded to config.batch_size, so only one
    shape is ever compiled."""
    (resolved,) = feature_layers.resolve_layers(config, [layer])
    compute = features.feature_function(config, params, [resolved], stats, "centre")
    return lambda images: compute(images)[layer]


def sq_distances(queries: np.ndarray, query_norms: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """float64 (Q, B) squared Euclidean distances |q|^2 - 2 q.k + |k|^2. `queries` (any dtype,
    e.g. uint8 pixels) are converted in blocks of rows; `query_norms` are their float64 |q|^2.
    For integer inputs (pixels) every value is exact, so equal distances are equal."""
    keys = np.asarray(keys, np.float64).reshape(len(keys), -1)
    key_norms = np.einsum("ij,ij->i", keys, keys)
    out = np.empty((len(queries), len(keys)), np.float64)
    rows = max(1, _BLOCK_BYTES // (8 * max(1, keys.shape[1])))
    for i in range(0, len(queries), rows):
        q = np.asarray(queries[i : i + rows], np.float64).reshape(-1, keys.shape[1])
        out[i : i + rows] = query_norms[i : i + rows, None] - 2.0 * (q @ keys.T) + key_norms
    return out


def sq_norms(x: np.ndarray) -> np.ndarray:
    """float64 |x_i|^2 of every row, converted in blocks (as `sq_distances` does)."""
    x = x.reshape(len(x), -1)
    rows = max(1, _BLOCK_BYTES // (8 * max(1, x.shape[1])))
    parts = [np.asarray(x[i : i + rows], np.float64) for i in range(0, len(x), rows)]
    return np.concatenate([np.einsum("ij,ij->i", p, p) for p in parts] or [np.zeros(0)])


class TopK:
    """The running k smallest squared distances of every query, with the training indices and
    labels they belong to, nearest first, ties by lower index.

    `push` takes the (Q, B) distances of one chunk of training examples whose indices are
    increasing and all above those pushed before (the streaming order). The merged candidates
    are then in index order among equal distances (the running best is sorted by (distance,
    index), the chunk follows it), so "equal distance: earlier position" is the tie rule,
    applied by a partial sort: np.partition finds each query's k-th smallest distance t, every
    candidate below t is kept and those equal to t are kept in position order until k are.
    After any sequence of pushes `ids` equals np.argsort(d2, kind='stable')[:, :k] of the
    whole distance matrix (NaN distances count as +inf).
    """

    def __init__(self, num_queries: int, k: int):
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self.k = k
        self.d2 = np.zeros((num_queries, 0), np.float64)
        self.ids = np.zeros((num_queries, 0), np.int64)
        self.labels = np.zeros((num_queries, 0), np.int64)
        self._next = 0  # Every index pushed so far is below this.

    def push(self, d2: np.ndarray, ids: np.ndarray, labels: np.ndarray | None = None) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        if ids[0] < self._next or np.any(np.diff(ids) <= 0):
            raise ValueError("TopK.push: indices must increase across and within chunks")
        self._next = int(ids[-1]) + 1
        q = len(self.d2)
        labels = np.zeros(len(ids), np.int64) if labels is None else np.asarray(labels, np.int64)
        d2 = np.where(np.isnan(d2), np.inf, np.asarray(d2, np.float64))
        all_d2 = np.concatenate([self.d2, d2], axis=1)
        all_ids = np.concatenate([self.ids, np.broadcast_to(ids, (q, len(ids)))], axis=1)
        all_labels = np.concatenate([self.labels, np.broadcast_to(labels, (q, len(ids)))], axis=1)
        n, k = all_d2.shape[1], self.k
        if n > k:
            t = np.partition(all_d2, k - 1, axis=1)[:, k - 1 : k]
            below = all_d2 < t
            at = all_d2 == t
            room = k - below.sum(axis=1, keepdims=True)
            keep = below | (at & (np.cumsum(at, axis=1) <= room))
            pos = np.nonzero(keep)[1].reshape(q, k)  # Exactly k per row, in position order.
        else:
            pos = np.broadcast_to(np.arange(n), (q, n))
        # Sort the kept by distance; stable, so equal distances stay in index order.
        pos = np.take_along_axis(
            pos, np.argsort(np.take_along_axis(all_d2, pos, 1), axis=1, kind="stable"), 1
        )
        self.d2 = np.take_along_axis(all_d2, pos, 1)
        self.ids = np.take_along_axis(all_ids, pos, 1)
        self.labels = np.take_along_axis(all_labels, pos, 1)


def nearest(queries: np.ndarray, keys: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices of the k keys nearest each query in Euclidean distance, nearest first (ties:
    lower index), searched `chunk` keys at a time."""
    top = TopK(len(queries), k)
    norms = sq_norms(queries)
    for start in range(0, len(keys), chunk):
        block = keys[start : start + chunk]
        top.push(sq_distances(queries, norms, block), np.arange(start, start + len(block)))
    return top.ids


def query_split(config) -> str:
    """The split the query images come from: the run's test split (Figure 4 shows test
    images), else its evaluation split (ImageNet: validation)."""
    return config.get("test_split") or config.eval_split


def search(config, params, layer: str, k: int, max_train: int = 0, max_queries: int = 0):
    """The streaming search of the module docstring. Returns a dict: query_ids, query_labels,
    query_images (uint8, held), dim, train_images (the number streamed), feature and pixel
    (`TopK`s over the queries)."""
    train_source = input_pipeline.create_source(config, config.train_split)
    stats = input_pipeline.load_data_stats(config, train_source)
    embed = embedder(config, params, layer, stats)

    q_ids, q_labels, q_images, q_feats = [], [], [], []
    for ids, images, labels in stream(config, query_split(config), max_queries):
        q_ids.append(ids)
        q_labels.append(labels)
        q_images.append(images)
        q_feats.append(embed(images))
    q_ids, q_labels = np.concatenate(q_ids), np.concatenate(q_labels)
    q_images, q_feats = np.concatenate(q_images), np.concatenate(q_feats)
    q_pixels = q_images.reshape(len(q_images), -1)  # A view: uint8, converted in blocks.
    feat_norms, pixel_norms = sq_norms(q_feats), sq_norms(q_pixels)

    feature, pixel = TopK(len(q_ids), k), TopK(len(q_ids), k)
    seen = 0
    for ids, images, labels in stream(config, config.train_split, max_train):
        feature.push(sq_distances(q_feats, feat_norms, embed(images)), ids, labels)
        pixel.push(sq_distances(q_pixels, pixel_norms, images), ids, labels)
        seen += len(ids)
    return {
        "query_ids": q_ids,
        "query_labels": q_labels,
        "query_images": q_images,
        "dim": q_feats.shape[1],
        "train_images": seen,
        "feature": feature,
        "pixel": pixel,
    }


def main(argv=None) -> dict:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="a training run's workdir")
    parser.add_argument("--checkpoint", default=None, help="or one checkpoint folder")
    parser.add_argument("--queries", type=int, default=5, help="test images shown")
    parser.add_argument("--k", type=int, default=6, help="neighbours shown per query")
    parser.add_argument("--max_train", type=int, default=0, help="> 0: first N training images")
    parser.add_argument("--max_queries", type=int, default=0, help="> 0: first N test images")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not (args.workdir or args.checkpoint):
        parser.error("give --workdir or --checkpoint")
    config, step, params = common.load_run(args.workdir, args.checkpoint, progress_bar=False)
    if config.dataset in ("digits", "synthetic"):
        config.num_workers = 0
    layer = feature_layer(config)
    found = search(config, params, layer, args.k, args.max_train, args.max_queries)
    q_ids, test_y, test_x = found["query_ids"], found["query_labels"], found["query_images"]
    feature, pixel = found["feature"], found["pixel"]

    # Label agreement of the k nearest, over every query; then the shown queries.
    agree = float(np.mean(feature.labels == test_y[:, None]))
    pixel_agree = float(np.mean(pixel.labels == test_y[:, None]))
    idx = feature.ids
    shown = np.linspace(0, len(q_ids) - 1, args.queries).astype(int)

    plt = common.plt()
    fig, axes = plt.subplots(
        len(shown), args.k + 1, figsize=(1.3 * (args.k + 1), 1.4 * len(shown)), squeeze=False
    )
    train_source = input_pipeline.create_source(config, config.train_split)
    names = input_pipeline.create_source(config, query_split(config)).class_names
    label = lambda y: names[y] if names else str(y)  # noqa: E731
    for row, q in enumerate(shown):
        cells = [(test_x[q], f"query: {label(test_y[q])}")]
        for j in idx[q]:  # The shown neighbours, read back by index (the image batches hold).
            example = train_source[int(j)]
            cells.append((example["image"], label(example["label"])))
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
        for col in range(len(cells), args.k + 1):  # Fewer than k training images.
            axes[row, col].axis("off")
    fig.suptitle(
        f"{layer} neighbours, {config.model.name} step {step} ({config.dataset})", fontsize=9
    )
    fig.tight_layout()
    out = common.results_dir("neighbors", args.out)
    fig.savefig(out / "neighbors.png", dpi=110)
    plt.close(fig)

    text = common.markdown_table(
        ["space", f"neighbours (k={args.k}) with the query's label, all test images"],
        [[f"{layer} ({found['dim']}-d)", f"{agree:.1%}"], ["raw pixels", f"{pixel_agree:.1%}"]],
    )
    measured = (
        f"{config.model.name} at step {step} on {config.dataset}: {len(q_ids)} queries from "
        f"'{query_split(config)}' "
        f"against {found['train_images']} training images; machine: {common.machine()}."
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
        "shown_queries": q_ids[shown].tolist(),
        "neighbours": idx[shown].tolist(),
        "train_images": found["train_images"],
        "test_queries": len(q_ids),
        "machine": common.machine(),
    }
    files.write_json(out / "results.json", summary)
    print(measured + "\n\n" + text + f"\n\nwritten to {out}")
    return summary


if __name__ == "__main__":
    main()
