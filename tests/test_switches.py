"""Every documented switch, on every network, against an independent computation.

The fields are read from the documentation's tables (`config.model` in docs/model.md,
`config.augment` in docs/data.md, `config.optimizer` in docs/training.md, `config.init_from`
in docs/transfer.md), so a field
documented there without a check here fails `test_every_documented_field_has_a_check`, and a
config field missing from the tables fails `test_every_config_field_is_documented`. A check
computes what the switched layer should give from the same parameters (NumPy, float64; the
layer's input taken from the model) and asserts that (a) the model agrees with it and (b) the
unswitched computation does not, so a switch that is ignored fails. Fields a network does not
have are refused with an error naming them (never silently ignored), and that refusal is the
check.

Networks: the paper's two-tower AlexNet (configs/alexnet.py), the one-tower net
(configs/ablations/one_tower.py), and the CIFAR-10 nets of configs/cifar10_fig1.py and
configs/cifar10_lrn.py.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from alexnet_jax import architecture, augment, cifar_nets, config_checks, models, optim
from configs import alexnet as alexnet_config
from configs import cifar10_fig1, cifar10_lrn
from configs.ablations import one_tower
from tests import reference as ref
from tests.helpers import random_stats
from tests.reference import rel
from tests.test_transfer import INIT_FROM_CHECKS

DOCS = Path(__file__).resolve().parents[1] / "docs"
SECTIONS = ("model", "augment", "optimizer", "init_from")
DOCUMENTED_IN = {
    "model": "model.md", "augment": "data.md", "optimizer": "training.md",
    "init_from": "transfer.md",
}  # fmt: skip
NETWORKS = ("alexnet", "alexnet_1tower", "cifar_fig1", "cifar_lrn")
_BASE_CONFIGS = {
    "alexnet": alexnet_config.get_config,
    "alexnet_1tower": one_tower.get_config,
    "cifar_fig1": cifar10_fig1.get_config,
    "cifar_lrn": cifar10_lrn.get_config,
}


def documented_fields(section: str) -> list[str]:
    """The field names in the first column of the table under '## `config.<section>`'."""
    path = DOCS / DOCUMENTED_IN[section]
    text = path.read_text()
    match = re.search(rf"^##+ `config\.{section}`.*?\n(.*?)(?=\n#|\Z)", text, re.M | re.S)
    assert match, f"{path} has no '## `config.{section}`' section"
    fields = []
    for line in match.group(1).splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first = line.split("|")[1]
            fields += re.findall(r"`([a-z_0-9]+)`", first)
    assert fields, f"no table rows under config.{section}"
    return [f for f in dict.fromkeys(fields) if f != "field"]


# --- Comparing with the independent computations (tests/reference.py) ---------------------------


def assert_switch(out, want, unswitched, tol=1e-5):
    """`out` matches `want` and the unswitched computation is far from it."""
    assert np.shape(out) == np.shape(want)
    assert rel(out, want) < tol, f"differs from the switched computation by {rel(out, want):.2e}"
    if np.shape(unswitched) == np.shape(want):
        gap = rel(unswitched, want)
        assert gap > 20 * tol, f"check cannot tell the switch apart ({gap:.2e})"


def per_term(mc, alpha, n, kind):
    """alpha per squared term: cuda-convnet's layer.py divides its scale by n (across maps) or
    n^2 (within a map) when the config says `divided_by_n`."""
    if mc.lrn_alpha_convention == "per_term":
        return alpha
    return alpha / (n if kind == "cross_map" else n * n)


def norm_ref(a, mc, groups=1):
    """The normalization `config.model` asks for, or none."""
    if not mc.lrn:
        return np.asarray(a, np.float64)
    args = dict(size=mc.lrn_size, alpha=per_term(mc, mc.lrn_alpha, mc.lrn_size, mc.lrn_kind))
    args.update(beta=mc.lrn_beta, k=mc.lrn_k)
    if mc.lrn_kind == "within_map":
        return ref.within_map(a, **args)
    return ref.lrn(a, groups=groups, **args)


ACTIVATIONS = {"relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh}


# --- Building and running a network with one field switched ------------------------------------


def net_config(network: str, **model_overrides) -> ml_collections.ConfigDict:
    config = _BASE_CONFIGS[network]()
    if network.startswith("cifar"):
        config.model.num_classes = 10
        # The layer files' initW (1e-4 for conv1) makes conv1's outputs so small that no
        # normalization changes them measurably; LeCun-normal weights make every check sharp.
        config.model.init = "lecun"
    config.model.update(model_overrides)
    return config


@functools.cache
def _params(network: str, shape_key: tuple) -> dict:
    """The network's initial parameters, `model.init` with key 0, as read-only NumPy arrays.

    A full initialisation of AlexNet's 60M parameters compiles for tens of seconds, so a config
    that changes only some layers' shapes (or, through `init_std`, their std) initialises only
    those layers, in a program that XLA trims to their random draws, and takes the others from
    the network's default parameters. That is exact: Flax draws each parameter from the key
    folded with its layer's name, so a layer of the same shape and initializer has the same
    values in either config. `init` changes every layer: it initialises them all.
    """
    config = net_config(network, **dict(shape_key))
    model = models.create_model(config.model)
    x = jnp.zeros((1, config.image_size, config.image_size, 3))
    key = jax.random.key(0)
    overrides = dict(shape_key)
    base = _params(network, ()) if overrides and "init" not in overrides else None
    if base is None:
        fresh = None  # every layer
    else:
        shapes = jax.eval_shape(lambda k, x: model.init(k, x)["params"], key, x)
        restd = dict(overrides.get("init_std", ()))
        fresh = [
            name
            for name, leaves in shapes.items()
            if name in restd
            or name not in base
            or any(leaves[k].shape != base[name][k].shape for k in leaves)
        ]

    def init(key, x):
        params = model.init(key, x)["params"]
        return params if fresh is None else {name: params[name] for name in fresh}

    drawn = jax.tree.map(_read_only, jax.jit(init)(key, x))
    if base is None:
        return drawn
    return {name: drawn[name] if name in drawn else base[name] for name in shapes}


def _read_only(value) -> np.ndarray:
    """A NumPy copy that raises if written: the cached arrays are shared by every check."""
    out = np.array(value)
    out.setflags(write=False)
    return out


_SHAPE_FIELDS = (
    "towers", "one_tower_kernels", "num_classes", "init", "name", "init_std", "remove_conv",
    "extra_conv", "extra_conv_sees",
)  # fmt: skip


def _changed(network: str, overrides: dict, fields=None) -> tuple:
    """The overrides (of `fields`, if given) whose values differ from the base config's, as a
    sorted tuple: the same key for the same config however it was asked for."""
    base = net_config(network).model
    return tuple(
        sorted(
            (k, v) for k, v in overrides.items() if (fields is None or k in fields) and base[k] != v
        )
    )


def _shape_key(network: str, overrides: dict) -> tuple:
    """The overrides that change the parameters (values equal to the base's do not)."""
    return _changed(network, overrides, _SHAPE_FIELDS)


def run(network: str, train: bool = False, batch: int = 2, keep=None, **model_overrides):
    """(config.model, params, intermediates as float64 NumPy, logits) for a switched net.

    `keep`: the names of the intermediates the check reads; the program returns only those
    (and no logits), so XLA compiles only the layers they depend on: a check of conv1's and
    conv2's normalization does not compile AlexNet's fully connected layers. None: every
    intermediate and the logits. Results are cached per config: two checks of one config run
    it once.
    """
    mc, inter, logits = _run(
        network, train, batch, None if keep is None else tuple(keep),
        _changed(network, model_overrides),
    )  # fmt: skip
    params = _params(network, _shape_key(network, model_overrides))
    return mc.copy_and_resolve_references(), params, dict(inter), logits


@functools.lru_cache(maxsize=32)
def _run(network: str, train: bool, batch: int, keep, overrides: tuple):
    config = net_config(network, **dict(overrides))
    model = models.create_model(config.model)
    params = _params(network, _shape_key(network, dict(overrides)))
    size = config.image_size
    # Pixel-like, mean-subtracted inputs (std ~60 in 0..255 units), the same for every switch.
    x = 60.0 * np.asarray(jax.random.normal(jax.random.key(1), (batch, size, size, 3)))

    @jax.jit
    def forward(params, x):
        logits, state = model.apply(
            {"params": params},
            x,
            train=train,
            rngs={"dropout": jax.random.key(2)},
            mutable="intermediates",
        )
        inter = state["intermediates"]
        if keep is None:
            return logits, inter
        return None, {k: inter[k] for k in keep if k in inter}

    logits, inter = forward(params, x.astype(np.float32))
    inter = {k: _read_only(np.asarray(v[0], np.float64)) for k, v in inter.items()}
    inter["input"] = _read_only(x)
    logits = None if logits is None else _read_only(np.asarray(logits, np.float64))
    return config.model, inter, logits


def primitive_shapes(network: str, **model_overrides) -> list[tuple[str, tuple, dict]]:
    """(primitive, operand shapes, params) of every equation of the forward pass, nested too."""
    config = net_config(network, **model_overrides)
    model = models.create_model(config.model)
    params = _params(network, ())
    x = jnp.zeros((2, config.image_size, config.image_size, 3))
    jaxpr = jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x))(params, x)
    found = []

    def walk(jpr):
        for eqn in jpr.eqns:
            shapes = tuple(tuple(v.aval.shape) for v in eqn.invars if hasattr(v.aval, "shape"))
            found.append((eqn.primitive.name, shapes, eqn.params))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jaxpr.jaxpr)
    return found


