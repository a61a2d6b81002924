"""A trained network's activations at any layer, written to disk (the features of §6.1).

  python -m alexnet_jax.features --config=configs/default.py \
      --workdir=/tmp/alexnet_jax_default --layers=local4,pool2 --split=test --out=/tmp/feat
  python -m alexnet_jax.features --config=configs/torchvision_alexnet.py \
      --weights=alexnet-owt-7be5be79.pth --layers=fc6,fc7 --patches=ten --out=/tmp/feat \
      --config.data_dir=$HOME/tensorflow_datasets
  python -m alexnet_jax.features --config=configs/default.py --random_init --layers=fc10 \
      --out=/tmp/feat_random

The parameters come from exactly one of: a training run (`--workdir`, its latest checkpoint
or `--step=N`; the run's recorded model must be `--config`'s, as in `alexnet_jax.evaluate`),
a weights file (`--weights`, Caffe's bvlc_alexnet.npy or a torchvision state dict), or the
config's own initialisation (`--random_init`: the step-0 parameters of a training run with
`config.seed`). Images go through the evaluation pipeline (§2: the shorter side resized, the
centre square, the training mean subtracted) and the features are those of the centre patch
or the mean over the ten patches of §4.1 (`--patches=ten`).

Layers (`available_layers`). `conv1`..`conv5`, `fc6`, `fc7` (AlexNet) and the CIFAR nets'
hidden layers (`conv1`, `conv2`, `local3`, `local4` of cifar_lrn) are a layer's output after
its activation (before any normalization, pooling or dropout that follows; after the LRN
where `model.lrn_before_relu` puts it first); `<layer>_pre` is before the activation; `fc8`
(`fc10`) the logits before the softmax; `pool1`, `pool2`, `pool5`, `lrn1`, `lrn2` (and
`wnorm1`, `wnorm2` where configured) the outputs of those operations. Every value the
network sows is accepted by its own name too (`fc7_out`: after the activation and the
test-time dropout scaling, `conv1_out`: after the activation and the LRN). Each layer's
record says in words what it is.

Files in `--out`: per layer, `<layer>/part-00000.npy`, ... (float32 rows (n, D), D the
flattened size of one example's activation, `--shard_rows` rows a file, ~256 MiB by default),
`labels.npy` (int64), `examples.txt` (one line per example, the source's name for it,
`Source.example_name`, with backslashes and line breaks escaped) and `features.json`, the
record of what was computed from what, written last. When everything is smaller than 64 MiB
(or `--format=npz`) the features and labels are one `features.npz` instead. Everything is
written into a temporary sibling folder that is renamed to `--out` at the end, so a failed
run leaves nothing; an existing non-empty `--out` is refused unless `--overwrite`.

Memory is bounded by a batch: each batch's rows are appended to the open shards as they come
(the .npy header has a fixed size and gets the row count when the shard is closed), and the
.npz is assembled from the shards by copying bytes (experiments/bench/features_memory.py measures
it flat in the number of images). Unreadable images are skipped and counted, as in evaluation.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import struct
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import (
    architecture,
    augment,
    cifar_nets,
    evaluate,
    input_pipeline,
    models,
    orbax_quiet,
    parallel,
    sources,
)
from alexnet_jax import weights as weights_lib
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.errors import first_line
from alexnet_jax.images import SKIP_REASONS

PATCHES = ("centre", "ten")
FILE_FORMATS = ("auto", "shards", "npz")
RECORD = "features.json"
LABELS = "labels.npy"
EXAMPLES = "examples.txt"
NPZ = "features.npz"
SHARD_BYTES = 256 << 20  # the default shard: about this many bytes of float32 rows
NPZ_BELOW = 64 << 20  # format 'auto' writes one .npz when all the features are below this
RECORD_VERSION = 1


class FeaturesError(ValueError):
    """Features that cannot be extracted or read as asked (the message says why)."""


# --- Parameters ---------------------------------------------------------------------------


def load_params(
    config: Any, *, workdir: str | None = None, step: int | None = None,
    weights: str | None = None, weights_format: str = "", random_init: bool = False,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """(params as NumPy, a record of where they came from) of exactly one source.

    Args:
      config: the experiment config; its model must be the network the parameters fit.
      workdir: a training run: its latest checkpoint, or checkpoints/`step`.
      step: with `workdir`, the checkpoint to read.
      weights: a weights file (`weights.FORMATS`), in `weights_format` or the format its suffix
        says (`weights.infer_format`).
      random_init: the config's initialisation with `config.seed`, split as
        `train.create_train_state` splits it: the step-0 parameters of a training run.

    Raises:
      FeaturesError, evaluate.EvaluationError (another network), weights.WeightsError,
      checkpoint.NoReadableCheckpointError.
    """
    given = [
        name for name, value in
        (("--workdir", workdir), ("--weights", weights), ("--random_init", random_init)) if value
    ]  # fmt: skip
    if len(given) != 1:
        got = f" (got {' and '.join(given)})" if given else ""
        raise FeaturesError(
            f"give exactly one source of parameters: --workdir=RUN, --weights=FILE or "
            f"--random_init{got}."
        )
    if step is not None and not workdir:
        raise FeaturesError("--step chooses a checkpoint of --workdir; give --workdir too.")
    if workdir:
        if not os.path.isdir(workdir):
            raise FeaturesError(f"--workdir={workdir}: no such directory.")
        return evaluate.run_params(config, workdir, step)  # the run's network only
    if weights:
        fmt = weights_lib.infer_format(weights, weights_format)
        if fmt == "run":
            raise FeaturesError(
                f"--weights={weights} is a folder; pass a training run as --workdir."
            )
        return evaluate.weights_params(config, weights, fmt)
    init_rng, _ = jax.random.split(jax.random.key(config.seed))  # as train.create_train_state
    shape = (config.image_size, config.image_size, 3)
    params = jax.tree.map(np.asarray, parallel.init_params(config.model, shape, init_rng))
    return params, {"random_init": True, "seed": int(config.seed), "init": config.model.init}


# --- Layers ---------------------------------------------------------------------------------


def sown_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """{key the network sows: one example's shape} (traced by `jax.eval_shape`: nothing is
    computed)."""
    model = models.create_model(config.model)
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)

    def run(x):
        variables = model.init(jax.random.key(0), x)
        _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
        return state["intermediates"]

    return {k: tuple(v[0].shape[1:]) for k, v in jax.eval_shape(run, x).items()}


def _describe_alexnet(config: Any) -> tuple[dict[str, str], dict[str, str]]:
    """({sown key: what it is}, {user name: sown key}) of AlexNet under `config.model`."""
    m = config.model
    act, rate = m.activation, m.dropout_rate
    norm = "LRN" if m.lrn_kind == "cross_map" else "within-map normalization"
    keys, names = {}, {}
    for layer in architecture.model_layers(m):
        name, n = layer.name, layer.name[-1]
        if layer.removed:  # model.remove_conv: only its pooling is computed, on its input
            if layer.pool:
                keys[f"pool{n}_out"] = (
                    f"max pooling ({m.pool_window}x{m.pool_window}, stride 2) where {name}'s "
                    f"was, of {name}'s input ({name} removed: model.remove_conv)"
                )
                names[f"pool{n}"] = f"pool{n}_out"
            continue
        if name == "fc8":
            keys["logits"] = "fc8's output, the logits before the softmax"
            names["fc8"] = "logits"
            break
        if not layer.is_conv and m.dropout_on == "inputs" and layer.dropout:
            keys[f"{name}_in"] = (
                f"{name}'s input after dropout (torchvision's placement; the identity at test "
                "time with inverted scaling)"
            )
        lrn = layer.lrn and m.lrn
        first = lrn and name in m.lrn_before_relu
        wnorm = lrn and name in m.within_map_after
        later = []  # what follows the activation, in order
        if lrn and not first:
            later.append(norm)
        if wnorm:
            later.append("within-map normalization")
        if layer.pool:
            later.append("max pooling")
        dropped = layer.dropout and rate and m.dropout_on == "outputs"
        if dropped:
            later.append("dropout")
        keys[f"{name}_pre"] = (
            f"{name} before the {act}" + (f" and before its {norm}" if first else "")
            + " (weights times inputs plus bias)"
        )  # fmt: skip
        done = f"{name} after its {norm} and the {act}" if first else f"{name} after {act}"
        keys[f"{name}_act"] = done + (f", before {' and '.join(later)}" if later else "")
        if name in ("fc6", "fc7"):
            keys[f"{name}_act"] += f" (DeCAF{n}: Caffe's {name} blob after relu{n})"
        names[name] = f"{name}_act"
        if lrn:
            keys[f"lrn{n}_out"] = (
                f"{name} after its {norm} ({'before' if first else 'after'} the {act}), before "
                + ("within-map normalization and " if wnorm else "") + "max pooling"
            )  # fmt: skip
            names[f"lrn{n}"] = f"lrn{n}_out"
        if wnorm:
            keys[f"wnorm{n}_out"] = (
                f"{name} after its {norm}, the {act} and within-map normalization, before max "
                "pooling"
            )
            names[f"wnorm{n}"] = f"wnorm{n}_out"
        if dropped and m.dropout_scaling == "test_time":
            out = f"{name} after {act} and dropout's test-time scaling x {1 - rate:g} (§4.2)"
        elif dropped:
            out = f"{name} after {act} and dropout (inverted: the identity at test time)"
        else:
            applied = [act] + [op for op in later if op != "max pooling"]
            out = f"{name} after {' and '.join(applied)}" + (
                ", before max pooling" if layer.pool else ""
            )
        keys[f"{name}_out"] = out
        if layer.pool:
            keys[f"pool{n}_out"] = (
                f"{name}'s max pooling output ({m.pool_window}x{m.pool_window}, stride 2)"
            )
            names[f"pool{n}"] = f"pool{n}_out"
    return keys, names


def _describe_cifar(config: Any) -> tuple[dict[str, str], dict[str, str]]:
    """({sown key: what it is}, {user name: sown key}) of a CIFAR net under `config.model`."""
    m = config.model
    act = m.activation
    keys, names = {}, {}
    for spec in cifar_nets.CIFAR_NETS[m.name]:
        name = spec.name
        if spec.kind == "fc":
            keys["logits"] = f"{name}'s output, the logits before the softmax"
            names[name] = "logits"
            break
        lrn = spec.lrn and m.lrn
        kind = {"conv": "convolution", "local": "locally connected"}[spec.kind]
        keys[f"{name}_pre"] = f"{name} ({kind}) before the {act}"
        later = (["LRN"] if lrn and spec.lrn_before_pool else []) + (
            [f"{spec.pool} pooling"] if spec.pool else []
        )
        keys[f"{name}_act"] = f"{name} ({kind}) after {act}" + (
            f", before {' and '.join(later)}" if later else ""
        )
        names[name] = f"{name}_act"
        keys[f"{name}_out"] = (
            f"{name} after {act}" + (" and LRN" if lrn and spec.lrn_before_pool else "")
            + (f", before {spec.pool} pooling" if spec.pool else "")
        )  # fmt: skip
        if spec.pool:
            n = name[-1]
            keys[f"pool{n}_out"] = f"{name}'s {spec.pool} pooling output (3x3, stride 2)" + (
                ", then LRN" if lrn and not spec.lrn_before_pool else ""
            )
            names[f"pool{n}"] = f"pool{n}_out"
    return keys, names


def _vocabulary(config: Any) -> tuple[dict[str, str], dict[str, str], dict[str, tuple]]:
    """({user name or sown key: sown key}, {sown key: description}, {sown key: shape})."""
    shapes = sown_shapes(config)
    describe = _describe_alexnet if config.model.name == "alexnet" else _describe_cifar
    described, aliases = describe(config)
    text = {k: described.get(k, f"the value the network sows as {k!r}") for k in shapes}
    names = {alias: key for alias, key in aliases.items() if key in shapes}
    ordered = [k for k in described if k in shapes] + [k for k in shapes if k not in described]
    names.update({key: key for key in ordered})  # in the order the network computes them
    return names, text, shapes


def available_layers(config: Any) -> dict[str, str]:
    """{layer name: what it is} of every name `--layers` accepts for `config.model`: the
    user vocabulary first (conv1, pool1, ..., fc8), then every key the network sows, both in
    the order the network computes them."""
    names, text, _ = _vocabulary(config)
    return {name: text[key] for name, key in names.items()}


def resolve_layers(config: Any, layers: Sequence[str]) -> list[dict[str, Any]]:
    """[{name, key, description, shape, dim}] of the `layers` asked for, or one FeaturesError
    naming the unknown ones and every available name."""
    names, text, shapes = _vocabulary(config)
    layers = list(layers)
    if not layers:
        raise FeaturesError(f"give --layers (comma-separated); available: {', '.join(names)}.")
    unknown = [layer for layer in layers if layer not in names]
    if unknown:
        raise FeaturesError(
            f"unknown layer(s) {', '.join(map(repr, unknown))} for {config.model.name}; "
            f"available: {', '.join(names)}."
        )
    twice = sorted({layer for layer in layers if layers.count(layer) > 1})
    if twice:
        raise FeaturesError(f"layer(s) {', '.join(twice)} asked for twice.")
    return [
        {
            "name": layer,
            "key": names[layer],
            "description": text[names[layer]],
            "shape": list(shapes[names[layer]]),
            "dim": math.prod(shapes[names[layer]]),
        }
        for layer in layers
    ]


# --- Computing them -------------------------------------------------------------------------


class Prefix(sources.Source):
    """The first n examples of a source (the pipeline never reads past them)."""

    def __init__(self, source: sources.Source, n: int):
        self._source, self._n = source, min(n, len(source))
        self.name, self.split, self.size = source.name, source.split, source.size
        self.num_classes, self.class_names = source.num_classes, source.class_names
        self.stats_dir, self.resize_mode = source.stats_dir, source.resize_mode

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._source[index]

    def example_name(self, index: int) -> str:
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._source.example_name(index)


def kept_batches(
    config: Any, source: sources.Source, skipped: dict[str, int] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(source indices, uint8 images (n, S, S, 3), int64 labels) of the readable examples of
    `source`, one evaluation batch (config.batch_size) at a time, in source order. Unreadable
    examples are left out, and counted into `skipped` by reason when it is given."""
    with input_pipeline.create_eval_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        start = 0
        for batch in it:
            mask = np.asarray(batch["mask"], bool)
            index = np.arange(start, start + len(mask))
            start += len(mask)
            images, labels = np.asarray(batch["image"]), np.asarray(batch["label"], np.int64)
            if skipped is not None:
                skipped.update(it.skipped)
            yield index[mask], images[mask], labels[mask]


