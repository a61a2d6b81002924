"""Trained AlexNet weights from elsewhere, as this project's parameters.

Two public sets are what researchers hold and compare against:

* **Caffe's bvlc_alexnet**, usually as the `bvlc_alexnet.npy` that the caffe-tensorflow
  converter writes: a pickled dict `{layer: [weights, biases]}` for conv1..conv5, fc6..fc8.
  The converter has already changed Caffe's layouts. Convolution kernels go from Caffe's
  (out, in, H, W) to (H, W, in, out), and fully connected ones from (out, in) to (in, out).
  fc6's 9216 input rows go from Caffe's C x H x W flatten of pool5 to H x W x C, the order of
  an NHWC flatten. This importer therefore reads every array as it is and does **not**
  reorder fc6 again: a second reorder would scramble it silently (tests/test_weights.py writes
  its file the way the converter does, from a C x H x W reference).
  `configs/caffe_bvlc_alexnet.py` holds the network's own choices as switches: 227 inputs,
  Caffe's LRN (alpha divided by n, k = 1, one window across both groups), inverted dropout,
  and a fixed per-channel mean.
  The only conversions here are these:
  - conv1's input channels are reversed, BGR to RGB, so the network takes RGB images like
    every other config.
  - Each layer's output units are split into the towers: conv2, conv4 and conv5 are Caffe's
    `group: 2` layers, and the first half of Caffe's outputs is group 0 = tower 0. conv3, fc6,
    fc7 and fc8 read both towers' inputs and are split the same way by output.
* **torchvision's alexnet**, a state dict (`.pth`, read with torch, imported only for it; or an
  `.npz` with the same keys, for users without torch). It is the one-tower "one weird trick"
  net of `configs/torchvision_alexnet.py`. The conversions here:
  - Kernels go from (out, in, H, W) to (H, W, in, out), and fully connected weights from
    (out, in) to (in, out).
  - fc6's rows go from torch's C x H x W flatten (`torch.flatten` of NCHW) to H x W x C.

Every array is checked against the shape the configured network needs. A missing layer, a
wrong shape or an unreadable file raises `WeightsError` with one line naming the layer, the
expected shape and the fix.

Both formats are pickles, and a pickle can name any function to be called as it loads. Only
numpy arrays, dtypes and plain containers are loaded (the .npy by `caffe_files.read_caffe_npy`,
a .pth by `torch.load(weights_only=True)`); a file naming anything else is refused before it runs
(docs/untrusted_files.md).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import numpy as np

from alexnet_jax import architecture, caffe_files
from alexnet_jax.errors import check_choice, first_line

FORMATS = ("caffe_npy", "torchvision")
_LAYERS = tuple(layer.name for layer in architecture.ALEXNET_LAYERS)
# torchvision.models.alexnet's module indices: features.{0,3,6,8,10} are conv1..conv5,
# classifier.{1,4,6} are fc6..fc8.
TORCHVISION_KEYS = {
    "conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
    "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6",
}  # fmt: skip


class WeightsError(ValueError):
    """Weights that cannot be imported into the configured network (the message says why)."""


class ShapeMismatchError(WeightsError):
    """A layer of the file whose shape the configured network does not have (`layer`)."""

    def __init__(self, message: str, layer: str):
        super().__init__(message)
        self.layer = layer


def sha256(path: str) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected(model_config: Any, image_size: int) -> dict[str, tuple[tuple[int, ...], int]]:
    """{layer: (the whole layer's kernel shape in H, W, in, out / in, out order, towers)}."""
    m = model_config
    widths = architecture.tower_widths(
        m.towers, m.num_classes, m.one_tower_kernels, m.get("extra_conv", 0)
    )
    pool5 = architecture.spatial_sizes(image_size, m.pool_window, m.conv1_padding)["pool5"]
    out, previous = {}, 3
    for layer in architecture.model_layers(m):
        if layer.removed:  # model.remove_conv: the next layer reads what this one read
            continue
        total = widths[layer.name] * m.towers
        if layer.name == "fc8":
            total = m.num_classes
        if layer.is_conv:
            fan_in = previous // m.towers if layer.sees == "own" else previous
            out[layer.name] = ((layer.kernel, layer.kernel, fan_in, total), m.towers)
        else:
            fan_in = previous * pool5 * pool5 if layer.name == "fc6" else previous
            out[layer.name] = ((fan_in, total), m.towers)
        previous = total
    return out


def _split(name: str, kernel: np.ndarray, bias: np.ndarray, model_config: Any) -> dict:
    """A whole layer (kernel ..., out), bias (out,) as the towers' parameters (leading axis)."""
    m = model_config
    towers = m.towers
    per = architecture.tower_widths(
        towers, m.num_classes, m.one_tower_kernels, m.get("extra_conv", 0)
    )[name]
    total = kernel.shape[-1]
    if name == "fc8" and per * towers != total:  # an odd class count: the last tower is padded
        pad = per * towers - total
        kernel = np.concatenate([kernel, np.zeros((*kernel.shape[:-1], pad), kernel.dtype)], -1)
        bias = np.concatenate([bias, np.zeros((pad,), bias.dtype)])
    k = np.stack([kernel[..., t * per : (t + 1) * per] for t in range(towers)])
    b = np.stack([bias[t * per : (t + 1) * per] for t in range(towers)])
    return {"kernel": k.astype(np.float32), "bias": b.astype(np.float32)}


def _check(name: str, what: str, got: tuple, want: tuple, layout: str, fmt: str) -> None:
    if tuple(got) != tuple(want):
        raise ShapeMismatchError(
            f"{name}: {what} has shape {tuple(got)}, the configured network needs {tuple(want)} "
            f"({layout}); check that the file is {fmt} for this config's model (towers, widths, "
            "num_classes, image_size).",
            name,
        )


_PARTS = ("weights", "biases")


def _numbers(path: str, name: str, what: str, value: Any) -> np.ndarray:
    """`value` as an array of numbers (the file's layers may hold anything a pickle can)."""
    try:
        array = np.asarray(value)
    except ValueError:  # a ragged nest of lists
        array = None
    if array is None or array.dtype.kind not in "iuf":
        raise WeightsError(
            f"{path}: layer {name!r} {what} are a {type(value).__name__}, not an array of "
            "numbers; a bvlc_alexnet.npy holds float arrays."
        )
    return array


def caffe_npy_params(path: str, model_config: Any, image_size: int, exclude=()) -> dict:
    """The parameters of a caffe-tensorflow `bvlc_alexnet.npy` for `model_config`'s network.

    Layers are read by name (conv1..conv5, fc6..fc8); each value is [weights, biases] (or a
    dict with 'weights'/'biases'). Kernels are used as stored, (H, W, in, out), and fc weights
    as (in, out), fc6's rows in H x W x C order, because the converter already did those
    conversions. conv1's input channels are reversed (BGR to RGB). Layers in `exclude` are
    neither read nor checked, and are absent from the result.
    """
    try:
        data = caffe_files.read_caffe_npy(path)
    except caffe_files.CaffeFileError as e:
        raise WeightsError(str(e)) from None
    expected = _expected(model_config, image_size)
    params = {}
    for name in expected:
        if name in exclude:
            continue
        if name not in data:
            raise WeightsError(
                f"{path} has no layer {name!r} (it has {sorted(data)}); a bvlc_alexnet.npy holds "
                f"{list(_LAYERS)}."
            )
        entry = data[name]
        if isinstance(entry, dict):
            entry = [entry.get("weights"), entry.get("biases")]
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise WeightsError(f"{path}: layer {name!r} is not [weights, biases].")
        kernel, bias = (_numbers(path, name, what, a) for what, a in zip(_PARTS, entry))
        shape, _ = expected[name]
        layout = "H, W, in per group, out" if len(shape) == 4 else "in, out"
        _check(name, "weights", kernel.shape, shape, layout, "caffe-tensorflow bvlc_alexnet.npy")
        _check(name, "biases", bias.shape, (shape[-1],), "out", "caffe-tensorflow bvlc_alexnet.npy")
        if name == "conv1":
            kernel = kernel[:, :, ::-1, :]  # Caffe's BGR input channels to RGB
        params[name] = _split(name, kernel, bias, model_config)
    return params


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".npz"):
        try:
            with np.load(path) as z:  # allow_pickle=False: an object array is refused
                return {k: np.asarray(z[k]) for k in z.files}
        except Exception as e:  # zip, zlib, header and size errors, MemoryError for a huge shape
            raise WeightsError(
                f"{path} cannot be read as an .npz of a torchvision state dict: "
                f"{first_line(e)}. Is the file complete?"
            ) from None
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"{path} is a PyTorch file and torch is not installed: pip install torch, or export "
            "the state dict to .npz (numpy.savez(path, **{k: v.numpy() for k, v in sd.items()}))."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle and zip errors for bad files
        # weights_only=True refuses every global outside torch's allowlist before calling it;
        # its message is a paragraph that suggests weights_only=False, which would run it.
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            loads = "tensors and plain containers, by torch.load(weights_only=True)"
            line = caffe_files.refusal(path, refused[1], "a torchvision state dict", loads)
            raise WeightsError(line) from None
        raise WeightsError(
            f"{path} cannot be read as a PyTorch state dict: {first_line(e)}. Is the file complete?"
        ) from None
    if hasattr(state, "state_dict"):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def torchvision_params(path: str, model_config: Any, image_size: int, exclude=()) -> dict:
    """The parameters of torchvision's alexnet state dict (`.pth` or `.npz`) for
    `model_config`'s network (configs/torchvision_alexnet.py); layers in `exclude` are neither
    read nor checked."""
    state = _read_state_dict(path)
    expected = _expected(model_config, image_size)
    pool5 = architecture.spatial_sizes(
        image_size, model_config.pool_window, model_config.conv1_padding
    )
    side = pool5["pool5"]
    params = {}
    for name in expected:
        if name in exclude:
            continue
        if name not in TORCHVISION_KEYS:  # model.extra_conv's conv6
            raise WeightsError(
                f"{path}: torchvision's alexnet has no {name} (model.extra_conv adds it); "
                f"initialise it from the config instead (config.init_from.exclude=('{name}',))."
            )
        key = TORCHVISION_KEYS[name]
        if f"{key}.weight" not in state or f"{key}.bias" not in state:
            raise WeightsError(
                f"{path} has no {key}.weight / {key}.bias ({name}); a torchvision alexnet state "
                f"dict has {[f'{k}.weight' for k in TORCHVISION_KEYS.values()]}."
            )
        weight, bias = state[f"{key}.weight"], state[f"{key}.bias"]
        shape, _ = expected[name]
        if len(shape) == 4:
            torch_shape = (shape[3], shape[2], shape[0], shape[1])
            _check(name, f"{key}.weight", weight.shape, torch_shape, "out, in, H, W", "torchvision")
            kernel = weight.transpose(2, 3, 1, 0)  # (out, in, H, W) -> (H, W, in, out)
        else:
            _check(name, f"{key}.weight", weight.shape, shape[::-1], "out, in", "torchvision")
            kernel = weight.T
            if name == "fc6":  # rows from torch's C x H x W flatten to our H x W x C
                channels = shape[0] // (side * side)
                kernel = (
                    kernel.reshape(channels, side, side, -1).transpose(1, 2, 0, 3).reshape(shape)
                )
        _check(name, f"{key}.bias", bias.shape, (shape[-1],), "out", "torchvision")
        params[name] = _split(name, kernel, bias, model_config)
    return params


# What a source path is, by its form: a folder is a training run, these suffixes weights files.
SUFFIX_FORMATS = {".npy": "caffe_npy", ".pth": "torchvision", ".pt": "torchvision",
                  ".npz": "torchvision"}  # fmt: skip


def infer_format(path: str, given: str = "") -> str:
    """'run' for a folder (a training run's workdir or one of its checkpoints), else the
    weights format of `path`'s suffix (`SUFFIX_FORMATS`); `given` (one of `FORMATS` or 'run')
    wins when set.

    Raises:
      WeightsError: for an unknown `given`, or a file whose suffix says nothing.
    """
    if given:
        if given not in (*FORMATS, "run"):
            raise WeightsError(
                f"format {given!r} is not one of {('run', *FORMATS)} (or '' to infer it from "
                "the path)."
            )
        return given
    if os.path.isdir(path):
        return "run"
    suffix = os.path.splitext(path)[1].lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    raise WeightsError(
        f"{path}: cannot tell the format from the name (a folder is a run; "
        f"{', '.join(f'{k} is {v}' for k, v in SUFFIX_FORMATS.items())}); give it, one of "
        f"{('run', *FORMATS)}."
    )


def load_weights(
    path: str, weights_format: str, model_config: Any, image_size: int, exclude=()
) -> dict:
    """The parameters of the weights file `path` (`FORMATS`) for `model_config`'s network,
    without the layers in `exclude` (those are neither read nor checked).

    Raises:
      WeightsError: for an unknown format, a missing or unreadable file, a missing layer or a
        shape the network does not have.
    """
    check_choice("--weights_format", weights_format, FORMATS, error=WeightsError)
    if not os.path.isfile(path):
        raise WeightsError(f"--weights={path}: no such file.")
    if model_config.name != "alexnet":
        raise WeightsError(
            f"weights import into AlexNet only; the config's model.name is {model_config.name!r}."
        )
    if weights_format == "caffe_npy":
        return caffe_npy_params(path, model_config, image_size, exclude)
    return torchvision_params(path, model_config, image_size, exclude)