def refused(network: str, field: str, value) -> None:
    """A field the network does not have: a non-default value is an error naming it."""
    config = net_config(network)
    config.model[field] = value
    with pytest.raises(ValueError, match=f"model.{field}"):
        models.create_model(config.model)


def _is_alexnet(network: str) -> bool:
    return network.startswith("alexnet")


def _towers(network: str) -> int:
    return 2 if network == "alexnet" else 1


# --- Model checks ------------------------------------------------------------------------------
# What the checks of conv1's and conv2's normalization read (`run`'s keep): one tuple, so that
# checks of one config share its program.
_NORM_KEYS = ("conv1_out", "pool1_out", "conv2_out")
# conv1 of AlexNet: 224 inputs, stride 4, 3 zero rows/columns past the bottom/right (§3.5 note).
_CONV1_PAD = (0, 3)


def _alexnet_conv1(params, inter, activation="relu"):
    pre = ref.tower_conv(
        inter["input"], params["conv1"]["kernel"], params["conv1"]["bias"], "both", 4, _CONV1_PAD
    )
    return ACTIVATIONS[activation](pre)


def _alexnet_conv2(params, inter, activation="relu"):
    pre = ref.tower_conv(
        inter["pool1_out"], params["conv2"]["kernel"], params["conv2"]["bias"], "own", 1, (2, 2)
    )
    return ACTIVATIONS[activation](pre)


def _cifar_first(network, params, inter, mc):
    """(what the net sows after conv1's normalization point, computed, unnormalized)."""
    a = ACTIVATIONS[mc.activation](
        ref.conv(inter["input"], params["conv1"]["kernel"], 1, (2, 2)) + params["conv1"]["bias"]
    )
    if network == "cifar_lrn":  # layers-conv-local-11pct: conv, ReLU, LRN, then pool
        return inter["conv1_out"], norm_ref(a, mc), a
    # layers-18pct: conv1, max pool (with the ReLU), then the normalization
    pooled = ref.pool(a, 3, 2, "max", ceil=True)
    return inter["pool1_out"], norm_ref(pooled, mc), pooled


def check_name(network):
    mc, params, inter, logits = run(network)
    expected = {
        "alexnet": {
            "conv1": (2, 11, 11, 3, 48), "conv2": (2, 5, 5, 48, 128), "conv3": (2, 3, 3, 256, 192),
            "conv4": (2, 3, 3, 192, 192), "conv5": (2, 3, 3, 192, 128), "fc6": (2, 9216, 2048),
            "fc7": (2, 4096, 2048), "fc8": (2, 4096, 500),
        },
        "alexnet_1tower": {
            "conv1": (1, 11, 11, 3, 48), "conv2": (1, 5, 5, 48, 128), "conv3": (1, 3, 3, 128, 192),
            "conv4": (1, 3, 3, 192, 192), "conv5": (1, 3, 3, 192, 256), "fc6": (1, 9216, 4096),
            "fc7": (1, 4096, 4096), "fc8": (1, 4096, 1000),
        },
        # layers-18pct: 5x5 convs of 32, 32, 64 maps; 32 -> 16 -> 8 -> 4 after the pools.
        "cifar_fig1": {
            "conv1": (5, 5, 3, 32), "conv2": (5, 5, 32, 32), "conv3": (5, 5, 32, 64),
            "fc10": (4 * 4 * 64, 10),
        },
        # layers-conv-local-11pct on 24x24 crops: 24 -> 12 -> 6; local layers 3x3 of 32 maps.
        "cifar_lrn": {
            "conv1": (5, 5, 3, 64), "conv2": (5, 5, 64, 64), "local3": (6, 6, 3 * 3 * 64, 32),
            "local4": (6, 6, 3 * 3 * 32, 32), "fc10": (6 * 6 * 32, 10),
        },
    }[network]  # fmt: skip
    assert {k: params[k]["kernel"].shape for k in params} == expected
    assert logits.shape == (2, 1000 if _is_alexnet(network) else 10)


def check_towers(network):
    if not _is_alexnet(network):
        return refused(network, "towers", 2)
    mc, params, inter, _ = run(network)
    towers = _towers(network)
    assert params["conv2"]["kernel"].shape[0] == towers
    # conv2 reads its own tower's maps: per-tower convolutions of pool1's halves.
    want = norm_ref(_alexnet_conv2(params, inter), mc, groups=towers)
    np.testing.assert_array_less(rel(inter["conv2_out"], want), 1e-5)
    # conv3 reads both towers: one convolution over all of pool2's maps.
    pre3 = ref.tower_conv(
        inter["pool2_out"], params["conv3"]["kernel"], params["conv3"]["bias"], "both", 1, (1, 1)
    )
    np.testing.assert_array_less(rel(inter["conv3_out"], np.maximum(pre3, 0)), 1e-5)
    if towers == 2:
        # Had the towers been ignored (one conv over all 96 maps), conv2 could not be computed
        # from a 48-channel kernel; LRN within each tower differs from LRN across both.
        across = norm_ref(_alexnet_conv2(params, inter), mc, groups=1)
        assert rel(across, want) > 1e-4


def check_one_tower_kernels(network):
    if network != "alexnet_1tower":  # the widths of the one-tower net only
        return refused(network, "one_tower_kernels", "full")
    mc, params, inter, _ = run(network, one_tower_kernels="full")
    assert [params[k]["kernel"].shape[-1] for k in ("conv1", "conv2", "conv3", "conv4")] == [
        96, 256, 384, 384
    ]  # fmt: skip
    want = norm_ref(_alexnet_conv2(params, inter), mc)
    assert_switch(inter["conv2_out"], want, None)
    # torchvision's one-tower widths (Krizhevsky's "one weird trick" net).
    mc, params, inter, _ = run(network, one_tower_kernels="owt", lrn=False)
    widths = [params[k]["kernel"].shape[-1] for k in ("conv1", "conv2", "conv3", "conv4", "conv5")]
    assert widths == [64, 192, 384, 256, 256]
    assert params["fc6"]["kernel"].shape == (1, 6 * 6 * 256, 4096)
    assert sum(v.size for v in jax.tree.leaves(params)) == 61_100_840  # torchvision's count
    assert rel(inter["conv2_out"], _alexnet_conv2(params, inter)) < 1e-5


def check_lrn_across_towers(network):
    if not _is_alexnet(network):
        return refused(network, "lrn_across_towers", True)
    mc, params, inter, _ = run(network, lrn_across_towers=True, keep=_NORM_KEYS)
    a = _alexnet_conv1(params, inter)
    # One window over all 96 maps (Caffe's groups share the LRN layer), not each tower's 48.
    across, per_tower = norm_ref(a, mc, groups=1), norm_ref(a, mc, groups=_towers(network))
    assert_switch(inter["conv1_out"], across, per_tower if network == "alexnet" else None)
    a2 = _alexnet_conv2(params, inter)
    assert rel(inter["conv2_out"], norm_ref(a2, mc, groups=1)) < 1e-5


def check_conv1_padding(network):
    if not _is_alexnet(network):
        return refused(network, "conv1_padding", 2)
    mc, params, inter, _ = run(network, conv1_padding=2)
    kernel, bias = params["conv1"]["kernel"], params["conv1"]["bias"]
    groups = _towers(network)
    # torchvision: 2 zeros on every side, (224 + 4 - 11) // 4 + 1 = 55 like the paper's rounding.
    sym = norm_ref(
        np.maximum(ref.tower_conv(inter["input"], kernel, bias, "both", 4, (2, 2)), 0), mc, groups
    )
    paper = norm_ref(
        np.maximum(ref.tower_conv(inter["input"], kernel, bias, "both", 4, _CONV1_PAD), 0),
        mc,
        groups,
    )
    assert_switch(inter["conv1_out"], sym, paper)
    for bad in (-2, -5):
        with pytest.raises(ValueError, match="model.conv1_padding"):
            models.create_model(net_config(network, conv1_padding=bad).model)


