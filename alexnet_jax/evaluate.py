"""Evaluate trained networks: this project's runs or imported weights, alone or as an ensemble.

  python -m alexnet_jax.evaluate --config=configs/default.py --workdir=/tmp/alexnet_jax_default
  python -m alexnet_jax.evaluate --config=configs/caffe_bvlc_alexnet.py \
      --weights=bvlc_alexnet.npy --weights_format=caffe_npy \
      --config.data_dir=$HOME/tensorflow_datasets
  python -m alexnet_jax.evaluate --config=configs/default.py --workdir=RUN_A --workdir=RUN_B

Every member is evaluated on the config's `eval_split` (or `--split`), with the same pipeline
training evaluates with (§2: the shorter side resized, the centre square; the mean of
`config.augment`). Each member has a centre patch and the average of the ten patches' softmaxes
(§4.1). With several members, the ensemble averages their softmaxes per patch. The members'
predictions are computed in one pass over the data. The command prints a table and writes
`results.json` and `results.md` to `--out`: top-1/top-5 error for 1 and 10 patches, the image
count, the skipped files, each member's source (the workdir and checkpoint step, or the weights
file and its SHA-256), and the published rows to compare with (`alexnet_jax.published`).
`--per_class` adds each class's centre-patch top-1 error. `--save_probs` writes every member's
softmaxes (`probs.npz`). Nothing is written until every member has loaded and the pass has
finished. A bad input is one `error:` line and exit status 1.

A workdir is evaluated with its latest checkpoint. Its recorded model (config.json) must
agree with `--config`'s `config.model`, since the parameters only fit that network.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from alexnet_jax import (
    augment,
    checkpoint,
    input_pipeline,
    metrics,
    models,
    orbax_quiet,
    parallel,
    published,
    sources,
    weights,
)
from alexnet_jax import workdir as workdir_lib


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked (the message says why and what to do)."""


@dataclasses.dataclass
class Member:
    """One network to evaluate: its parameters and where they came from."""

    name: str
    source: dict[str, Any]
    params: Any


def _flat_model(config: Any) -> dict[str, Any]:
    return {k: v for k, v in workdir_lib.flat_config(config).items() if k.startswith("model.")}


# Fields of config.model that only change speed (those a run may resume with, and the
# arithmetic's precision): a run may be evaluated with other values.
_SPEED_ONLY = tuple(f for f in workdir_lib.MAY_CHANGE_ON_RESUME if f.startswith("model.")) + (
    "model.compute_dtype",
)


def _check_model(config: Any, run: str) -> None:
    """Refuses a workdir whose recorded model is not `config.model`."""
    path = os.path.join(run, "config.json")
    if not os.path.exists(path):
        raise EvaluationError(f"--workdir={run} has no config.json: is it a training run?")
    recorded = workdir_lib.recorded_config(run)
    ours = _flat_model(config)
    # Only this code's model fields count (a recorded field it no longer has is no other
    # network), listed in the config's order.
    found = workdir_lib.config_differences(
        {k: recorded[k] for k in ours if k in recorded}, ours, ignore=_SPEED_ONLY
    )
    diff = {k: found[k] for k in ours if k in found}
    if recorded.get("image_size", config.image_size) != config.image_size:
        diff["image_size"] = (recorded["image_size"], config.image_size)
    if diff:
        listed = "; ".join(f"{k}: {a!r} in the run, {b!r} here" for k, (a, b) in diff.items())
        raise EvaluationError(
            f"--workdir={run} was trained with another network ({listed}); pass the run's own "
            "config file (or --config.<field> values matching its config.json)."
        )


