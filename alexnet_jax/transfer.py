"""Training that starts from another network's parameters (`config.init_from`): fine-tuning.

  python -m alexnet_jax.main --config=configs/finetune.py --workdir=/tmp/ft \
      --config.init_from.source=bvlc_alexnet.npy --config.dataset=folder:$HOME/my_images \
      --config.model.num_classes=3

`config.init_from.source` is a training run of this project (its workdir: the latest
checkpoint, or `init_from.step`'s), a caffe-tensorflow `bvlc_alexnet.npy` ('caffe_npy') or a
torchvision state dict `.pth`/`.npz` ('torchvision'); `init_from.format` says which, or '' to
infer it (`weights.infer_format`: a folder is a run). The run starts at step 0 with a fresh
optimizer state; every layer takes the source's parameters bit for bit except those in
`init_from.exclude`, which keep the config's own initialisation (the values a run of the same
seed without `init_from` starts from), e.g. ('fc8',) for a new `model.num_classes`. Freezing
and per-layer rates are `optimizer.layer_lr_multipliers` (Caffe's fine-tuning example: fc8 at
10x, docs/transfer.md).

The source is read once, when the run starts without a checkpoint, and before anything is
written: a missing or unreadable source, or a layer whose shape differs and is not excluded, is
one line and an untouched workdir. What was imported (path, format, step, SHA-256, the layers
taken and excluded) is printed and recorded in the run's config record (config.json's
`__record__['init_from']`, `workdir.read_record`). A resumed run continues from its own
checkpoint and never reads the source again (it may have moved); a resume whose
`config.init_from` differs from the run's record is refused like any other config change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

from alexnet_jax import checkpoint, integrity, parallel, weights
from alexnet_jax import workdir as workdir_lib


class TransferError(ValueError):
    """An `init_from` that cannot be imported as asked (the message says why and what to do)."""


@dataclasses.dataclass
class Imported:
    """The parameters to start from (only the layers taken from the source, as NumPy) and
    where they came from."""

    params: dict[str, dict[str, np.ndarray]]
    record: dict[str, Any]


def check_init_from(config: Any) -> list[str]:
    """The problems of `config.init_from` that need no file read (for `train.check_config`)."""
    c = config.init_from
    problems = []
    if not isinstance(c.source, str):
        problems.append(f"init_from.source must be a path or '', got {c.source!r}.")
        return problems
    if c.format and c.format not in ("run", *weights.FORMATS):
        problems.append(
            f"init_from.format={c.format!r} is not one of {('run', *weights.FORMATS)}, or '' "
            "(inferred from the source: a folder is a run, .npy caffe_npy, .pth/.npz torchvision)."
        )
    exclude = c.exclude
    if isinstance(exclude, str) or not all(isinstance(e, str) for e in exclude):
        problems.append(
            f"init_from.exclude must be a tuple of layer names, e.g. ('fc8',), got {exclude!r}."
        )
    elif not c.source and exclude:
        problems.append(
            f"init_from.exclude={tuple(exclude)} but init_from.source is empty: nothing would be "
            "imported and every layer would start from this config's initialisation; set "
            "--config.init_from.source=<a run's workdir, a bvlc_alexnet.npy or a .pth/.npz>."
        )
    if not isinstance(c.step, int) or c.step < -1:
        problems.append(
            f"init_from.step must be -1 (the latest checkpoint) or a step, got {c.step!r}."
        )
    elif c.step != -1 and c.source and _format(c) not in ("run", None):
        problems.append(
            f"init_from.step={c.step} picks a checkpoint of a run, but init_from.source is a "
            f"{_format(c)} file; leave the step at -1."
        )
    return problems


def _layer_order(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 0, name)


def _format(c: Any) -> str | None:
    try:
        return weights.infer_format(os.path.expanduser(c.source), c.format)
    except weights.WeightsError:
        return None


def _params_sha256(params: Any) -> str:
    """SHA-256 of the parameters' per-array checksums (`integrity.checksums`): one value that
    names exactly these arrays."""
    sums = integrity.checksums(params)
    return hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()


def _read_source(config: Any, exclude: tuple[str, ...]) -> tuple[dict, dict[str, Any]]:
    """(the source's parameters as NumPy, its provenance record)."""
    c = config.init_from
    path = os.path.expanduser(c.source)
    where = f"config.init_from.source={c.source}"
    if not os.path.exists(path):
        raise TransferError(
            f"{where}: no such file or folder; give a run's workdir, a bvlc_alexnet.npy or a "
            "torchvision .pth/.npz (or set it to '' to train from the paper's initialisation)."
        )
    try:
        fmt = weights.infer_format(path, c.format)
    except weights.WeightsError as e:
        raise TransferError(f"config.init_from: {e}") from None
    record: dict[str, Any] = {"source": os.path.abspath(path), "format": fmt}
    if fmt == "run":
        target = path
        if not any(os.path.isdir(os.path.join(path, d)) for d in ("checkpoints", "state")):
            raise TransferError(
                f"{where} is a folder that has no checkpoint (no checkpoints/<step> inside, and "
                "it is not a checkpoints/<step> folder itself); give a run's workdir, one of its "
                "checkpoints/<step> folders, or a weights file."
            )
        if c.step != -1:
            target = os.path.join(path, "checkpoints", str(c.step))
            if not os.path.isdir(target):
                runs = os.path.join(path, "checkpoints")
                have = sorted(
                    (int(p) for p in os.listdir(runs) if p.isdigit()) if os.path.isdir(runs) else []
                )
                raise TransferError(
                    f"{where} has no checkpoint of step {c.step} (it has {have or 'none'}); set "
                    "config.init_from.step to one of them, or -1 for the latest."
                )
        try:
            step, params = checkpoint.restore_params(target)
        except checkpoint.NoReadableCheckpointError as e:
            raise TransferError(f"config.init_from: {e}") from None
        record.update(step=step, params_sha256=_params_sha256(params))
        if os.path.exists(os.path.join(path, "config.json")):
            try:
                written_by = workdir_lib.read_record(path)[1]
                record["written_by"] = workdir_lib.describe_version(written_by)
            except workdir_lib.WorkdirError:
                pass  # the parameters are verified by their checksums; the record is extra
        return params, record
    if config.model.name != "alexnet":
        raise TransferError(
            f"{where} is a {fmt} weights file, which holds AlexNet's layers; this config's "
            f"model.name is {config.model.name!r}: start from a run of that network instead."
        )
    try:
        params = weights.load_weights(path, fmt, config.model, config.image_size, exclude)
    except weights.ShapeMismatchError as e:
        raise TransferError(
            f"config.init_from: {e} To train {e.layer} from this config's initialisation "
            f"instead, add it to config.init_from.exclude (e.g. --config.init_from.exclude="
            f"\"('{e.layer}',)\")."
        ) from None
    except weights.WeightsError as e:
        raise TransferError(f"config.init_from: {e}") from None
    record.update(sha256=weights.sha256(path), params_sha256=_params_sha256(params))
    return params, record


def load(config: Any) -> Imported:
    """Reads `config.init_from.source` and checks it against the configured network.

    Every layer of the network not in `init_from.exclude` must be in the source with the same
    leaves and shapes; a layer of the source the network lacks must be excluded too (a silent
    drop could hide a mismatched architecture).

    Raises:
      TransferError: one line naming the problem (the layer and both shapes for a mismatch)
        and the fix.
    """
    exclude = tuple(config.init_from.exclude)
    params, record = _read_source(config, exclude)
    shapes = jax.eval_shape(
        lambda: parallel.init_params(
            config.model, (config.image_size,) * 2 + (3,), jax.random.key(0)
        )
    )
    where = f"config.init_from.source={config.init_from.source}"
    ours = set(shapes)
    unknown = [e for e in exclude if e not in ours and e not in params]
    if unknown:
        raise TransferError(
            f"config.init_from.exclude names {unknown}, layers of neither this network "
            f"({sorted(ours, key=_layer_order)}) nor the source."
        )
    theirs = set(params) - set(exclude)
    missing = sorted(ours - theirs - set(exclude), key=_layer_order)
    extra = sorted(theirs - ours, key=_layer_order)
    fix = (
        "add those layers to config.init_from.exclude to keep this config's initialisation for "
        "them, or use a source of this network"
    )
    if missing:
        raise TransferError(
            f"{where} has no layer {', '.join(missing)} of this network (it has "
            f"{sorted(params, key=_layer_order)}); {fix}."
        )
    if extra:
        raise TransferError(
            f"{where} has layers this network lacks ({', '.join(extra)}); {fix} "
            "(a layer of the source in exclude is not imported)."
        )
    kept = {}
    for layer in sorted(ours - set(exclude), key=_layer_order):
        want, got = shapes[layer], params[layer]
        if set(want) != set(got):
            raise TransferError(
                f"{where}: layer {layer} has parameters {sorted(got)}, this network's has "
                f"{sorted(want)}; {fix}."
            )
        for leaf in sorted(want, key=lambda name: name != "kernel"):  # the kernel first
            spec = want[leaf]
            value = np.asarray(got[leaf])
            if value.shape != spec.shape:
                raise TransferError(
                    f"{where}: {layer}/{leaf} has shape {value.shape} in the source and "
                    f"{tuple(spec.shape)} in this network; add '{layer}' to "
                    f"config.init_from.exclude (e.g. --config.init_from.exclude=\"('{layer}',)\") "
                    "to train it from this config's initialisation, or fix the model config "
                    "(num_classes, towers, image_size) to match the source."
                )
            if value.dtype != spec.dtype:
                if not np.can_cast(value.dtype, spec.dtype, "same_kind"):
                    raise TransferError(
                        f"{where}: {layer}/{leaf} is {value.dtype}, not a floating-point array."
                    )
                cast = f"{layer}/{leaf}: {value.dtype} -> {spec.dtype}"
                record.setdefault("cast", []).append(cast)
        kept[layer] = {leaf: np.asarray(got[leaf], shapes[layer][leaf].dtype) for leaf in want}
    record["imported"] = sorted(kept, key=_layer_order)
    record["excluded"] = sorted(exclude, key=_layer_order)
    return Imported(kept, record)


def merge(initial: Any, imported: Imported) -> Any:
    """`initial` (the config's initialisation) with the imported layers replaced, bit for bit."""
    out = dict(initial)
    for layer, leaves in imported.params.items():
        out[layer] = {leaf: jax.numpy.asarray(value) for leaf, value in leaves.items()}
    return out
