"""What a config may hold: every check of `config.model`, the image size and the splits' roles.

A config is checked once, before anything is compiled: `train.check_config` gathers the
problems of every section (`check_model`, `check_image_size` and `split_problems` here; the
mesh, optimizer, augmentation and init_from checks of the modules that own those sections,
which share `errors.check_choice`). `models.create_model` runs `check_model` before it builds a
network, and the modules it builds do not check their fields again: `architecture`'s size rules
and the Flax modules assume a config this module accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from alexnet_jax import splits
from alexnet_jax.architecture import (
    ALEXNET_LAYERS,
    EXTRA_CONV_SEES,
    MIDDLE_CONV_LAYERS,
    NORMALIZED_LAYERS,
    ONE_TOWER_KERNELS,
    model_layers,
    spatial_sizes,
)
from alexnet_jax.cifar_nets import CIFAR_NETS
from alexnet_jax.errors import check_choice

MODEL_NAMES = ("alexnet", *CIFAR_NETS)
INITS = ("paper", "caffe", "lecun")
CIFAR_INITS = ("paper", "lecun")  # the layer files' initW, or LeCun-normal: no Caffe variant
COMPUTE_DTYPES = ("float32", "bfloat16")
# Response normalizations of cuda-convnet: 'cross_map' (its cmrnorm, the paper's LRN of §3.3,
# across channels) and 'within_map' (its rnorm: each map over a size x size spatial window).
LRN_KINDS = ("cross_map", "within_map")
# How lrn_alpha and within_map_alpha are read: 'per_term' multiplies the plain sum of squares (the
# paper's §3.3 formula); 'divided_by_n' is cuda-convnet's (and Caffe's, PyTorch's) `scale`, which
# is divided by the number of terms in the window first: size across maps, size^2 within a map.
ALPHA_CONVENTIONS = ("per_term", "divided_by_n")
DROPOUT_SCALINGS = ("test_time", "inverted")
DROPOUT_PLACES = ("outputs", "inputs")
KERNELS = ("auto", "cpu", "xla")
POOL_WINDOWS = (3, 2)

# AlexNet's fields that the CIFAR nets do not have, with the value that means "not used": any
# other value is refused rather than silently ignored.
ALEXNET_ONLY = {
    "lrn_before_relu": (),
    "within_map_after": (),
    "within_map_size": 5,
    "within_map_alpha": 4e-5,
    "within_map_beta": 0.75,
    "within_map_k": 1.0,
    "init_std": (),
    "dropout_scaling": "test_time",
    "dropout_on": "outputs",
    "conv1_padding": -1,
    "lrn_across_towers": False,
    "one_tower_kernels": "half",
    "pool_window": 3,
    "grouped_conv": False,
    "kernels": "auto",
    "compute_dtype": "float32",
    "remove_conv": (),
    "extra_conv": 0,
    "extra_conv_sees": "own",
}


def check_model(model_config: Any) -> None:
    """Raises a ValueError naming the first problem of `config.model` (configs/alexnet.py lists
    every field); `models.create_model` builds only what passes."""
    m = model_config
    _check_activation(m.activation)
    check_choice("model.init", m.init, INITS)
    check_choice(
        "model.lrn_kind",
        m.lrn_kind,
        LRN_KINDS,
        ": 'cross_map' is the paper's LRN (§3.3), 'within_map' cuda-convnet's rnorm (spatial, "
        "each map alone).",
    )
    check_choice(
        "model.lrn_alpha_convention",
        m.lrn_alpha_convention,
        ALPHA_CONVENTIONS,
        ": 'per_term' is the paper's alpha (§3.3), 'divided_by_n' cuda-convnet's / Caffe's / "
        "PyTorch's, divided by the window's size first.",
    )
    if m.lrn:
        _check_lrn_size(m.lrn_size, m.lrn_kind)
    if m.name == "alexnet":
        _check_alexnet(m)
    elif m.name in CIFAR_NETS:
        _check_cifar(m)
    else:
        check_choice("model.name", m.name, MODEL_NAMES)


def _check_lrn_size(size: Any, kind: str) -> None:
    """The cross-map window i-n/2..i+n/2 (§3.3) is n channels wide only for odd n; the
    within-map window (cuda-convnet's rnorm) may be even (one extra pixel above and left)."""
    whole = isinstance(size, int) and not isinstance(size, bool) and size >= 1
    if kind == "cross_map" and not (whole and size % 2 == 1):
        hint = f"{size + 1}" if whole else "5 (the paper's)"
        raise ValueError(
            f"model.lrn_size={size!r}: the cross-map window i-n/2..i+n/2 of §3.3 is n channels "
            f"wide only for an odd n; use an odd size such as {hint}, or model.lrn=False."
        )
    if not whole:
        raise ValueError(f"model.lrn_size={size!r}: the window needs a positive integer size.")


def _check_activation(name: str) -> None:
    fn = getattr(jax.nn, name, None)
    if not callable(fn) or name.startswith("_"):
        raise ValueError(
            f"model.activation={name!r} is not a jax.nn activation; use 'relu' (the paper), "
            "'tanh' (Figure 1) or another jax.nn function name such as 'gelu'."
        )


def _check_cifar(m: Any) -> None:
    """The CIFAR nets: one tower, no dropout, none of AlexNet's switches."""
    check_choice(
        "model.init", m.init, CIFAR_INITS, ": the CIFAR nets' layer files have no Caffe variant."
    )
    for field, unused in ALEXNET_ONLY.items():
        if (tuple(m[field]) if isinstance(m[field], list) else m[field]) != unused:
            raise ValueError(
                f"model.{field}={m[field]!r} is an AlexNet switch; the {m.name!r} net (a "
                f"cuda-convnet layer file) does not have it. Set model.{field}={unused!r}."
            )
    if m.towers != 1 or m.dropout_rate:
        raise ValueError(
            f"model.name={m.name!r} is a one-tower net without dropout (cuda-convnet's layer "
            f"file); set model.towers=1 and model.dropout_rate=0.0 (got {m.towers}, "
            f"{m.dropout_rate})."
        )


def _check_alexnet(m: Any) -> None:
    check_choice(
        "model.kernels",
        m.kernels,
        KERNELS,
        ": 'auto' chooses by backend, 'cpu' the CPU-tuned ops, 'xla' XLA's own convolutions "
        "and pooling.",
    )
    _check_towers(m.towers, m.one_tower_kernels)
    if m.towers != 1 and m.one_tower_kernels != "half":
        raise ValueError(
            f"model.one_tower_kernels={m.one_tower_kernels!r} chooses the widths of the "
            f"one-tower net; with model.towers={m.towers} it would be ignored. Set "
            "model.towers=1 for the ungrouped net, or leave one_tower_kernels='half'."
        )
    _check_layer_names("lrn_before_relu", m.lrn_before_relu, NORMALIZED_LAYERS)
    _check_layer_names("within_map_after", m.within_map_after, NORMALIZED_LAYERS)
    _check_architecture(m)
    if m.extra_conv % m.towers:
        raise ValueError(
            f"model.extra_conv={m.extra_conv} kernels cannot be split over model.towers="
            f"{m.towers}; use a multiple of {m.towers}."
        )
    if m.extra_conv_sees == "both" and m.towers == 1:
        raise ValueError(
            "model.extra_conv_sees='both' reads every tower's maps, but model.towers=1: one "
            "tower's maps are all of them, so 'both' would change nothing; leave 'own'."
        )
    _check_init_std(m.init_std, [layer.name for layer in model_layers(m) if not layer.removed])
    check_choice(
        "model.dropout_scaling",
        m.dropout_scaling,
        DROPOUT_SCALINGS,
        ": 'test_time' is the paper's (§4.2), 'inverted' the usual modern form.",
    )
    size = m.within_map_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"model.within_map_size must be a positive integer, got {m.within_map_size!r}."
        )
    check_choice(
        "model.dropout_on",
        m.dropout_on,
        DROPOUT_PLACES,
        ": 'outputs' of fc6 and fc7 (§4.2) or their 'inputs' (torchvision).",
    )
    if m.dropout_on == "inputs" and m.towers != 1:
        raise ValueError(
            f"model.dropout_on='inputs' (torchvision's placement) needs model.towers=1, got "
            f"{m.towers}; the two-tower net drops the outputs of fc6 and fc7 (§4.2)."
        )
    _check_conv1_padding(m.conv1_padding)
    if not isinstance(m.lrn_across_towers, bool):
        raise ValueError(
            f"model.lrn_across_towers must be True or False, got {m.lrn_across_towers!r}."
        )
    _check_pool_window(m.pool_window)
    check_choice(
        "model.compute_dtype",
        m.compute_dtype,
        COMPUTE_DTYPES,
        "; 'float32' is the paper's arithmetic, 'bfloat16' multiplies in bfloat16 with float32 "
        "sums.",
    )


