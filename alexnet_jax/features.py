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

Layers (`feature_layers`, traced from the network): a layer's name (AlexNet's `conv1`..`conv5`,
`fc6`, `fc7`; the CIFAR nets' `conv1`, `local3`, ...) is its output after the activation,
before any normalization, pooling or dropout that follows; `<layer>_pre` is before the
activation; `fc8` (`fc10`) the logits before the softmax; `pool1`, `lrn1`, `wnorm2`, ... the
outputs of those operations; every value the network sows is accepted by its own name too
(`fc7_out`: after the test-time dropout scaling). Each layer's record says in words what it is.

Files in `--out` (`feature_files`): per layer `<layer>/part-*.npy` shards of float32 rows,
`labels.npy`, `examples.txt` (the source's name of each example) and `features.json`, the
record of what was computed from what, written last; one `features.npz` instead when everything
is under 64 MiB (or `--format=npz`). A failed run leaves nothing, and memory is bounded by a
batch. Unreadable images are skipped and counted, as in evaluation.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import (
    augment,
    evaluate,
    feature_files,
    feature_layers,
    input_pipeline,
    machine,
    models,
    orbax_quiet,
    parallel,
    sources,
)
from alexnet_jax import weights as weights_lib
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.errors import check_choice
from alexnet_jax.feature_files import FILE_FORMATS, FeaturesError
from alexnet_jax.images import SKIP_REASONS

PATCHES = ("centre", "ten")


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
    """uint8 images (n, S, S, 3) -> {layer name: float32 (n, D)} for the layers that
    `feature_layers.resolve_layers` gives.

    One device, the unsharded network, jitted once: images go through `augment.eval_views`
    (the centre patch, or the ten patches of §4.1 whose features are averaged) and the network
    with `mutable=['intermediates']`. A short batch is padded to config.batch_size (a longer
    one is cut into batches), so only one shape is ever compiled.
    """
    check_choice("--patches", patches, PATCHES, error=FeaturesError)
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
      layers: names from `feature_layers.available_layers`.
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
    resolved = feature_layers.resolve_layers(config, layers)
    check_choice("--patches", patches, PATCHES, error=FeaturesError)
    source = _source(config, split, max_examples)
    return _stream(config, params, source, resolved, patches, progress, {})


def _machine() -> dict[str, Any]:
    cpu = machine.cpu_name() or platform.processor()
    u = platform.uname()
    device = jax.devices()[0]
    return {
        "cpu": cpu, "cores": os.cpu_count(), "system": f"{u.system} {u.release} {u.machine}",
        "jax_platform": device.platform, "device_kind": device.device_kind,
    }  # fmt: skip


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
    resolved = feature_layers.resolve_layers(config, layers)
    check_choice("--patches", patches, PATCHES, error=FeaturesError)
    check_choice("--format", file_format, FILE_FORMATS, error=FeaturesError)
    if shard_rows < 0:
        raise FeaturesError(f"--shard_rows must be >= 0 (0: ~256 MiB a shard), got {shard_rows}.")
    out = os.path.abspath(out)
    feature_files.check_out(out, overwrite)
    source = _source(config, split, max_examples)
    with feature_files.FolderWriter(out, resolved, shard_rows) as folder:
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        for batch in _stream(config, params, source, resolved, patches, progress, skipped):
            names = (source.example_name(int(i)) for i in batch["index"])
            folder.write(batch["features"], batch["labels"], names)
        files = folder.finish(file_format)
        if files["examples"] == 0:
            raise FeaturesError(f"{split}: no readable example ({skipped}).")
        record = {
            "record_version": feature_files.RECORD_VERSION,
            "format": files["format"],
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
            "examples": files["examples"],
            "labels": files["labels"],
            "examples_file": files["examples_file"],
            "skipped": skipped,
            "max_examples": int(max_examples),
            "batch_size": int(config.batch_size),
            "bytes": files["bytes"],
            "seconds": time.perf_counter() - started,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": _machine(),
            "versions": {"jax": jax.__version__, "alexnet_jax": workdir_lib.code_version()},
        }
        folder.commit(record, overwrite)
    return record


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
        feature_layers.resolve_layers(config, layers)  # before any parameter is read
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