def check_dropout_on(network):
    if network != "alexnet_1tower":  # torchvision's placement: one tower only
        if _is_alexnet(network):
            with pytest.raises(ValueError, match="model.dropout_on"):
                models.create_model(net_config(network, dropout_on="inputs").model)
            return None
        return refused(network, "dropout_on", "inputs")
    _, params, inter, _ = run(network, train=True, dropout_on="inputs")
    pool5 = inter["pool5_out"].reshape(2, -1)
    fc6_in = inter["fc6_in"]
    dropped = (fc6_in == 0) & (pool5 != 0)
    np.testing.assert_allclose(np.where(dropped, pool5, fc6_in), pool5, rtol=1e-6, atol=1e-6)
    assert 0.4 < dropped[pool5 != 0].mean() < 0.6  # rate 0.5 on fc6's inputs
    fc6 = np.maximum(ref.tower_fc(fc6_in, params["fc6"]["kernel"], params["fc6"]["bias"]), 0)
    assert_switch(
        inter["fc6_out"],
        fc6,
        np.maximum(ref.tower_fc(pool5, params["fc6"]["kernel"], params["fc6"]["bias"]), 0),
    )
    # fc7's input is fc6's output dropped; fc7's own output is not dropped.
    fc7_in = inter["fc7_in"]
    assert 0.4 < ((fc7_in == 0) & (fc6 != 0))[fc6 != 0].mean() < 0.6
    fc7 = np.maximum(ref.tower_fc(fc7_in, params["fc7"]["kernel"], params["fc7"]["bias"]), 0)
    assert rel(inter["fc7_out"], fc7) < 1e-5


def check_activation(network):
    keep = ("conv1_out", "fc6_out", "fc7_out") if _is_alexnet(network) else None
    mc, params, inter, _ = run(network, activation="tanh", keep=keep)
    if _is_alexnet(network):
        groups = _towers(network)
        want = norm_ref(_alexnet_conv1(params, inter, "tanh"), mc, groups)
        unswitched = norm_ref(_alexnet_conv1(params, inter, "relu"), mc, groups)
        # tanh is steep where the float32 and float64 pre-activations differ: 1e-4.
        assert_switch(inter["conv1_out"], want, unswitched, tol=1e-4)
        fc7 = ref.tower_fc(inter["fc6_out"], params["fc7"]["kernel"], params["fc7"]["bias"])
        # fc7's outputs at test time, times 1 - rate under the paper's dropout scaling (§4.2).
        keep = 1.0 - mc.dropout_rate if mc.dropout_scaling == "test_time" else 1.0
        assert_switch(inter["fc7_out"], keep * np.tanh(fc7), keep * np.maximum(fc7, 0))
    else:
        out, want, _ = _cifar_first(network, params, inter, mc)
        relu = mc.copy_and_resolve_references()
        relu.activation = "relu"
        assert_switch(out, want, _cifar_first(network, params, inter, relu)[1], tol=1e-4)


def _check_norm_field(network, **switch):
    mc, params, inter, _ = run(network, keep=_NORM_KEYS, **switch)
    default = net_config(network).model
    if "lrn_kind" in switch:  # compared with the other kind at the same constants
        default = mc.copy_and_resolve_references()
        default.lrn_kind = next(k for k in config_checks.LRN_KINDS if k != switch["lrn_kind"])
    if _is_alexnet(network):
        groups = _towers(network)
        a = _alexnet_conv1(params, inter)
        assert_switch(inter["conv1_out"], norm_ref(a, mc, groups), norm_ref(a, default, groups))
        # ... and after conv2 (§3.3: both layers).
        a2 = _alexnet_conv2(params, inter)
        assert_switch(inter["conv2_out"], norm_ref(a2, mc, groups), norm_ref(a2, default, groups))
    else:
        out, want, unnormalized = _cifar_first(network, params, inter, mc)
        _, default_want, _ = _cifar_first(network, params, inter, default)
        assert_switch(out, want, default_want)


def check_lrn(network):
    _check_norm_field(network, lrn=False)
    if network == "alexnet":
        # The acceptance line: configs/alexnet.py's paper parameters, lrn=False gives
        # conv1_out == relu(conv1 x) to 1e-6 relative.
        _, params, inter, _ = run(network, lrn=False, keep=_NORM_KEYS)
        assert rel(inter["conv1_out"], _alexnet_conv1(params, inter)) < 1e-6


def check_lrn_size(network):
    _check_norm_field(network, lrn_size=3 if net_config(network).model.lrn_size != 3 else 5)


def check_lrn_alpha(network):
    _check_norm_field(network, lrn_alpha=net_config(network).model.lrn_alpha * 100)


def check_lrn_beta(network):
    _check_norm_field(network, lrn_beta=0.5)


def check_lrn_k(network):
    _check_norm_field(network, lrn_k=net_config(network).model.lrn_k + 1.0)


def check_lrn_alpha_convention(network):
    # The file's scale 5x (or 9x for a 3x3 window) the per-term alpha: the same layer again.
    _check_norm_field(network, lrn_alpha_convention="divided_by_n")
    with pytest.raises(ValueError, match="model.lrn_alpha_convention"):
        models.create_model(net_config(network, lrn_alpha_convention="caffe").model)


def _alexnet_pre(params, inter, name):
    """conv1's or conv2's pre-activation outputs, from the model's own inputs to the layer."""
    if name == "conv1":
        return ref.tower_conv(
            inter["input"], params["conv1"]["kernel"], params["conv1"]["bias"], "both", 4,
            _CONV1_PAD,
        )  # fmt: skip
    return ref.tower_conv(
        inter["pool1_out"], params["conv2"]["kernel"], params["conv2"]["bias"], "own", 1, (2, 2)
    )


def check_lrn_before_relu(network):
    if not _is_alexnet(network):
        return refused(network, "lrn_before_relu", ("conv1",))
    mc, params, inter, _ = run(network, lrn_before_relu=("conv1",), keep=_NORM_KEYS)
    groups = _towers(network)
    pre = _alexnet_pre(params, inter, "conv1")
    # The 2012 code: rnorm1 reads conv1 (no neuron), pool1 applies the ReLU.
    assert_switch(
        inter["conv1_out"],
        np.maximum(norm_ref(pre, mc, groups), 0),
        norm_ref(np.maximum(pre, 0), mc, groups),
    )
    # conv2, not listed, still normalizes after its ReLU.
    pre2 = _alexnet_pre(params, inter, "conv2")
    assert rel(inter["conv2_out"], norm_ref(np.maximum(pre2, 0), mc, groups)) < 1e-5
    with pytest.raises(ValueError, match="model.lrn_before_relu"):
        models.create_model(net_config(network, lrn_before_relu=("conv3",)).model)


def _within_map_check(network, against=None, **switch):
    """conv2 with the 2012 code's extra within-map normalization, constants `switch`; the
    unswitched computation has the default constants updated with `against`."""
    if not _is_alexnet(network):
        return refused(network, "within_map_after", ("conv2",))
    mc, params, inter, _ = run(network, within_map_after=("conv2",), keep=_NORM_KEYS, **switch)
    default = net_config(network, **(against or {})).model
    groups = _towers(network)
    lrn2 = norm_ref(np.maximum(_alexnet_pre(params, inter, "conv2"), 0), mc, groups)

    def within(m):
        n = m.within_map_size
        alpha = per_term(m, m.within_map_alpha, n, "within_map")
        return ref.within_map(lrn2, size=n, alpha=alpha, beta=m.within_map_beta, k=m.within_map_k)

    unswitched = lrn2 if not switch else within(default)
    assert_switch(inter["conv2_out"], within(mc), unswitched)
    return mc, params, inter


def check_within_map_after(network):
    if _within_map_check(network) is None:
        return
    # lrn=False removes both normalizations (run #148 of the 2012 code).
    _, params, inter, _ = run(network, within_map_after=("conv2",), lrn=False, keep=_NORM_KEYS)
    # float32 against float64 (1.2e-6 on an AVX2-only CPU): the tolerance of assert_switch.
    assert rel(inter["conv2_out"], np.maximum(_alexnet_pre(params, inter, "conv2"), 0)) < 1e-5
    with pytest.raises(ValueError, match="model.within_map_after"):
        models.create_model(net_config(network, within_map_after=("conv5",)).model)


def check_within_map_size(network):
    if network == "alexnet_1tower":  # the same per-map code as two towers: checked there
        return None
    if _is_alexnet(network):
        _within_map_check(network, within_map_size=4)  # even: the extra row/column above/left
        _within_map_check(network, within_map_size=3)
    else:
        refused(network, "within_map_size", 3)


def check_within_map_alpha(network):
    if network == "alexnet_1tower":  # the same per-map code as two towers: checked there
        return None
    if not _is_alexnet(network):
        return refused(network, "within_map_alpha", 1e-3)
    _within_map_check(network, within_map_alpha=1e-3)
    # ... and read in lrn_alpha_convention: the 2012 code's scale 0.001 over 5x5 terms.
    _within_map_check(
        network,
        against={"within_map_alpha": 1e-3},  # the scale misread as a per-term alpha
        within_map_alpha=1e-3,
        lrn_alpha_convention="divided_by_n",
    )


def _within_map_constant(network, field, value):
    """One within-map constant switched (two-tower AlexNet; refused by the CIFAR nets)."""
    if network == "alexnet_1tower":  # the same per-map code as two towers: checked there
        return None
    if not _is_alexnet(network):
        return refused(network, field, value)
    return _within_map_check(network, **{field: value})