def _check_towers(towers: int, one_tower_kernels: str) -> None:
    """A tower count whose towers split every layer's kernels evenly (`tower_widths`)."""
    if towers < 1:
        raise ValueError(f"model.towers must be >= 1, got {towers}.")
    check_choice("model.one_tower_kernels", one_tower_kernels, ONE_TOWER_KERNELS)
    for layer in ALEXNET_LAYERS:
        if towers > 1 and layer.features % towers:
            raise ValueError(
                f"model.towers={towers} does not divide the {layer.features} kernels of "
                f"{layer.name}; use a number of towers that divides 96, 256, 384 and 4096 "
                "(1, 2, 4, 8, 16, 32)."
            )


def _check_layer_names(field: str, names: Any, allowed: Sequence[str]) -> None:
    """Raises unless `names` is a tuple/list of distinct names from `allowed`."""
    if isinstance(names, str) or not isinstance(names, (tuple, list)):
        raise ValueError(
            f"model.{field} must be a tuple of layer names from {tuple(allowed)}, got "
            f"{names!r}; e.g. ('conv1',)."
        )
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(
            f"model.{field} names {bad}, not among {tuple(allowed)}: the layers the paper "
            "normalizes (§3.3)."
            if allowed == NORMALIZED_LAYERS
            else f"model.{field} names {bad}, not layers of AlexNet {tuple(allowed)}."
        )