def feature_function(
    config: Any, params: Any, layers: Sequence[dict[str, Any]], stats: Any,
    patches: str = "centre",
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
    """uint8 images (n, S, S, 3) -> {layer name: float32 (n, D)} for `resolve_layers`' layers.

    One device, the unsharded network, jitted once: images go through `augment.eval_views`
    (the centre patch, or the ten patches of §4.1 whose features are averaged) and the network
    with `mutable=['intermediates']`. A short batch is padded to config.batch_size (a longer
    one is cut into batches), so only one shape is ever compiled.
    """
    if patches not in PATCHES:
        raise FeaturesError(f"--patches must be one of {PATCHES}, got {patches!r}.")
    model = models.create_model(config.model)
    keys = sorted({layer["key"] for layer in layers})
    device = jax.devices()[0]
    params = jax.device_put(params, device)
    stats = None if stats is None else jax.device_put(stats, device)
    a, size = config.augment, config.image_size

    def network(params, x):
        _, state = model.apply({"params": params}, x, train=False, mutable=["intermediates"])
        found = state["intermediates"]
        return {k: found[k][0].reshape(x.shape[0], -1).astype(jnp.float32) for k in keys}

    @jax.jit
    def compute(params, images, stats):
        if patches == "centre":
            return network(params, augment.eval_views(images, stats, a, size, ten_crop=False))
        views = augment.eval_views(images, stats, a, size, ten_crop=True)
        b, v = views.shape[:2]
        out = network(params, views.reshape(b * v, *views.shape[2:]))
        return {k: jnp.mean(f.reshape(b, v, -1), axis=1) for k, f in out.items()}

    batch = config.batch_size

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        parts = []
        for start in range(0, max(len(images), 1), batch):
            chunk = images[start : start + batch]
            n = len(chunk)
            if n < batch:
                pad = np.zeros((batch - n, *images.shape[1:]), images.dtype)
                chunk = np.concatenate([chunk, pad])
            out = compute(params, jnp.asarray(chunk), stats)
            parts.append({k: np.asarray(v)[:n] for k, v in out.items()})
        return {layer["name"]: np.concatenate([p[layer["key"]] for p in parts]) for layer in layers}

    return run


def _prepared(config: Any, batch_size: int | None) -> Any:
    """The config extraction runs with: its own batch size, no decoding workers for the tiny
    in-memory datasets (as evaluate's command does)."""
    config = config.copy_and_resolve_references()
    if batch_size:
        config.batch_size = int(batch_size)
    if config.dataset in ("digits", "synthetic"):
        config.num_workers = 0
    return config


def _source(config: Any, split: str, max_examples: int) -> sources.Source:
    source = input_pipeline.create_source(config, split)
    if max_examples < 0:
        raise FeaturesError(f"--max_examples must be >= 0 (0: all), got {max_examples}.")
    return Prefix(source, max_examples) if max_examples else source


def _stream(
    config: Any, params: Any, source: sources.Source, layers: list[dict[str, Any]],
    patches: str, progress: bool, skipped: dict[str, int],
) -> Iterator[dict[str, Any]]:  # fmt: skip
    stats = input_pipeline.eval_data_stats(config)  # the training mean (§2), as evaluation
    compute = feature_function(config, params, layers, stats, patches)
    bar = None
    if progress:
        from tqdm import tqdm

        total = math.ceil(len(source) / config.batch_size)
        bar = tqdm(total=total, desc=f"features {source.split}", unit="batch", file=sys.stderr)
    try:
        for index, images, labels in kept_batches(config, source, skipped):
            yield {"features": compute(images), "labels": labels, "index": index}
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def extract(
    config: Any, params: Any, split: str, layers: Sequence[str], *, patches: str = "centre",
    batch_size: int | None = None, max_examples: int = 0, progress: bool = False,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The features of `split`, one batch at a time.

    Args:
      config: the experiment config (model, data, preprocessing).
      params: the network's parameters (`load_params`).
      split: a split of config.dataset (slices allowed: 'train[:80%]').
      layers: names from `available_layers`.
      patches: 'centre' or 'ten' (the mean of the ten patches' features, §4.1).
      batch_size: images per batch (default config.batch_size).
      max_examples: only the first N examples of the split (0: all).
      progress: a progress bar on stderr.

    Returns:
      An iterator of {'features': {layer: float32 (n, D)}, 'labels': int64 (n,), 'index': the
      examples' indices in the split (n,)} for the readable examples of each batch (unreadable
      ones are skipped, as in evaluation). Layers are checked before it is returned.
    """
    config = _prepared(config, batch_size)
    resolved = resolve_layers(config, layers)
    if patches not in PATCHES:
        raise FeaturesError(f"--patches must be one of {PATCHES}, got {patches!r}.")
    source = _source(config, split, max_examples)
    return _stream(config, params, source, resolved, patches, progress, {})


# --- Files ----------------------------------------------------------------------------------

# Every .npy written here has a header of this many bytes, so that the row count can be written
# into it when the file is closed, after the rows (a longer count would not fit a tighter one).
_HEADER_BYTES = 128


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    """A version 1.0 .npy header of exactly `_HEADER_BYTES` bytes."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    text = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    assert len(text) == _HEADER_BYTES - 10, text
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class _NpyWriter:
    """Rows appended to one .npy file as they come; the header gets the count at `close`."""

    def __init__(self, path: str, row_shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.row_shape, self.dtype = path, tuple(row_shape), np.dtype(dtype)
        self.rows = 0
        self._f = open(path, "wb")
        self._f.write(_npy_header((0, *self.row_shape), self.dtype.str))

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        assert rows.shape[1:] == self.row_shape, (rows.shape, self.row_shape)
        self._f.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self._f.seek(0)
        self._f.write(_npy_header((self.rows, *self.row_shape), self.dtype.str))
        self._f.close()


class _ShardWriter:
    """One layer's rows (n, D) float32 as `part-00000.npy`, ... of at most `shard_rows` rows."""

    def __init__(self, root: str, name: str, dim: int, shard_rows: int):
        self.root, self.name, self.dim, self.shard_rows = root, name, dim, shard_rows
        os.makedirs(os.path.join(root, name))
        self.shards: list[dict[str, Any]] = []
        self._open: _NpyWriter | None = None

    def write(self, rows: np.ndarray) -> None:
        while len(rows):
            if self._open is None:
                file = f"{self.name}/part-{len(self.shards):05d}.npy"
                self._open = _NpyWriter(os.path.join(self.root, file), (self.dim,), np.float32)
                self.shards.append({"file": file, "rows": 0})
            room = self.shard_rows - self._open.rows
            self._open.write(rows[:room])
            rows = rows[room:]
            self.shards[-1]["rows"] = self._open.rows
            if self._open.rows == self.shard_rows:
                self._open.close()
                self._open = None

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


def _copy_npy_data(path: str, out: Any) -> None:
    """Copies the rows of a .npy written by `_NpyWriter` (everything after its header)."""
    with open(path, "rb") as f:
        f.seek(_HEADER_BYTES)
        shutil.copyfileobj(f, out, 16 << 20)


def _write_npz(tmp: str, layers: list[dict[str, Any]], rows: int) -> None:
    """features.npz (a key per layer and 'labels', stored like np.savez) from the shards and
    labels.npy, copied by bytes (memory: one copy buffer), which are then removed."""
    with zipfile.ZipFile(os.path.join(tmp, NPZ), "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for layer in layers:
            with z.open(f"{layer['name']}.npy", "w", force_zip64=True) as f:
                f.write(_npy_header((rows, layer["dim"]), "<f4"))
                for shard in layer.pop("shards"):
                    _copy_npy_data(os.path.join(tmp, shard["file"]), f)
            shutil.rmtree(os.path.join(tmp, layer["name"]))
            layer["file"] = NPZ
        with z.open("labels.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((rows,), "<i8"))
            _copy_npy_data(os.path.join(tmp, LABELS), f)
    os.remove(os.path.join(tmp, LABELS))


def _example_line(name: str) -> str:
    """One line of examples.txt: backslashes and line breaks in a name escaped."""
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r") + "\n"


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)  # fmt: skip
    except OSError:
        pass
    u = platform.uname()
    device = jax.devices()[0]
    return {
        "cpu": cpu, "cores": os.cpu_count(), "system": f"{u.system} {u.release} {u.machine}",
        "jax_platform": device.platform, "device_kind": device.device_kind,
    }  # fmt: skip


def _check_out(out: str, overwrite: bool) -> None:
    if os.path.isfile(out):
        raise FeaturesError(f"--out={out} is a file; give a folder.")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FeaturesError(
            f"--out={out} exists and is not empty; pass --overwrite to replace it, or another "
            "--out."
        )


def _move_into_place(tmp: str, out: str) -> None:
    """Renames the finished temporary folder to `out` (an old `out` is replaced)."""
    old = None
    if os.path.isdir(out):
        old = f"{tmp}.old"
        os.rename(out, old)
    os.rename(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def write_features(
    config: Any, params: Any, source_record: dict[str, Any], out: str, *, split: str,
    layers: Sequence[str], patches: str = "centre", batch_size: int | None = None,
    max_examples: int = 0, shard_rows: int = 0, file_format: str = "auto",
    overwrite: bool = False, progress: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Extracts `layers` of `split` into the folder `out` (module docstring) and returns its
    record (what features.json holds). `source_record` is `load_params`' second value.

    Args:
      shard_rows: rows per .npy shard (0: ~256 MiB a shard).
      file_format: 'auto' (one .npz when smaller than 64 MiB, else shards), 'shards', 'npz'.
      overwrite: replace an existing non-empty `out`.
      Others as in `extract`.
    """
    started = time.perf_counter()
    config = _prepared(config, batch_size)
    resolved = resolve_layers(config, layers)
    if patches not in PATCHES:
        raise FeaturesError(f"--patches must be one of {PATCHES}, got {patches!r}.")
    if file_format not in FILE_FORMATS:
        raise FeaturesError(f"--format must be one of {FILE_FORMATS}, got {file_format!r}.")
    if shard_rows < 0:
        raise FeaturesError(f"--shard_rows must be >= 0 (0: ~256 MiB a shard), got {shard_rows}.")
    out = os.path.abspath(out)
    _check_out(out, overwrite)
    source = _source(config, split, max_examples)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        writers = [
            _ShardWriter(tmp, layer["name"], layer["dim"],
                         shard_rows or max(1, SHARD_BYTES // (4 * layer["dim"])))
            for layer in resolved
        ]  # fmt: skip
        labels = _NpyWriter(os.path.join(tmp, LABELS), (), np.int64)
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        with open(os.path.join(tmp, EXAMPLES), "w", encoding="utf-8") as names:
            for batch in _stream(config, params, source, resolved, patches, progress, skipped):
                for layer, writer in zip(resolved, writers):
                    writer.write(batch["features"][layer["name"]])
                labels.write(batch["labels"])
                names.writelines(_example_line(source.example_name(int(i)))
                                 for i in batch["index"])  # fmt: skip
        for writer in writers:
            writer.close()
        labels.close()
        count = labels.rows
        if count == 0:
            raise FeaturesError(f"{split}: no readable example ({skipped}).")
        for layer, writer in zip(resolved, writers):
            layer["dtype"] = "float32"
            layer["shards"] = writer.shards
        total = 4 * count * sum(layer["dim"] for layer in resolved)
        stored = "npz" if file_format == "npz" or (file_format == "auto" and total < NPZ_BELOW) \
            else "shards"  # fmt: skip
        if stored == "npz":
            _write_npz(tmp, resolved, count)
        record = {
            "record_version": RECORD_VERSION,
            "format": stored,
            "source": source_record,
            "model": {
                k: v for k, v in workdir_lib.flat_config(config).items() if k.startswith("model.")
            },  # fmt: skip
            "preprocessing": evaluate.preprocessing(config),
            "dataset": config.dataset,
            "split": split,
            "patches": patches,
            "num_classes": int(source.num_classes),
            "layers": resolved,
            "examples": count,
            "labels": {"file": NPZ if stored == "npz" else LABELS, "dtype": "int64"},
            "examples_file": EXAMPLES,
            "skipped": skipped,
            "max_examples": int(max_examples),
            "batch_size": int(config.batch_size),
            "bytes": total,
            "seconds": time.perf_counter() - started,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": _machine(),
            "versions": {"jax": jax.__version__, "alexnet_jax": workdir_lib.code_version()},
        }
        path = os.path.join(tmp, RECORD)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(path + ".tmp", path)
        _check_out(out, overwrite)  # nobody wrote there meanwhile
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def read_record(out: str) -> dict[str, Any]:
    """The features.json of a features folder, or one FeaturesError."""
    path = os.path.join(out, RECORD)
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise FeaturesError(
            f"{out} has no {RECORD}: not a features folder (python -m alexnet_jax.features "
            "writes one), or its extraction did not finish."
        ) from None
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise FeaturesError(f"{path} cannot be read ({first_line(e)}); extract again.") from None
    if not isinstance(record, dict) or not isinstance(record.get("layers"), list):
        raise FeaturesError(f"{path} is not a features record (no list of layers).")
    return record


def _load_array(path: str, shape: tuple[int, ...], dtype: str, z: Any = None, key: str = ""):
    """An array of a features folder, checked against the record's shape and dtype."""
    where = f"{path}:{key}" if key else path
    try:
        if z is not None:
            array = z[key]
        else:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError:
        raise FeaturesError(f"{where} is missing; extract the features again.") from None
    except Exception as e:  # truncated, not an .npy, a bad zip: whatever numpy met
        raise FeaturesError(
            f"{where} cannot be read ({first_line(e)}): damaged; extract the features again."
        ) from None
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise FeaturesError(
            f"{where} holds {array.dtype} {array.shape}, its record says {dtype} {tuple(shape)}: "
            "damaged or from another extraction; extract the features again."
        )
    return array


def load_features(out: str, layer: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(float32 features (N, D), int64 labels (N,), the record) of one layer of a features
    folder, shards or .npz, every file checked against the record.

    Raises:
      FeaturesError: one line, for a missing or damaged file or an unknown layer.
    """
    record = read_record(out)
    layers = {entry.get("name"): entry for entry in record["layers"]}
    if layer not in layers:
        raise FeaturesError(f"{out} has no layer {layer!r}; it has {', '.join(map(str, layers))}.")
    entry, n = layers[layer], record.get("examples")
    try:
        dim = int(entry["dim"])
        if record["format"] == "npz":
            path = os.path.join(out, NPZ)
            try:
                z = np.load(path, allow_pickle=False)
            except FileNotFoundError:
                raise FeaturesError(f"{path} is missing; extract the features again.") from None
            except Exception as e:
                raise FeaturesError(
                    f"{path} cannot be read ({first_line(e)}): damaged; extract again."
                ) from None
            with z:
                x = np.array(_load_array(path, (n, dim), "float32", z, layer))
                labels = np.array(_load_array(path, (n,), "int64", z, "labels"))
            return x, labels, record
        # Every shard is mapped (its header checked against the record, its size against the
        # file) before anything is allocated: a record claiming more rows than the files hold
        # is refused, not allocated.
        parts = []
        for shard in entry["shards"]:
            name = str(shard["file"])
            if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
                raise FeaturesError(f"{out}/{RECORD} names a shard outside the folder: {name!r}.")
            parts.append(
                _load_array(os.path.join(out, name), (int(shard["rows"]), dim), "float32")
            )
        row = sum(len(part) for part in parts)
        if row != n:
            raise FeaturesError(
                f"{out}: the shards of {layer} hold {row} rows, the record says {n}; extract again."
            )
        x = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        labels = np.array(_load_array(os.path.join(out, LABELS), (n,), "int64"))
    except (KeyError, TypeError) as e:
        raise FeaturesError(f"{out}/{RECORD} is not a features record ({e!r} missing).") from None
    return x, labels, record


# --- Command line -------------------------------------------------------------------------


def run_command(
    config: Any, *, out: str, layers: Sequence[str], split: str = "",
    workdir: str | None = None, step: int | None = None, weights: str | None = None,
    weights_format: str = "", random_init: bool = False, patches: str = "centre",
    batch_size: int = 0, max_examples: int = 0, shard_rows: int = 0, file_format: str = "auto",
    overwrite: bool = False, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The command once its flags are read: prints what was written and returns the record; a
    bad input is SystemExit('error: <one line>'), nothing written."""
    if config is None:
        raise SystemExit("error: --config is required (e.g. --config=configs/default.py).")
    if not out:
        raise SystemExit("error: --out=DIR is required (the folder to write).")
    try:
        models.create_model(config.model)
        augment.check_augment_config(config.augment)
        resolve_layers(config, layers)  # before any parameter is read
        params, record = load_params(
            config, workdir=workdir, step=step, weights=weights, weights_format=weights_format,
            random_init=random_init,
        )  # fmt: skip
        result = write_features(
            config, params, record, out, split=split or config.eval_split, layers=layers,
            patches=patches, batch_size=batch_size, max_examples=max_examples,
            shard_rows=shard_rows, file_format=file_format, overwrite=overwrite,
            progress=progress and config.progress_bar,
        )  # fmt: skip
    except (ValueError, OSError) as e:  # Features/Evaluation/Weights errors, no checkpoint,
        raise SystemExit(f"error: {e}") from None  # the data not prepared, a disk error
    for layer in result["layers"]:
        shape = "x".join(map(str, layer["shape"]))
        print(f"{layer['name']}: {result['examples']} x {layer['dim']} ({shape}), "
              f"{layer['description']}")  # fmt: skip
    skipped = ", ".join(f"{k} {v}" for k, v in result["skipped"].items() if v) or "none"
    patch = "centre patch" if result["patches"] == "centre" else "mean of ten patches"
    print(f"{result['dataset']} {result['split']}, {patch}; skipped: {skipped}; "
          f"{result['seconds']:.1f} s; written to {out}")  # fmt: skip
    return result


def _cli() -> None:
    """The command line; flags are defined here, not at import (as alexnet_jax.evaluate)."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_file = config_flags.DEFINE_config_file("config", None, "Config file.")
    flags.DEFINE_string("workdir", None, "A training run (its latest checkpoint).")
    flags.DEFINE_integer("step", None, "With --workdir: the checkpoint of this step.")
    flags.DEFINE_string("weights", None, "A weights file.")
    flags.DEFINE_string(
        "weights_format", "", f"One of {weights_lib.FORMATS} ('' = from the file's suffix)."
    )
    flags.DEFINE_bool("random_init", False, "The config's own initialisation (config.seed).")
    flags.DEFINE_string("split", "", "Split ('' = the config's eval_split).")
    flags.DEFINE_list("layers", [], "Layers, comma-separated (e.g. fc6,fc7).")
    flags.DEFINE_enum("patches", "centre", list(PATCHES), "centre, or the mean of ten (§4.1).")
    flags.DEFINE_string("out", None, "The folder to write.")
    flags.DEFINE_integer("batch_size", 0, "Batch size (0 = config.batch_size).")
    flags.DEFINE_integer("max_examples", 0, "The first N examples of the split (0 = all).")
    flags.DEFINE_integer("shard_rows", 0, "Rows per shard (0 = ~256 MiB).")
    flags.DEFINE_enum("format", "auto", list(FILE_FORMATS), "auto: .npz below 64 MiB.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --out.")
    flags.DEFINE_bool("progress", True, "A progress bar on stderr.")
    options = ("workdir", "step", "weights", "weights_format", "random_init", "split", "layers",
               "patches", "out", "batch_size", "max_examples", "shard_rows", "overwrite",
               "progress")  # fmt: skip

    def main(argv: list[str]) -> None:
        del argv
        logging.set_verbosity(logging.WARNING)  # Orbax reports every read at INFO
        orbax_quiet.install()  # and what a damaged checkpoint's one-line error says already
        values = {name: flags.FLAGS[name].value for name in options}
        run_command(config_file.value, file_format=flags.FLAGS.format, **values)

    app.run(main)


if __name__ == "__main__":
    _cli()