def check_within_map_beta(network):
    _within_map_constant(network, "within_map_beta", 0.5)


def check_within_map_k(network):
    _within_map_constant(network, "within_map_k", 2.0)


def check_lrn_kind(network):
    # Both kinds, the network's own and the other: a net that always used one would fail.
    for kind in config_checks.LRN_KINDS:
        _check_norm_field(network, lrn_kind=kind, lrn_size=3, lrn_alpha=1e-3)


def check_pool_window(network):
    if not _is_alexnet(network):
        return refused(network, "pool_window", 2)
    _, _, inter, _ = run(network, pool_window=2)
    for layer in ("1", "5"):
        conv_out = inter[f"conv{layer}_out"]
        assert_switch(inter[f"pool{layer}_out"], ref.pool(conv_out, 2), ref.pool(conv_out, 3))


def check_remove_conv(network):
    """§7: each middle conv layer removed. The next layer's pre-activations are computed here
    from the removed layer's input (its pooling kept), with the next layer's own parameters;
    the removed layer has no parameters (a switch that is ignored keeps them)."""
    if not _is_alexnet(network):
        return refused(network, "remove_conv", ("conv3",))
    pad1 = (1, 1)
    for name in architecture.MIDDLE_CONV_LAYERS:
        _, params, inter, _ = run(network, remove_conv=(name,))
        assert name not in params and f"{name}_pre" not in inter, name
        if name == "conv2":  # pool2 stays on conv1's path: conv3 reads pool2(pool1(conv1))
            np.testing.assert_allclose(inter["pool2_out"], ref.pool(inter["pool1_out"], 3))
            got, x, nxt, sees = inter["conv3_pre"], inter["pool2_out"], "conv3", "both"
        elif name == "conv3":  # conv4 (own tower) reads pool2
            got, x, nxt, sees = inter["conv4_pre"], inter["pool2_out"], "conv4", "own"
        elif name == "conv4":  # conv5 (own tower) reads conv3's outputs
            got, x, nxt, sees = inter["conv5_pre"], inter["conv3_out"], "conv5", "own"
        else:  # pool5 stays on conv4's path; fc6 reads its 6 x 6 x 384
            np.testing.assert_allclose(inter["pool5_out"], ref.pool(inter["conv4_out"], 3))
            want = ref.tower_fc(inter["pool5_out"], params["fc6"]["kernel"], params["fc6"]["bias"])
            assert params["fc6"]["kernel"].shape[-2] == 6 * 6 * inter["conv4_out"].shape[-1]
            assert_switch(inter["fc6_pre"], want, None)
            continue
        want = ref.tower_conv(x, params[nxt]["kernel"], params[nxt]["bias"], sees, 1, pad1)
        assert_switch(got, want, None)
        # Its kernel count is its own; its fan-in is what it now reads (per tower for 'own').
        towers = _towers(network)
        fan_in = x.shape[-1] // (towers if sees == "own" else 1)
        assert params[nxt]["kernel"].shape[-2] == fan_in, (name, params[nxt]["kernel"].shape)
        # The paper's biases follow the layer that remains: 1 in conv4 and conv5, 0 in conv3.
        assert np.all(params[nxt]["bias"] == (0.0 if nxt == "conv3" else 1.0))
    # Two at once: conv5 reads pool2 (conv3 and conv4 gone).
    _, params, inter, _ = run(network, remove_conv=("conv3", "conv4"))
    want = ref.tower_conv(
        inter["pool2_out"], params["conv5"]["kernel"], params["conv5"]["bias"], "own", 1, pad1
    )
    assert_switch(inter["conv5_pre"], want, None)
    for bad in (("conv1",), ("fc6",)):
        with pytest.raises(ValueError, match="not a middle conv layer"):
            models.create_model(net_config(network, remove_conv=bad).model)
    with pytest.raises(ValueError, match="model.within_map_after names"):
        models.create_model(
            net_config(network, remove_conv=("conv2",), within_map_after=("conv2",)).model
        )