def _check_architecture(m: Any) -> None:
    """model.remove_conv and model.extra_conv(_sees), and the switches that name a layer
    they remove."""
    remove = m.remove_conv
    if isinstance(remove, str) or not isinstance(remove, (tuple, list)):
        raise ValueError(
            f"model.remove_conv must be a tuple of layers among {MIDDLE_CONV_LAYERS}, got "
            f"{remove!r}; e.g. ('conv3',)."
        )
    for name in remove:
        if name in MIDDLE_CONV_LAYERS:
            continue
        if name in ("conv1", "fc6", "fc7", "fc8", "conv6"):
            raise ValueError(
                f"model.remove_conv names {name!r}, which is not a middle conv layer: §7 removes "
                f"one of {MIDDLE_CONV_LAYERS} (conv1 reads the image, the fully connected layers "
                "are not convolutional); choose among those."
            )
        raise ValueError(
            f"model.remove_conv names {name!r}, not a layer of AlexNet; choose among "
            f"{MIDDLE_CONV_LAYERS}."
        )
    if len(set(remove)) != len(remove):
        raise ValueError(f"model.remove_conv names a layer twice: {tuple(remove)}.")
    extra = m.extra_conv
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise ValueError(
            f"model.extra_conv must be 0 (none) or the kernels of the sixth conv layer over pool5 "
            f"(Table 2's 1 CNN*; e.g. 256), got {extra!r}."
        )
    check_choice(
        "model.extra_conv_sees",
        m.extra_conv_sees,
        EXTRA_CONV_SEES,
        ": 'own' (each tower its own maps, like conv4 and conv5) or 'both' (like conv3).",
    )
    if m.extra_conv_sees != "own" and not extra:
        raise ValueError(
            f"model.extra_conv_sees={m.extra_conv_sees!r} sets the sixth conv layer's input, but "
            "model.extra_conv=0 (no sixth layer): set model.extra_conv (e.g. 256) or leave "
            "extra_conv_sees='own'."
        )
    for field in ("lrn_before_relu", "within_map_after"):
        gone = [n for n in m[field] if n in remove]
        if gone:
            raise ValueError(
                f"model.{field} names {gone}, which model.remove_conv removes; drop "
                f"{gone} from model.{field}."
            )


