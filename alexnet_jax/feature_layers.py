"""The layers a configured network offers as features: names, shapes and what each one is.

Everything comes from tracing the network itself (`jax.eval_shape`, nothing computed): the
values it sows (`self.sow('intermediates', key, x)`), their order and shapes. The names
`--layers` accepts (`available_layers`): a layer's name (`conv1`, `fc7`, `local3`) is its
output after the activation, `<layer>_pre` before it, the last layer's name (`fc8`, `fc10`)
its logits, an operation's name (`pool1`, `lrn1`, `wnorm2`) its output, and every sown key by
its own name (`fc7_out`, `conv1_out`). Each is described in words by one rule per kind of key
(docs/transfer.md lists them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from alexnet_jax import architecture, models
from alexnet_jax.feature_files import FeaturesError


def sown_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """{key the network sows: one example's shape}, in the order the network computes them
    (traced by `jax.eval_shape`: nothing is computed)."""
    return models.trace(config)[2]


def _unsown(model: Any, m: Any) -> dict[tuple[str, str], tuple]:
    """{(layer, 'before_<kind>' or 'after_<kind>'): a step the network takes there without
    sowing it, as `_describe`'s (None, 'unsown', words before it, words once done)}: AlexNet's
    dropout on a layer's outputs (§4.2), a CIFAR net's LRN (before or after its pooling)."""
    if m.name != "alexnet":
        return {
            (spec.name, "before_out" if spec.lrn_before_pool else "after_pool"): (
                None,
                "unsown",
                "LRN",
                "LRN",
            )
            for spec in model.layers
            if spec.lrn and model.lrn
        }
    if not m.dropout_rate or m.dropout_on != "outputs":
        return {}
    done = (
        f"dropout's test-time scaling x {1 - m.dropout_rate:g} (§4.2)"
        if m.dropout_scaling == "test_time"
        else "dropout (inverted: the identity at test time)"
    )
    dropped = [layer.name for layer in architecture.model_layers(m) if layer.dropout]
    return {(name, "before_out"): (None, "unsown", "dropout", done) for name in dropped}


def _describe(keys: Sequence[str], layers: Sequence[str], model: Any, m: Any) -> dict[str, str]:
    """{sown key: what it is in words}, one rule per kind of key, read in the order the network
    sows them: `<layer>_pre` is before the activation, `<layer>_act` after it, `lrnN_out` and
    `wnormN_out` after that normalization, `<layer>_out` what the layer hands on, `poolN_out`
    the pooled output, `<layer>_in` an fc layer's input after dropout, `logits` the last
    layer's output. Each says what its layer has done so far and what follows."""
    act, alexnet = m.activation, m.name == "alexnet"
    window = m.pool_window if alexnet else 3
    norm = "LRN" if m.lrn_kind == "cross_map" else "within-map normalization"
    words = {"act": act, "lrn": norm, "wnorm": "within-map normalization"}
    pooling = {spec.name: f"{spec.pool} pooling" for spec in getattr(model, "layers", ())}
    owner: dict[str, str] = {}  # the layer of an operation's digit: conv6's, not fc6's
    for name in (*m.get("remove_conv", ()), *layers):
        owner.setdefault(name[-1], name)
    unsown = _unsown(model, m)
    # Each layer's steps in order: (sown key or None, kind, words before it, words once done).
    steps: dict[str, list[tuple]] = {}
    for key in keys:
        layer, _, kind = key.rpartition("_")
        if layer and layer not in layers:  # lrn1_out, wnorm2_out, pool5_out: layer N's
            layer, kind = owner.get(layer[-1], ""), layer.rstrip("0123456789")
        if not layer:  # logits
            continue
        said = pooling.get(layer, "max pooling") if kind == "pool" else words.get(kind, "")
        steps.setdefault(layer, []).extend(
            step for step in (unsown.get((layer, f"before_{kind}")), (key, kind, said, said),
                              unsown.get((layer, f"after_{kind}"))) if step
        )  # fmt: skip
    logits = next(name for name in layers if f"{name}_pre" not in keys)
    text = {"logits": f"{logits}'s output, the logits before the softmax"}
    for layer, sequence in steps.items():
        removed = all(kind != "act" for _, kind, _, _ in sequence)  # model.remove_conv
        for i, (key, kind, _, _) in enumerate(sequence):
            done = [w for _, k, _, w in sequence[: i + 1] if k not in ("in", "pre", "out", "pool")]
            rest = [(k, w) for _, k, w, _ in sequence[i + 1 :] if k not in ("in", "pre", "out")]
            upto = [w for j, (k, w) in enumerate(rest) if "pool" not in [k for k, _ in rest[:j]]]
            if kind == "in":
                text[key] = (
                    f"{layer}'s input after dropout (torchvision's placement; the identity at "
                    "test time with inverted scaling)"
                )
            elif kind == "pre":
                first = [
                    w for j, (k, w) in enumerate(rest) if "act" not in [k for k, _ in rest[:j]]
                ]
                text[key] = f"{layer} before the {' and the '.join(first)} (weights times inputs " \
                    "plus bias)"  # fmt: skip
            elif kind == "pool" and removed:
                text[key] = (
                    f"max pooling ({window}x{window}, stride 2) where {layer}'s was, of "
                    f"{layer}'s input ({layer} removed: model.remove_conv)"
                )
            elif kind == "pool":
                then = f", then {rest[0][1]}" if rest else ""
                text[key] = f"{layer}'s {sequence[i][2]} output ({window}x{window}, stride 2){then}"
            elif key is not None:
                before = f", before {' and '.join(upto)}" if upto else ""
                text[key] = f"{layer} after {' and '.join(done)}{before}"
                if kind == "act" and alexnet and layer in ("fc6", "fc7"):
                    n = layer[-1]
                    text[key] += f" (DeCAF{n}: Caffe's {layer} blob after relu{n})"
    return text


def _vocabulary(config: Any) -> tuple[dict[str, str], dict[str, str], dict[str, tuple]]:
    """({user name or sown key: sown key}, {sown key: description}, {sown key: shape}), the
    names in the order the network computes them: a layer's name is its `<layer>_act` (the
    last layer's its logits), an operation's (`pool1`, `lrn1`, `wnorm2`) its `<op>_out`."""
    model, params, shapes = models.trace(config)
    layers = list(params)
    described = _describe(list(shapes), layers, model, config.model)
    text = {k: described.get(k, f"the value the network sows as {k!r}") for k in shapes}
    by_key = {f"{name}_act": name for name in layers}
    by_key["logits"] = next(name for name in layers if f"{name}_pre" not in shapes)
    names = {}
    for key in shapes:
        stem, _, kind = key.rpartition("_")
        if key in by_key:
            names[by_key[key]] = key
        elif kind == "out" and stem not in layers:  # pool1_out, lrn1_out, wnorm2_out
            names[stem] = key
    names.update({key: key for key in shapes})
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