def check_extra_conv(network):
    """Table 2's sixth conv layer: 3x3 pad 1 over pool5, `extra_conv` kernels over the towers,
    ReLU, then fc6 reads it (6 x 6 maps, so fc6's fan-in is unchanged)."""
    if not _is_alexnet(network):
        return refused(network, "extra_conv", 256)
    towers = _towers(network)
    for kernels in (256, 128):
        _, params, inter, _ = run(network, extra_conv=kernels)
        k = params["conv6"]["kernel"]
        assert k.shape == (towers, 3, 3, 256 // towers, kernels // towers), k.shape
        pre = ref.tower_conv(inter["pool5_out"], k, params["conv6"]["bias"], "own", 1, (1, 1))
        assert_switch(inter["conv6_pre"], pre, None)
        act = np.maximum(pre, 0)
        want = ref.tower_fc(act, params["fc6"]["kernel"], params["fc6"]["bias"])
        if kernels == 256:  # without the layer, fc6 would read pool5 itself
            plain = ref.tower_fc(inter["pool5_out"], params["fc6"]["kernel"], params["fc6"]["bias"])
            assert_switch(inter["fc6_pre"], want, plain)
        # §5's init: N(0, 0.01) weights; the bias rule gives 1 only to conv2/4/5, fc6/7.
        assert abs(np.std(k) / 0.01 - 1) < 0.05 and not np.any(params["conv6"]["bias"])
    with pytest.raises(ValueError, match="model.extra_conv"):
        models.create_model(net_config(network, extra_conv=-1).model)


def check_extra_conv_sees(network):
    """'both': the sixth layer reads every tower's maps (like conv3); 'own' its tower's."""
    if not _is_alexnet(network):
        return refused(network, "extra_conv_sees", "both")
    if _towers(network) == 1:  # one tower: 'both' would change nothing, so it is refused
        with pytest.raises(ValueError, match="model.extra_conv_sees='both'"):
            models.create_model(net_config(network, extra_conv=256, extra_conv_sees="both").model)
        return None
    _, params, inter, _ = run(network, extra_conv=256, extra_conv_sees="both")
    k, b = params["conv6"]["kernel"], params["conv6"]["bias"]
    assert k.shape == (2, 3, 3, 256, 128)
    want = ref.tower_conv(inter["pool5_out"], k, b, "both", 1, (1, 1))
    # The same kernels read as own-tower ones (each tower its half of the input maps).
    halves = np.stack([k[0][:, :, :128], k[1][:, :, 128:]])
    own = ref.tower_conv(inter["pool5_out"], halves, b, "own", 1, (1, 1))
    assert_switch(inter["conv6_pre"], want, own)
    with pytest.raises(ValueError, match="model.extra_conv_sees"):
        models.create_model(net_config(network, extra_conv=256, extra_conv_sees="all").model)


def _check_dropout(network, scaling, rate):
    """fc6's outputs in training (each unit dropped or kept, at the scaling's size, the drop
    fraction `rate`) and at test time (all units, times 1 - rate under 'test_time')."""
    keep = ("pool5_out", "fc6_out")  # fc6's input and output: fc7 and fc8 are not compiled
    _, params, inter, _ = run(
        network, train=True, keep=keep, dropout_rate=rate, dropout_scaling=scaling
    )
    pre = ref.tower_fc(inter["pool5_out"], params["fc6"]["kernel"], params["fc6"]["bias"])
    relu = np.maximum(pre, 0)
    kept = relu if scaling == "test_time" else relu / (1.0 - rate)
    out = inter["fc6_out"]
    dropped = (out == 0) & (kept != 0)
    scale = np.abs(kept).max()
    np.testing.assert_allclose(np.where(dropped, kept, out), kept, atol=1e-5 * scale)
    active = kept != 0
    fraction = dropped[active].mean()
    sigma = math.sqrt(max(rate * (1 - rate), 1e-12) / active.sum())
    assert abs(fraction - rate) < 5 * sigma + 1e-12, (rate, fraction)
    _, params, inter, _ = run(
        network, train=False, keep=keep, dropout_rate=rate, dropout_scaling=scaling
    )
    pre = ref.tower_fc(inter["pool5_out"], params["fc6"]["kernel"], params["fc6"]["bias"])
    test = np.maximum(pre, 0) * ((1.0 - rate) if scaling == "test_time" else 1.0)
    other = np.maximum(pre, 0) * ((1.0 - rate) if scaling != "test_time" else 1.0)
    assert_switch(inter["fc6_out"], test, other if rate else None)


def check_dropout_rate(network):
    if not _is_alexnet(network):
        return refused(network, "dropout_rate", 0.5)
    for rate in (0.0, 0.3):
        _check_dropout(network, "test_time", rate)


def check_dropout_scaling(network):
    if not _is_alexnet(network):
        return refused(network, "dropout_scaling", "inverted")
    for scaling in config_checks.DROPOUT_SCALINGS:
        _check_dropout(network, scaling, 0.5)
    with pytest.raises(ValueError, match="model.dropout_scaling"):
        models.create_model(net_config(network, dropout_scaling="none").model)


def check_num_classes(network):
    for n in (10, 7):
        _, params, inter, logits = run(network, num_classes=n)
        if _is_alexnet(network):
            full = ref.tower_fc(inter["fc7_out"], params["fc8"]["kernel"], params["fc8"]["bias"])
            per_tower = -(-n // _towers(network))
            assert full.shape[-1] == per_tower * _towers(network)
            want = full[:, :n]  # an odd count drops the spare logit of the last tower
        else:
            last = cifar_nets.CIFAR_NETS[network][-2]  # the layer before fc10
            features = inter[f"pool{last.name[-1]}_out" if last.pool else f"{last.name}_out"]
            want = features.reshape(2, -1) @ params["fc10"]["kernel"] + params["fc10"]["bias"]
        assert logits.shape == (2, n)
        assert rel(logits, want) < 1e-5


def check_init(network):
    def std_ok(kernel, std):
        assert abs(np.std(kernel) / std - 1) < 0.05, (np.std(kernel), std)

    if _is_alexnet(network):
        ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
        for init in ("paper", "caffe", "lecun"):
            params = _params(network, _shape_key(network, {"init": init}))
            for name, p in params.items():
                fan_in = math.prod(p["kernel"].shape[1:-1])
                std = {"paper": 0.01, "lecun": 1 / math.sqrt(fan_in)}.get(
                    init, 0.005 if name in ("fc6", "fc7") else 0.01
                )
                std_ok(p["kernel"], std)
                bias = {"paper": 1.0, "caffe": 0.1, "lecun": 0.0}[init] if name in ones else 0.0
                np.testing.assert_array_equal(p["bias"], np.float32(bias))
        return
    layers = cifar_nets.CIFAR_NETS[network]
    params = _params(network, _shape_key(network, {"init": "paper"}))
    for spec in layers:
        std_ok(params[spec.name]["kernel"], spec.init_std)
    params = _params(network, _shape_key(network, {"init": "lecun"}))
    for spec in layers:
        kernel = params[spec.name]["kernel"]
        # Fan-in: k*k*in for a conv, in for fc10; for a local layer, (out_h, out_w, k*k*in,
        # features), Flax's lecun_normal counts the positions too (cifar_nets.CifarNet says so).
        fan_in = math.prod(kernel.shape[:-1])
        std_ok(kernel, 1 / math.sqrt(fan_in))
    refused(network, "init", "caffe")


def check_init_std(network):
    if not _is_alexnet(network):
        return refused(network, "init_std", (("conv3", 0.03),))
    overrides = {"init_std": (("conv3", 0.03), ("fc7", 0.002))}
    params = _params(network, _shape_key(network, overrides))
    paper = _params(network, ())
    for name, p in params.items():
        std = dict(overrides["init_std"]).get(name, 0.01)
        assert abs(np.std(p["kernel"]) / std - 1) < 0.05, (name, np.std(p["kernel"]), std)
        np.testing.assert_array_equal(p["bias"], paper[name]["bias"])  # biases keep init's
    for bad in ((("conv9", 0.03),), (("conv3", -1.0),), ("conv3", 0.03)):
        with pytest.raises(ValueError, match="model.init_std"):
            models.create_model(net_config(network, init_std=bad).model)


def check_grouped_conv(network):
    if not _is_alexnet(network):
        return refused(network, "grouped_conv", True)
    mc, params, inter, _ = run(network, grouped_conv=True, keep=_NORM_KEYS)
    want = norm_ref(_alexnet_conv2(params, inter), mc, groups=_towers(network))
    assert rel(inter["conv2_out"], want) < 1e-5  # the same numbers ...
    if network == "alexnet_1tower":  # documented: one tower has nothing to group
        return

    def grouped(found):
        convs = [(s, kw) for p, s, kw in found if p == "conv_general_dilated"]
        return [s for s, kw in convs if kw["feature_group_count"] == 2]

    # ... by another computation: one grouped convolution for each own-tower layer.
    assert len(grouped(primitive_shapes(network, grouped_conv=True))) == 3
    assert grouped(primitive_shapes(network)) == []


def check_kernels(network):
    if not _is_alexnet(network):
        return refused(network, "kernels", "xla")
    mc, params, inter, _ = run(network, kernels="xla", keep=_NORM_KEYS)
    want = norm_ref(_alexnet_conv1(params, inter), mc, groups=_towers(network))
    assert rel(inter["conv1_out"], want) < 1e-5  # the same numbers ...
    want = norm_ref(_alexnet_conv2(params, inter), mc, groups=_towers(network))
    assert rel(inter["conv2_out"], want) < 1e-5

    def conv1_convs(found):
        return [s for p, s, _ in found if p == "conv_general_dilated" and s[1][:3] == (11, 11, 3)]

    def custom(found):
        return [p for p, _, _ in found if p.startswith("custom_vjp")]

    # ... by other computations: 'xla' has conv1 as a library convolution and no custom
    # gradient rules but LRN's two (the convolutions and pools are XLA's own); 'cpu' (and
    # 'auto' on this CPU backend) has conv1 as space-to-depth + matmul and adds the rules of
    # the ops: at least 3 stride-1 convolutions and 3 pools.
    xla = primitive_shapes(network, kernels="xla")
    assert len(conv1_convs(xla)) == 1 and len(custom(xla)) == 2
    for kernels in ("cpu", "auto"):
        found = primitive_shapes(network, kernels=kernels)
        assert conv1_convs(found) == [] and len(custom(found)) >= 2 + 3 + 3
    with pytest.raises(ValueError, match="model.kernels"):
        models.create_model(net_config(network, kernels="cudnn").model)


def check_compute_dtype(network):
    if not _is_alexnet(network):
        return refused(network, "compute_dtype", "bfloat16")
    mc, params, inter, _ = run(network, compute_dtype="bfloat16", keep=("conv1_out",))

    def bf16(v):
        return np.asarray(jnp.asarray(v, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))

    kernel, bias = params["conv1"]["kernel"], params["conv1"]["bias"]
    x = inter["input"].astype(np.float32)
    rounded = ref.tower_conv(bf16(x), bf16(kernel), bias, "both", 4, _CONV1_PAD)
    exact = ref.tower_conv(x, kernel, bias, "both", 4, _CONV1_PAD)
    groups = _towers(network)
    # Products of bfloat16-rounded inputs, summed in float32.
    assert_switch(
        inter["conv1_out"],
        norm_ref(np.maximum(rounded, 0), mc, groups),
        norm_ref(np.maximum(exact, 0), mc, groups),
    )


MODEL_CHECKS = {
    "name": check_name,
    "towers": check_towers,
    "one_tower_kernels": check_one_tower_kernels,
    "activation": check_activation,
    "lrn": check_lrn,
    "lrn_kind": check_lrn_kind,
    "lrn_size": check_lrn_size,
    "lrn_alpha": check_lrn_alpha,
    "lrn_beta": check_lrn_beta,
    "lrn_k": check_lrn_k,
    "lrn_alpha_convention": check_lrn_alpha_convention,
    "lrn_before_relu": check_lrn_before_relu,
    "within_map_after": check_within_map_after,
    "within_map_size": check_within_map_size,
    "within_map_alpha": check_within_map_alpha,
    "within_map_beta": check_within_map_beta,
    "within_map_k": check_within_map_k,
    "init_std": check_init_std,
    "pool_window": check_pool_window,
    "dropout_rate": check_dropout_rate,
    "dropout_scaling": check_dropout_scaling,
    "dropout_on": check_dropout_on,
    "conv1_padding": check_conv1_padding,
    "lrn_across_towers": check_lrn_across_towers,
    "num_classes": check_num_classes,
    "init": check_init,
    "grouped_conv": check_grouped_conv,
    "kernels": check_kernels,
    "compute_dtype": check_compute_dtype,
    "remove_conv": check_remove_conv,
    "extra_conv": check_extra_conv,
    "extra_conv_sees": check_extra_conv_sees,
}


# --- Augmentation checks (§2, §4.1) ------------------------------------------------------------

_S, _CROP, _N = 12, 8, 64


def _stats():
    return random_stats(0, _S)


def _augment(step=0, steps_per_epoch=None, **switch):
    cfg = alexnet_config.get_augment_config()
    cfg.update(dict(random_crop=False, flip=False, pca_color=False))
    cfg.update(switch)
    images = np.random.default_rng(1).integers(0, 256, (_N, _S, _S, 3), dtype=np.uint8)
    out = augment.train_views(
        jax.random.key(3), images, _stats(), cfg, _CROP, step=step, steps_per_epoch=steps_per_epoch
    )
    return images.astype(np.float64), np.asarray(out, np.float64), cfg


def _centre(x):
    o = (_S - _CROP) // 2
    return x[:, o : o + _CROP, o : o + _CROP]


def check_mean():
    mean = _stats().mean_image.astype(np.float64)
    for mode, subtract in (
        ("image", mean),
        ("channel", mean.mean(axis=(0, 1))),
        ("fixed", np.array([10.0, 20.0, 30.0])),
        ("none", 0.0),
    ):
        fixed = dict(mean_rgb=(10.0, 20.0, 30.0)) if mode == "fixed" else {}
        images, out, _ = _augment(mean=mode, **fixed)
        want = _centre(images - subtract)
        assert rel(out, want) < 1e-6, mode
        if mode != "image":
            assert rel(_centre(images - mean), want) > 1e-3


def check_random_crop():
    images, out, _ = _augment(random_crop=True, mean="none")
    offsets = set()
    for b in range(_N):
        hits = [
            (i, j)
            for i in range(_S - _CROP + 1)
            for j in range(_S - _CROP + 1)
            if np.array_equal(out[b], images[b, i : i + _CROP, j : j + _CROP])
        ]
        assert hits, f"image {b} is no {_CROP}x{_CROP} window of its input"
        offsets.add(hits[0])
    assert len(offsets) > 10  # 25 possible offsets, 64 images: the crops are not all central
    _, centred, _ = _augment(random_crop=False, mean="none")
    np.testing.assert_array_equal(centred, _centre(images))


def check_flip():
    images, out, _ = _augment(flip=True, mean="none")
    base = _centre(images)
    mirrored = np.array([np.array_equal(o, b[:, ::-1]) for o, b in zip(out, base)])
    same = np.array([np.array_equal(o, b) for o, b in zip(out, base)])
    assert np.all(mirrored | same) and 16 < mirrored.sum() < 48  # p = 1/2 over 64 images
    _, unflipped, _ = _augment(flip=False, mean="none")
    np.testing.assert_array_equal(unflipped, base)


def _pca_alphas(pca_std):
    images, out, _ = _augment(pca_color=True, pca_std=pca_std, mean="none")
    shift = out - _centre(images)
    per_image = shift[:, :1, :1, :]
    np.testing.assert_allclose(shift, np.broadcast_to(per_image, shift.shape), atol=1e-3)
    stats = _stats()
    # shift = eigvecs @ (alpha * sqrt(eigvals)): recover alpha (cuda-convnet2's scale, §4.1).
    return per_image[:, 0, 0, :] @ stats.pca_eigvecs / np.sqrt(stats.pca_eigvals)


def check_pca_color():
    alphas = _pca_alphas(0.1)
    assert 0.07 < alphas.std() < 0.13
    images, out, _ = _augment(pca_color=False, mean="none")
    np.testing.assert_array_equal(out, _centre(images))


def check_pca_std():
    assert 0.35 < _pca_alphas(0.5).std() < 0.65


def _check_end_epoch(name, **on):
    """With `<name>_end_epoch=2` and 3 steps per epoch: steps 0-5 augment exactly as without an
    end epoch, steps 6 and 7 exactly as with the augmentation off; a traced step too."""
    field = f"{name}_end_epoch"
    images, always, _ = _augment(**{name: True}, **on)
    _, off, _ = _augment(**on)
    assert rel(always, off) > 1e-3  # the augmentation does something to these images
    for step, want in ((0, always), (5, always), (6, off), (7, off)):
        _, out, _ = _augment(step=step, steps_per_epoch=3, **{name: True, field: 2}, **on)
        np.testing.assert_array_equal(out, want, err_msg=f"step {step}")
    # Under jit with the step as an argument (as the training step passes state.step).
    cfg = alexnet_config.get_augment_config()
    cfg.update(dict(random_crop=False, flip=False, pca_color=False))
    cfg.update({**on, name: True, field: 2})
    views = jax.jit(
        lambda step: augment.train_views(
            jax.random.key(3), images.astype(np.uint8), _stats(), cfg, _CROP, step=step,
            steps_per_epoch=3,
        )
    )  # fmt: skip
    # (jit may fuse the colour shift's arithmetic differently: float rounding only)
    np.testing.assert_allclose(np.asarray(views(jnp.int32(7)), np.float64), off, atol=1e-4)
    np.testing.assert_allclose(np.asarray(views(jnp.int32(1)), np.float64), always, atol=1e-4)
    for bad, message in (
        (dict(**{name: False, field: 2}), "is off"),
        (dict(**{name: True, field: -2}), field),
    ):
        with pytest.raises(ValueError, match=message):
            _augment(steps_per_epoch=3, **{**on, **bad})
    with pytest.raises(ValueError, match="steps per epoch"):
        _augment(**{name: True, field: 2}, **on)


def check_random_crop_end_epoch():
    _check_end_epoch("random_crop", mean="none")


def check_flip_end_epoch():
    _check_end_epoch("flip", mean="none")


def check_pca_color_end_epoch():
    _check_end_epoch("pca_color", mean="none")


def check_mean_rgb():
    images, out, _ = _augment(mean="fixed", mean_rgb=(123.68, 116.78, 103.94))
    want = _centre(images - np.array([123.68, 116.78, 103.94]))
    assert_switch(out, want, _centre(images), tol=1e-6)
    eval_out = augment.eval_views(
        images.astype(np.uint8), None, _augment_cfg(mean="fixed", mean_rgb=(1.0, 2.0, 3.0)),
        _CROP, ten_crop=False,
    )  # fmt: skip
    assert rel(eval_out, _centre(images - np.array([1.0, 2.0, 3.0]))) < 1e-6
    with pytest.raises(ValueError, match="augment.mean_rgb"):  # ignored without 'fixed'
        augment.check_augment_config(_augment_cfg(mean="image", mean_rgb=(1.0, 2.0, 3.0)))


def check_std_rgb():
    std = np.array([58.395, 57.12, 57.375])  # torchvision's std x 255
    mean = np.array([123.675, 116.28, 103.53])
    cfg = dict(mean="fixed", mean_rgb=tuple(mean), std_rgb=tuple(std))
    images, out, _ = _augment(**cfg)
    assert_switch(out, _centre((images - mean) / std), _centre(images - mean), tol=1e-6)
    eval_out = augment.eval_views(images.astype(np.uint8), None, _augment_cfg(**cfg), _CROP, True)
    ten = np.asarray(eval_out, np.float64)
    assert rel(ten[:, 4], _centre((images - mean) / std)) < 1e-6  # the centre patch
    with pytest.raises(ValueError, match="augment.std_rgb"):
        augment.check_augment_config(_augment_cfg(std_rgb=(1.0, 0.0, 1.0)))


def _mean_file_views(tmp: Path, mean: str, layout: str, array: np.ndarray):
    """(images, training views) with the statistics `input_pipeline` gives for a mean file."""
    from alexnet_jax import input_pipeline

    np.save(tmp / "mean.npy", array)
    config = alexnet_config.get_config()
    config.resize_size, config.image_size = _S, _CROP
    off = dict(random_crop=False, flip=False, pca_color=False)
    config.augment.update(dict(off, mean=mean, mean_file=str(tmp / "mean.npy")))
    config.augment.mean_file_layout = layout
    stats = input_pipeline.eval_data_stats(config)
    images = np.random.default_rng(1).integers(0, 256, (_N, _S, _S, 3), dtype=np.uint8)
    out = augment.train_views(jax.random.key(3), images, stats, config.augment, _CROP)
    return images.astype(np.float64), np.asarray(out, np.float64)


def _bgr_chw(seed=5):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(lo, lo + 20, (_S, _S)) for lo in (100, 115, 130)])