def _check_init_std(init_std: Any, layers: Sequence[str]) -> None:
    """model.init_std: (layer, std) pairs, each naming one of the network's `layers` once."""
    layers = tuple(layers)
    example = "(('conv3', 0.03), ('conv4', 0.03))"
    if isinstance(init_std, str) or not isinstance(init_std, (tuple, list)):
        raise ValueError(f"model.init_std must be (layer, std) pairs, e.g. {example}.")
    seen = set()
    for pair in init_std:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(
                f"model.init_std entry {pair!r} is not a (layer, std) pair: {example}."
            )
        name, std = pair
        if name not in layers:
            raise ValueError(f"model.init_std names {name!r}, not a layer of AlexNet {layers}.")
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
            raise ValueError(f"model.init_std for {name} must be a positive std, got {std!r}.")
        if name in seen:
            raise ValueError(f"model.init_std names {name!r} twice.")
        seen.add(name)


def _check_conv1_padding(padding: Any) -> None:
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < -1:
        raise ValueError(
            f"model.conv1_padding must be -1 (cuda-convnet2's rounding, the paper's 55x55 from "
            f"224) or a number of zeros >= 0 on every side (torchvision: 2), got {padding!r}."
        )


def _check_pool_window(pool_window: Any) -> None:
    if pool_window not in POOL_WINDOWS:
        raise ValueError(
            f"model.pool_window must be 3 (overlapping, the paper) or 2 (non-overlapping), "
            f"got {pool_window}."
        )


def check_image_size(image_size: int, pool_window: int = 3, padding: int = -1) -> None:
    """Raises ValueError unless `image_size` reaches the 6x6 maps fc6 reads (§3.5) with this
    pooling window and conv1 padding (whose own problems it names first)."""
    _check_pool_window(pool_window)
    _check_conv1_padding(padding)
    if image_size < 11 or spatial_sizes(image_size, pool_window, padding)["pool5"] != 6:
        ok = [s for s in range(63, 400) if spatial_sizes(s, pool_window, padding)["pool5"] == 6]
        raise ValueError(
            f"image_size={image_size} does not give the 6x6 maps fc6 expects; with "
            f"pool_window={pool_window} and conv1_padding={padding} AlexNet takes image sizes "
            f"{ok[0]}-{ok[-1]} (the paper: 224, Caffe: 227)."
        )


def split_problems(config: Any) -> list[str]:
    """What is wrong with the roles of the splits: nothing may be chosen on the test split.

    The evaluations during training (`eval_split`) drive the plateau schedule (§5: "divide the
    learning rate by 10 when the validation error rate stopped improving"), so they must not
    read the test split; the test split (`test_split`) is evaluated once, at the end.
    """
    problems = []
    for field in ("train_split", "eval_split", "test_split"):
        if field == "test_split" and not config.test_split:
            continue
        try:
            splits.parse_split(config[field])
        except ValueError as e:
            problems.append(f"{field}: {e}")
    try:
        eval_base = splits.parse_split(config.eval_split)[0]
    except ValueError:
        eval_base = config.eval_split  # reported above
    if config.optimizer.schedule == "plateau" and (
        eval_base == "test" or (config.test_split and config.eval_split == config.test_split)
    ):
        problems.append(
            f"optimizer.schedule='plateau' drops the learning rate when the evaluations on "
            f"eval_split={config.eval_split!r} stop improving, so the test split would choose "
            "the schedule; evaluate on a validation split held out of the training data "
            "(e.g. train_split='train[:80%]', eval_split='train[80%:]') and report the test "
            "split once at the end with test_split='test'."
        )
    if config.test_split and config.test_split == config.train_split:
        problems.append(
            f"test_split={config.test_split!r} is the training split; use a split the run "
            "does not train on."
        )
    return problems