def run_params(config: Any, run: str, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(params as NumPy, source record) of a training run's latest checkpoint (or `step`'s),
    after checking that the run's recorded model is `config.model`. The record names the
    workdir and step and, for a fine-tuned run, what it was initialised from.

    Raises:
      EvaluationError (another network), checkpoint.NoReadableCheckpointError.
    """
    _check_model(config, run)
    path = run if step is None else os.path.join(run, "checkpoints", str(step))
    found, params = checkpoint.restore_params(path)
    source = {"workdir": os.path.abspath(run), "checkpoint_step": found}
    init_from = workdir_lib.init_from_record(run)
    if init_from is not None:  # a fine-tuned run: what it started from
        source["init_from"] = init_from
    return params, source


def weights_params(config: Any, path: str, fmt: str) -> tuple[Any, dict[str, Any]]:
    """(params, source record: path, format, SHA-256) of a weights file for `config.model`."""
    params = weights.load_weights(path, fmt, config.model, config.image_size)
    return params, {"weights": os.path.abspath(path), "format": fmt, "sha256": weights.sha256(path)}


def load_members(config: Any, runs: list[str], files: list[str], fmt: str | None) -> list[Member]:
    """Every member's parameters, or one EvaluationError / WeightsError for the first bad one."""
    if not runs and not files:
        raise EvaluationError("nothing to evaluate: give --workdir=RUN or --weights=FILE.")
    if files and fmt is None:
        raise EvaluationError(
            f"--weights needs --weights_format, one of {weights.FORMATS} (caffe_npy: the "
            "caffe-tensorflow bvlc_alexnet.npy; torchvision: a state dict .pth or .npz)."
        )
    members = []
    for run in runs:
        try:
            params, source = run_params(config, run)
        except checkpoint.NoReadableCheckpointError as e:
            raise EvaluationError(str(e)) from None
        name = f"{os.path.basename(os.path.normpath(run))}@{source['checkpoint_step']}"
        members.append(Member(name, source, params))
    for path in files:
        params, source = weights_params(config, path, fmt)
        members.append(Member(os.path.basename(path), source, params))
    names = [m.name for m in members]
    for i, m in enumerate(members):  # distinct names for the table
        if names.count(m.name) > 1:
            m.name = f"{m.name}#{i}"
    return members


def _probabilities(config: Any, mesh: jax.sharding.Mesh):
    """The jitted `(params, images_u8, stats) -> (centre softmax, ten-patch mean softmax)`."""
    apply = parallel.sharded_apply(config.model, mesh, train=False)
    no_rng = jax.random.key(0)

    def probs(params, images, stats):
        x = augment.eval_views(images, stats, config.augment, config.image_size, ten_crop=False)
        centre = jax.nn.softmax(apply(params, x, no_rng))
        views = augment.eval_views(images, stats, config.augment, config.image_size, ten_crop=True)
        b, v = views.shape[:2]
        ten = jax.nn.softmax(apply(params, views.reshape(b * v, *views.shape[2:]), no_rng))
        return centre, jnp.mean(ten.reshape(b, v, -1), axis=1)

    return jax.jit(probs)