def check_mean_file():
    import tempfile

    bgr = _bgr_chw()
    rgb = bgr[::-1].transpose(1, 2, 0)  # Caffe's (3, H, W) B, G, R -> (H, W, 3) R, G, B
    with tempfile.TemporaryDirectory() as tmp:
        images, out = _mean_file_views(Path(tmp), "image", "caffe", bgr)
        assert_switch(out, _centre(images - rgb), _centre(images - _stats().mean_image), tol=1e-6)
        images, out = _mean_file_views(Path(tmp), "channel", "caffe", bgr)
        assert rel(out, _centre(images - rgb.mean(axis=(0, 1)))) < 1e-6


def check_mean_file_layout():
    import tempfile

    bgr = _bgr_chw()
    rgb = bgr[::-1].transpose(1, 2, 0)
    with tempfile.TemporaryDirectory() as tmp:
        images, out = _mean_file_views(Path(tmp), "image", "hwc_rgb", rgb)
        # read as Caffe's layout the same numbers would be B, G, R: the channels reversed
        assert_switch(out, _centre(images - rgb), _centre(images - rgb[..., ::-1]), tol=1e-6)
        with pytest.raises(ValueError, match="mean_file_layout='caffe' expects"):
            _mean_file_views(Path(tmp), "image", "caffe", rgb)


def _augment_cfg(**switch):
    cfg = alexnet_config.get_augment_config()
    cfg.update(switch)
    return cfg


AUGMENT_CHECKS = {
    "mean_rgb": check_mean_rgb,
    "mean_file": check_mean_file,
    "mean_file_layout": check_mean_file_layout,
    "std_rgb": check_std_rgb,
    "random_crop_end_epoch": check_random_crop_end_epoch,
    "flip_end_epoch": check_flip_end_epoch,
    "pca_color_end_epoch": check_pca_color_end_epoch,
    "mean": check_mean,
    "random_crop": check_random_crop,
    "flip": check_flip,
    "pca_color": check_pca_color,
    "pca_std": check_pca_std,
}


# --- Optimizer checks (§5) ---------------------------------------------------------------------


def _opt_config(**switch):
    c = alexnet_config.get_config().optimizer
    c.update(switch)
    return c


_W0 = {"dense": {"kernel": np.array([1.0, -2.0], np.float32), "bias": np.array([0.5], np.float32)}}
_GRADS = [
    {"dense": {"kernel": np.array([g, -g], np.float32), "bias": np.array([g], np.float32)}}
    for g in (1.0, 0.5, -0.25)
]


def _updates(c, rates):
    """Parameters after len(rates) steps with these rates and _GRADS."""
    tx = optim.create_optimizer(c)
    params = jax.tree.map(jnp.asarray, _W0)
    state = tx.init(params)
    for lr, g in zip(rates, _GRADS):
        state = optim.set_learning_rate(state, lr)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return jax.tree.map(np.asarray, params)


def _paper_ref(rates, momentum=0.9, decay=5e-4, decay_bias=True, rule="paper"):
    """§5 by hand: v <- m v - d lr w - lr g, w <- w + v ('optax': u <- m u + g + d w, w -= lr u)."""
    out = {}
    for leaf in ("kernel", "bias"):
        w = _W0["dense"][leaf].astype(np.float64)
        v = np.zeros_like(w)
        d = decay if (leaf == "kernel" or decay_bias) else 0.0
        for lr, g in zip(rates, _GRADS):
            g = g["dense"][leaf]
            if rule == "paper":
                v = momentum * v - d * lr * w - lr * g
                w = w + v
            else:
                v = momentum * v + g + d * w
                w = w - lr * v
        out[leaf] = w
    return out


def _assert_params(got, want, unswitched):
    got = np.concatenate([got["dense"]["kernel"], got["dense"]["bias"]])
    want = np.concatenate([want["kernel"], want["bias"]])
    unswitched = np.concatenate([unswitched["kernel"], unswitched["bias"]])
    assert_switch(got, want, unswitched, tol=1e-6)


_RATES = [0.1, 0.1, 0.01]  # a rate change at the third step


def check_learning_rate():
    # The configured rate is the one create_optimizer starts with.
    tx = optim.create_optimizer(_opt_config(learning_rate=0.25))
    assert float(optim.get_learning_rate(tx.init(_W0))) == 0.25


def check_momentum():
    _assert_params(
        _updates(_opt_config(momentum=0.5), _RATES),
        _paper_ref(_RATES, momentum=0.5),
        _paper_ref(_RATES, momentum=0.9),
    )


def check_weight_decay():
    _assert_params(
        _updates(_opt_config(weight_decay=0.1), _RATES),
        _paper_ref(_RATES, decay=0.1),
        _paper_ref(_RATES, decay=5e-4),
    )


def check_update_rule():
    for rule, other in (("paper", "optax"), ("optax", "paper")):
        _assert_params(
            _updates(_opt_config(update_rule=rule, weight_decay=0.1), _RATES),
            _paper_ref(_RATES, decay=0.1, rule=rule),
            _paper_ref(_RATES, decay=0.1, rule=other),
        )


def check_weight_decay_on():
    _assert_params(
        _updates(_opt_config(weight_decay_on="weights", weight_decay=0.1), _RATES),
        _paper_ref(_RATES, decay=0.1, decay_bias=False),
        _paper_ref(_RATES, decay=0.1, decay_bias=True),
    )


def _rates(c, errors=(), steps=12, steps_per_epoch=2, eval_every=1):
    """The rate each of `steps` updates of the optimizer used; errors[i] is the evaluation after
    step i, fed to the plateau rule as the training loop does (which then sets the rate)."""
    tx = optim.create_optimizer(c, steps_per_epoch=steps_per_epoch, total_steps=steps)
    plateau = optim.Plateau(c) if c.schedule == "plateau" else None
    params = {"w": jnp.zeros(2)}
    state, out = tx.init(params), []
    for step in range(steps):
        _, state = tx.update({"w": jnp.ones(2)}, state, params)
        out.append(float(optim.get_learning_rate(state)))
        if plateau is not None and step < len(errors) and plateau.on_eval(step + 1, errors[step]):
            state = optim.set_learning_rate(state, plateau.learning_rate)
    return out


_STALL = [0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]


def _plateau_ref(errors, lr=0.01, factor=0.1, patience=2, max_drops=3, min_delta=0.0, steps=12):
    """Rates by hand: a drop after `patience` evaluations in a row without a new best."""
    rates, best, bad, drops = [], None, 0, 0
    for step in range(steps):
        rates.append(lr * factor**drops)
        if step < len(errors):
            e = errors[step]
            if best is None or e < best - min_delta:
                best, bad = e, 0
            else:
                bad += 1
                if bad >= patience and drops < max_drops:
                    drops, bad = drops + 1, 0
    return rates


def _assert_rates(got, want, unswitched):
    assert np.allclose(got, want, rtol=1e-6), (got, want)
    assert not np.allclose(unswitched, want), "check cannot tell the switch apart"


def check_schedule():
    lr = 0.01
    _assert_rates(_rates(_opt_config(schedule="constant"), _STALL), [lr] * 12, _plateau_ref(_STALL))
    _assert_rates(_rates(_opt_config(schedule="plateau"), _STALL), _plateau_ref(_STALL), [lr] * 12)
    step = _opt_config(schedule="step", step_epochs=(2, 4))  # boundaries at steps 4 and 8
    want = [lr] * 4 + [lr * 0.1] * 4 + [lr * 0.01] * 4
    _assert_rates(_rates(step), want, [lr] * 12)
    cosine = [0.5 * lr * (1 + math.cos(math.pi * s / 12)) for s in range(12)]
    _assert_rates(_rates(_opt_config(schedule="cosine")), cosine, [lr] * 12)


def check_plateau_factor():
    got = _rates(_opt_config(plateau_factor=0.5), _STALL)
    _assert_rates(got, _plateau_ref(_STALL, factor=0.5), _plateau_ref(_STALL))


def check_plateau_patience():
    got = _rates(_opt_config(plateau_patience=1), _STALL)
    _assert_rates(got, _plateau_ref(_STALL, patience=1), _plateau_ref(_STALL))


def check_plateau_max_drops():
    got = _rates(_opt_config(plateau_max_drops=1), _STALL)
    _assert_rates(got, _plateau_ref(_STALL, max_drops=1), _plateau_ref(_STALL))


def check_plateau_min_delta():
    errors = [0.5, 0.45, 0.42, 0.41, 0.405, 0.4, 0.399, 0.398, 0.397, 0.396, 0.395]
    got = _rates(_opt_config(plateau_min_delta=0.02), errors)
    _assert_rates(got, _plateau_ref(errors, min_delta=0.02), _plateau_ref(errors))


def check_step_epochs():
    got = _rates(_opt_config(schedule="step", step_epochs=(1, 5)))
    lr = 0.01
    _assert_rates(got, [lr] * 2 + [lr * 0.1] * 8 + [lr * 0.01] * 2, [lr] * 12)


def check_step_factor():
    got = _rates(_opt_config(schedule="step", step_epochs=(3,), step_factor=0.5))
    _assert_rates(got, [0.01] * 6 + [0.005] * 6, [0.01] * 6 + [0.001] * 6)


def check_manual_schedule():
    lr = 0.01
    c = _opt_config(schedule="manual", manual_schedule=((1, 0.005), (4, 1e-4)))
    want = [lr] * 2 + [0.005] * 6 + [1e-4] * 4  # 2 steps per epoch: epochs 1 and 4 = steps 2, 8
    got = _rates(c)
    assert got == [float(np.float32(r)) for r in want], got  # looked up, not multiplied
    _assert_rates(got, want, [lr] * 12)
    for bad in (((4, 0.001), (1, 0.01)), ((1, -0.1),), ((1,),)):
        with pytest.raises(ValueError, match="manual_schedule"):
            optim.create_optimizer(_opt_config(schedule="manual", manual_schedule=bad))


# Two layers, so that per-layer rates and multipliers have something to tell apart.
_W2 = {
    "conv1": {"kernel": np.array([1.0, -2.0], np.float32), "bias": np.array([0.5], np.float32)},
    "fc8": {"kernel": np.array([0.3, 0.7], np.float32), "bias": np.array([-0.2], np.float32)},
}
_G2 = [jax.tree.map(lambda w, g=g: np.full_like(w, g), _W2) for g in (1.0, 0.5, -0.25, 2.0)]