def _topk(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(metrics.topk_correct(jnp.asarray(probs), jnp.asarray(labels), k))


def evaluate_members(
    config: Any, members: list[Member], split: str, *, per_class: bool = False,
    save_probs: bool = False, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """One pass over `split`: each member's and the ensemble's 1- and 10-patch errors."""
    config = config.copy_and_resolve_references()
    config.mesh.data, config.mesh.tower = 1, 1  # one device holds every tower: any machine
    mesh = parallel.make_mesh(config.mesh, config.model, jax.devices()[:1])
    source = input_pipeline.create_source(config, split)
    stats = input_pipeline.eval_data_stats(config)  # the training set's mean (§2) or a file's
    names = [m.name for m in members] + (["ensemble"] if len(members) > 1 else [])
    correct = {n: {f"{p}_top{k}": 0 for p in ("centre", "ten") for k in (1, 5)} for n in names}
    classes = config.model.num_classes
    class_total = np.zeros(classes, np.int64)
    class_correct = {n: np.zeros(classes, np.int64) for n in names}
    kept = {n: {"centre": [], "ten": []} for n in names} if save_probs else None
    labels_seen = []
    count = 0
    batches_total = math.ceil(len(source) / config.batch_size)
    started = time.perf_counter()
    with jax.set_mesh(mesh):
        if stats is not None:
            stats = jax.device_put(stats, NamedSharding(mesh, P()))
        placed = [
            parallel.shard(m.params, mesh, parallel.param_spec(config.model)) for m in members
        ]
        probs_fn = _probabilities(config, mesh)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=batches_total, desc=f"evaluating {split}", unit="batch", file=sys.stderr
            )
        with input_pipeline.create_eval_iterator(config, source) as batches:
            for batch in batches:
                mask = np.asarray(batch["mask"], bool)
                labels = np.asarray(batch["label"])[mask]
                images = jnp.asarray(batch["image"])
                outs = []
                for params in placed:
                    centre, ten = probs_fn(params, images, stats)
                    outs.append((np.asarray(centre)[mask], np.asarray(ten)[mask]))
                if len(members) > 1:
                    outs.append(tuple(np.mean([o[i] for o in outs], axis=0) for i in (0, 1)))
                for name, (centre, ten) in zip(names, outs):
                    for patch, p in (("centre", centre), ("ten", ten)):
                        for k in (1, 5):
                            correct[name][f"{patch}_top{k}"] += int(_topk(p, labels, k).sum())
                        if kept is not None:
                            kept[name][patch].append(p.astype(np.float32))
                    if per_class:
                        hit = _topk(centre, labels, 1).astype(bool)
                        np.add.at(class_correct[name], labels[hit], 1)
                np.add.at(class_total, labels, 1)
                labels_seen.append(labels)
                count += int(mask.sum())
                if bar is not None:
                    bar.update(1)
            skipped = dict(getattr(batches, "skipped", {}))
        if bar is not None:
            bar.close()
    if count == 0:
        raise EvaluationError(f"{split}: no readable example was evaluated ({skipped}).")
    result = {
        "split": split,
        "dataset": config.dataset,
        "examples": count,
        "skipped": skipped,
        "seconds": time.perf_counter() - started,
        "members": [{"name": m.name, **m.source} for m in members],
        "preprocessing": preprocessing(config),
        "errors": {
            n: {
                f"{p}_top{k}_error": 1.0 - c[f"{p}_top{k}"] / count
                for p in ("centre", "ten")
                for k in (1, 5)
            }
            for n, c in correct.items()
        },  # fmt: skip
    }
    if per_class:
        with np.errstate(invalid="ignore", divide="ignore"):
            result["per_class_top1_error"] = {
                n: [None if t == 0 else 1.0 - c / t for c, t in zip(class_correct[n], class_total)]
                for n in names
            }
    if kept is not None:
        result["_probs"] = {
            "labels": np.concatenate(labels_seen),
            **{
                f"{n}/{p}": np.concatenate(v[p]) for n, v in kept.items() for p in ("centre", "ten")
            },
        }
    return result


def preprocessing(config: Any) -> dict[str, Any]:
    """What was done to the images before the network, for the results' provenance."""
    a = config.augment
    out = {
        "resize_size": int(config.resize_size),
        "resize_mode": config.resize_mode,
        "image_size": int(config.image_size),
        "mean": a.mean,
        "std_rgb": list(a.std_rgb),
    }
    if a.mean == "fixed":
        out["mean_rgb"] = list(a.mean_rgb)
    elif a.mean in augment.MEAN_IMAGE_MODES and a.mean_file:
        path = os.path.expanduser(a.mean_file)
        out.update(mean_file=path, mean_file_layout=a.mean_file_layout,
                   mean_file_sha256=weights.sha256(path))  # fmt: skip
    elif a.mean in augment.MEAN_IMAGE_MODES:
        out["mean_from"] = f"{config.dataset} {config.train_split}"
    return out


def _describe_preprocessing(p: dict[str, Any]) -> str:
    resize = "warped to" if p["resize_mode"] == "warp" else "shorter side to"
    mean = {
        "fixed": f"minus RGB {tuple(p.get('mean_rgb', ()))}",
        "none": "no mean subtracted",
    }.get(p["mean"])
    if mean is None:
        where = (f"`{p['mean_file']}` (sha256 {p['mean_file_sha256']})" if "mean_file" in p
                 else p["mean_from"])  # fmt: skip
        mean = f"minus the {'mean image' if p['mean'] == 'image' else 'channel means'} of {where}"
    std = "" if p["std_rgb"] == [1.0, 1.0, 1.0] else f", divided by {tuple(p['std_rgb'])}"
    return f"Images {resize} {p['resize_size']}, {p['image_size']} patches, {mean}{std}."


def markdown(result: dict[str, Any], config: Any, formats: set[str]) -> str:
    """The members' rows beside the published ones (the paper, the 2012 code, model cards)."""
    rows = []
    for name, e in result["errors"].items():
        for patch, what in (("centre", "centre patch"), ("ten", "10 patches")):
            rows.append(
                ["measured", f"{result['dataset']} {result['split']} ({result['examples']:,})",
                 f"{name}, {what}", f"{100 * e[f'{patch}_top1_error']:.2f}",
                 f"{100 * e[f'{patch}_top5_error']:.2f}"]
            )  # fmt: skip
    for t, s, m, e1, e5 in published.PAPER_ROWS:
        rows.append([t, s, m, f"{e1:.1f}", f"{e5:.1f}"])
    for t, s, m, e1, e5 in published.CODE_ROWS:
        rows.append([t, s, m, f"{e1:.2f}", f"{e5:.2f}"])
    for fmt in sorted(formats):
        what, e1, e5 = published.MODEL_CARDS[fmt]
        rows.append(["model card", "ILSVRC-2012 val", what, f"{e1:.2f}", f"{e5:.2f}"])
    header = ["source", "set", "model", "top-1 err %", "top-5 err %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    members = "\n".join(
        f"- {m['name']}: "
        + (f"`{m['weights']}` ({m['format']}, sha256 {m['sha256']})" if "weights" in m
           else f"`{m['workdir']}`, checkpoint step {m['checkpoint_step']}"
           + (f", initialised from `{m['init_from']['source']}` ({m['init_from']['format']})"
              if "init_from" in m else ""))
        for m in result["members"]
    )  # fmt: skip
    skipped = ", ".join(f"{k} {v}" for k, v in result["skipped"].items() if v) or "none"
    return (
        f"# Evaluation of {len(result['members'])} network(s) on {result['dataset']} "
        f"{result['split']}\n\n{result['examples']:,} images evaluated; skipped files: {skipped}; "
        f"config model {config.model.name}, image_size {config.image_size}; "
        f"{time.strftime('%Y-%m-%d')}, {jax.devices()[0].platform}, JAX {jax.__version__}.\n\n"
        f"Members:\n{members}\n\n{_describe_preprocessing(result['preprocessing'])}\n\n"
        + "\n".join(lines)
        + "\n\n"
        "Rows other than 'measured' are published figures (alexnet_jax/published.py), not "
        "measured here.\n"
    )


def _write(out: str, result: dict[str, Any], text: str) -> None:
    os.makedirs(out, exist_ok=True)
    probs = result.pop("_probs", None)
    for name, data in (("results.json", json.dumps(result, indent=2)), ("results.md", text)):
        tmp = os.path.join(out, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(data)
        os.replace(tmp, os.path.join(out, name))
    if probs is not None:
        tmp = os.path.join(out, ".probs.tmp.npz")
        np.savez(tmp, **probs)
        os.replace(tmp, os.path.join(out, "probs.npz"))


def _cli() -> None:
    """The command line; its flags are defined here, not at import, so that importing this
    module next to another absl program (alexnet_jax.summary, .main) defines no flag twice."""
    config_file = config_flags.DEFINE_config_file(
        "config", None, "Config file (e.g. configs/alexnet.py)."
    )
    workdirs = flags.DEFINE_multi_string("workdir", [], "A training run to evaluate (repeatable).")
    weights_files = flags.DEFINE_multi_string(
        "weights", [], "A weights file to evaluate (repeatable)."
    )
    weights_format = flags.DEFINE_enum(
        "weights_format", None, list(weights.FORMATS), "Format of every --weights file."
    )
    split_flag = flags.DEFINE_string(
        "split", "", "Split to evaluate ('' = the config's eval_split)."
    )
    out_flag = flags.DEFINE_string(
        "out", "", "Results folder ('' = <first workdir>/evaluation, else ./evaluation)."
    )
    per_class = flags.DEFINE_bool("per_class", False, "Also report each class's top-1 error.")
    save_probs = flags.DEFINE_bool("save_probs", False, "Also write every member's softmaxes.")

    def main(argv: list[str]) -> None:
        del argv
        logging.set_verbosity(logging.WARNING)  # Orbax reports every read at INFO
        orbax_quiet.install()  # and what a damaged checkpoint's one-line error says already
        config = config_file.value
        if config is None:
            raise SystemExit("error: --config is required (e.g. --config=configs/default.py).")
        try:
            models.create_model(config.model)
            augment.check_augment_config(config.augment)
            members = load_members(
                config, workdirs.value, weights_files.value, weights_format.value
            )
            split = split_flag.value or config.eval_split
            if config.dataset in ("digits", "synthetic"):
                config.num_workers = 0  # tiny in-memory images: decoding here is fastest
            result = evaluate_members(
                config, members, split, per_class=per_class.value, save_probs=save_probs.value,
                progress=config.progress_bar,
            )  # fmt: skip
        except (ValueError, sources.DatasetNotPreparedError) as e:  # WeightsError, EvaluationError
            raise SystemExit(f"error: {e}") from None
        out = out_flag.value or (
            os.path.join(workdirs.value[0], "evaluation") if workdirs.value else "evaluation"
        )
        formats = {m.source["format"] for m in members if "format" in m.source}
        text = markdown(result, config, formats)
        _write(out, result, text)
        print(text)
        print(f"written to {out}")

    app.run(main)


if __name__ == "__main__":
    _cli()