def _run_rates(c, steps_per_epoch=2):
    """Parameters after the four _G2 steps of `create_optimizer(c)`."""
    tx = optim.create_optimizer(c, steps_per_epoch=steps_per_epoch, total_steps=4)
    params = jax.tree.map(jnp.asarray, _W2)
    state = tx.init(params)
    for g in _G2:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return jax.tree.map(lambda v: np.asarray(v, np.float64), params)


def _rates_ref(rate_of, momentum=0.9, decay=5e-4, decay_bias=True):
    """§5's update by hand with each parameter's own rate: rate_of(layer, leaf, step)."""
    out = {}
    for layer, leaves in _W2.items():
        out[layer] = {}
        for leaf, w in leaves.items():
            w, v = w.astype(np.float64), np.zeros_like(w, np.float64)
            d = decay if (leaf == "kernel" or decay_bias) else 0.0
            for step, g in enumerate(_G2):
                lr = rate_of(layer, leaf, step)
                v = momentum * v - d * lr * w - lr * g[layer][leaf]
                w = w + v
            out[layer][leaf] = w
    return out


def _assert_tree(got, want, unswitched):
    flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (got, want)]
    assert_switch(
        flat[0],
        flat[1],
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(unswitched)]),
        tol=1e-6,
    )


_WEIGHT_RATES = [0.01, 0.01, 0.001, 0.001]  # manual: a drop at epoch 1 = step 2


def _weights_drop(**switch):
    return _opt_config(schedule="manual", manual_schedule=((1, 0.001),), **switch)


def check_bias_learning_rate():
    # The 2012 code: biases at epsB=0.02 throughout while the weights' rate drops.
    got = _run_rates(_weights_drop(bias_learning_rate=0.02, weight_decay_on="weights"))

    def rate(layer, leaf, step):
        return 0.02 if leaf == "bias" else _WEIGHT_RATES[step]

    want = _rates_ref(rate, decay_bias=False)
    _assert_tree(
        got, want, _rates_ref(lambda layer, leaf, step: _WEIGHT_RATES[step], decay_bias=False)
    )
    # With decay on biases too, the bias decay is scaled by the bias rate.
    got = _run_rates(_weights_drop(bias_learning_rate=0.02))
    _assert_tree(got, _rates_ref(rate), want)
    # Under 'plateau' the rate written by the loop changes the weights only.
    c = _opt_config(bias_learning_rate=0.02)
    tx = optim.create_optimizer(c)
    state = optim.set_learning_rate(tx.init(_W2), 0.001)
    updates, _ = tx.update(_G2[0], state, _W2)
    np.testing.assert_allclose(updates["fc8"]["bias"], -0.02 * (1.0 + 5e-4 * -0.2), rtol=1e-6)
    np.testing.assert_allclose(
        updates["fc8"]["kernel"], -0.001 * (1.0 + 5e-4 * _W2["fc8"]["kernel"]), rtol=1e-6
    )
    for bad in (-0.5, -2.0):  # -1 means "follow the weights"; other negatives are errors
        with pytest.raises(ValueError, match="bias_learning_rate"):
            optim.create_optimizer(_opt_config(bias_learning_rate=bad))


def check_bias_manual_schedule():
    c = _weights_drop(bias_learning_rate=0.02, bias_manual_schedule=((1.5, 0.002),))
    got = _run_rates(c)  # epoch 1.5 = step 3

    def rate(layer, leaf, step):
        return (0.02 if step < 3 else 0.002) if leaf == "bias" else _WEIGHT_RATES[step]

    unswitched = _rates_ref(
        lambda layer, leaf, step: 0.02 if leaf == "bias" else _WEIGHT_RATES[step]
    )
    _assert_tree(got, _rates_ref(rate), unswitched)
    with pytest.raises(ValueError, match="bias_learning_rate"):
        optim.create_optimizer(_opt_config(bias_manual_schedule=((1, 0.002),)))


def check_layer_lr_multipliers():
    # conv1 frozen: unchanged after the steps, decay included; fc8 as without the multiplier.
    got = _run_rates(_opt_config(schedule="constant", layer_lr_multipliers=(("conv1", 0.0),)))
    for leaf in ("kernel", "bias"):
        np.testing.assert_array_equal(got["conv1"][leaf], _W2["conv1"][leaf])
    plain = _rates_ref(lambda *_: 0.01)
    _assert_tree(got["fc8"], plain["fc8"], _rates_ref(lambda *_: 0.0)["fc8"])
    # Epoch-keyed, on one leaf: conv1's kernel at a tenth from epoch 1 (step 2), 0 from epoch 1.5.
    c = _weights_drop(layer_lr_multipliers=(("conv1/kernel", ((1, 0.1), (1.5, 0.0))),))
    got = _run_rates(c)

    def rate(layer, leaf, step):
        m = {0: 1.0, 1: 1.0, 2: 0.1, 3: 0.0}[step] if (layer, leaf) == ("conv1", "kernel") else 1.0
        return _WEIGHT_RATES[step] * m

    _assert_tree(got, _rates_ref(rate), _rates_ref(lambda layer, leaf, step: _WEIGHT_RATES[step]))
    # With a bias rate: the multiplier scales the bias's own rate.
    c = _weights_drop(bias_learning_rate=0.02, layer_lr_multipliers=(("conv1", 0.5),))
    got = _run_rates(c)

    def both(layer, leaf, step):
        base = 0.02 if leaf == "bias" else _WEIGHT_RATES[step]
        return base * (0.5 if layer == "conv1" else 1.0)

    _assert_tree(
        got,
        _rates_ref(both),
        _rates_ref(lambda layer, leaf, step: 0.02 if leaf == "bias" else _WEIGHT_RATES[step]),
    )
    with pytest.raises(ValueError, match="selects no parameter"):
        optim.create_optimizer(_opt_config(layer_lr_multipliers=(("conv9", 0.0),))).init(_W2)
    with pytest.raises(ValueError, match="layer_lr_multipliers"):
        optim.create_optimizer(_opt_config(layer_lr_multipliers=(("conv1", -1.0),)))


OPTIMIZER_CHECKS = {
    "manual_schedule": check_manual_schedule,
    "bias_learning_rate": check_bias_learning_rate,
    "bias_manual_schedule": check_bias_manual_schedule,
    "layer_lr_multipliers": check_layer_lr_multipliers,
    "learning_rate": check_learning_rate,
    "momentum": check_momentum,
    "weight_decay": check_weight_decay,
    "update_rule": check_update_rule,
    "weight_decay_on": check_weight_decay_on,
    "schedule": check_schedule,
    "plateau_factor": check_plateau_factor,
    "plateau_patience": check_plateau_patience,
    "plateau_max_drops": check_plateau_max_drops,
    "plateau_min_delta": check_plateau_min_delta,
    "step_epochs": check_step_epochs,
    "step_factor": check_step_factor,
}

CHECKS = {
    "model": MODEL_CHECKS, "augment": AUGMENT_CHECKS, "optimizer": OPTIMIZER_CHECKS,
    "init_from": INIT_FROM_CHECKS,
}  # fmt: skip


# --- The tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _free_the_cached_networks():
    """The cached parameters and intermediates (a GB or so) go when this module's tests end."""
    yield
    _params.cache_clear()
    _run.cache_clear()


@pytest.mark.parametrize("section", SECTIONS)
def test_every_documented_field_has_a_check(section):
    missing = [f for f in documented_fields(section) if f not in CHECKS[section]]
    assert not missing, f"docs document config.{section} fields without a check: {missing}"


@pytest.mark.parametrize("section", SECTIONS)
def test_every_config_field_is_documented(section):
    fields = set(alexnet_config.get_config()[section].keys())
    missing = sorted(fields - set(documented_fields(section)))
    assert not missing, f"config.{section} fields missing from the docs' table: {missing}"


# The full-size AlexNets take seconds per field: the fast tier checks the CIFAR nets only, and
# of those not the fields that build or train several nets ('name', 'init').
def _model_switch_params() -> list:
    return [
        pytest.param(field, network, marks=pytest.mark.slow)
        if network.startswith("alexnet") or field in ("name", "init")
        else (field, network)
        for network in NETWORKS
        for field in documented_fields("model")
    ]


@pytest.mark.parametrize("field, network", _model_switch_params())
def test_model_switch(field, network):
    MODEL_CHECKS[field](network)


@pytest.mark.parametrize("field", documented_fields("augment"))
def test_augment_switch(field):
    AUGMENT_CHECKS[field]()


@pytest.mark.parametrize("field", documented_fields("optimizer"))
def test_optimizer_switch(field):
    OPTIMIZER_CHECKS[field]()


# 'source' and 'format' write and read full-size AlexNet weight files, 'step' trains a run.
@pytest.mark.parametrize(
    "field",
    [
        pytest.param(f, marks=pytest.mark.slow) if f in ("source", "format", "step") else f
        for f in documented_fields("init_from")
    ],
)
def test_init_from_switch(field, tmp_path):
    INIT_FROM_CHECKS[field](tmp_path)
