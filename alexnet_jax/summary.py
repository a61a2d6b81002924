"""Per-layer table of a configured network: towers, kernel shapes, output shapes, parameters and
multiply-adds (paper §3.5, Figure 2).

  python -m alexnet_jax.summary --config=configs/alexnet.py [--config.image_size=227]

Shapes come from tracing the real model (`jax.eval_shape`), not from a second description of it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from absl import app
from ml_collections import config_flags

from alexnet_jax import architecture, models


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table."""

    layer: str
    towers: str  # how many towers hold the layer and what each sees
    kernel: str  # one tower's kernel, e.g. '5x5x48 -> 128'
    output: tuple[int, ...]  # per image, all towers together
    params: int
    macs: int  # multiply-adds per image


def layer_table(config: Any) -> list[Row]:
    """Traces `config.model` on one `config.image_size` image and returns the table's rows."""
    _, params, sown = models.trace(config)
    size = config.image_size
    outputs = {name.removesuffix("_out"): shape for name, shape in sown.items()}
    alexnet = config.model.name == "alexnet"
    layers = architecture.model_layers(config.model) if alexnet else ()
    sees = {layer.name: layer.sees for layer in layers}
    removed = {layer.name: layer for layer in layers if layer.removed}
    order = [layer.name for layer in layers] if alexnet else list(params)

    rows = [Row("input", "", "", (size, size, 3), 0, 0)]
    for name in order:
        if name in removed:  # model.remove_conv: the input passes on; the pooling stays (§7)
            rows.append(Row(name, "removed", "(model.remove_conv)", rows[-1].output, 0, 0))
            pool = f"pool{name[-1]}"
            if removed[name].pool and pool in outputs:
                rows.append(Row(pool, "", "max 3/2", outputs[pool], 0, 0))
            continue
        p = params[name]
        kernel = p["kernel"].shape
        count = sum(math.prod(x.shape) for x in jax.tree.leaves(p))
        out = outputs.get(name, outputs.get("logits"))
        if alexnet:
            towers, kernel = kernel[0], kernel[1:]
            where = "image" if name == "conv1" else sees[name]
            tower_note = f"{towers} x {where}" if towers > 1 else "1"
        else:
            towers, tower_note = 1, ""
        if len(kernel) == 4 and name.startswith("local"):  # (oh, ow, kh*kw*cin, cout), unshared
            kdesc, macs = f"local {kernel[2]} -> {kernel[3]}", math.prod(kernel)
        elif len(kernel) == 4:  # (kh, kw, cin, cout)
            kdesc = f"{kernel[0]}x{kernel[1]}x{kernel[2]} -> {kernel[3]}"
            macs = math.prod(out[:2]) * math.prod(kernel) * towers
        else:  # dense (cin, cout)
            kdesc, macs = f"{kernel[0]} -> {kernel[1]}", math.prod(kernel) * towers
        rows.append(Row(name, tower_note, kdesc, out, count, macs))
        if alexnet:
            rows += _norm_rows(config.model, name, outputs)
        pool = f"pool{name[-1]}"
        if pool in outputs:
            rows.append(Row(pool, "", "max 3/2" if alexnet else "3/2", outputs[pool], 0, 0))
    return rows


def _norm_rows(m: Any, name: str, outputs: dict[str, tuple[int, ...]]) -> list[Row]:
    """The response normalizations after AlexNet layer `name`, with their per-term constants."""
    rows = []
    where = " (before the ReLU)" if name in m.lrn_before_relu else ""
    lrn = f"lrn{name[-1]}"
    if lrn in outputs:
        kind = "cross-map" if m.lrn_kind == "cross_map" else "within-map"
        size = m.lrn_size if m.lrn_kind == "cross_map" else f"{m.lrn_size}x{m.lrn_size}"
        desc = f"{kind} {size}, a={models.lrn_alpha(m):.3g} k={m.lrn_k:g} b={m.lrn_beta:g}"
        towers = "per tower" if m.lrn_kind == "cross_map" else "per map"
        if m.lrn_kind == "cross_map" and m.lrn_across_towers:
            towers = "all towers"
        rows.append(Row(lrn, towers, desc + where, outputs[lrn], 0, 0))
    wnorm = f"wnorm{name[-1]}"
    if wnorm in outputs:
        alpha = models.per_term_alpha(
            m.within_map_alpha, m.within_map_size, "within_map", m.lrn_alpha_convention
        )
        size = m.within_map_size
        desc = (
            f"within-map {size}x{size}, a={alpha:.3g} k={m.within_map_k:g} b={m.within_map_beta:g}"
        )
        rows.append(Row(wnorm, "per map", desc + where, outputs[wnorm], 0, 0))
    return rows


def format_table(rows: list[Row], title: str = "") -> str:
    """The rows as an aligned text table with totals."""
    header = ("layer", "towers", "kernel (per tower)", "output", "params", "mult-adds")
    body = [
        (
            r.layer,
            r.towers,
            r.kernel,
            "x".join(map(str, r.output)),
            f"{r.params:,}" if r.params else "",
            f"{r.macs:,}" if r.macs else "",
        )
        for r in rows
    ]
    total_p = sum(r.params for r in rows)
    total_m = sum(r.macs for r in rows)
    body.append(("total", "", "", "", f"{total_p:,}", f"{total_m:,}"))
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    right = {3, 4, 5}

    def fmt(cells):
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    lines = [title] if title else []
    lines += [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(b) for b in body[:-1]] + [fmt(["-" * w for w in widths]), fmt(body[-1])]
    lines.append(
        f"{total_p:,} parameters; {total_m / 1e6:,.1f}M multiply-adds "
        f"({2 * total_m / 1e9:.2f} GFLOP) per image, forward."
    )
    return "\n".join(lines)


def describe(config: Any) -> str:
    m = config.model
    name = m.name
    what = f"{name}, towers={m.towers}" if name == "alexnet" else name
    if name == "alexnet" and m.towers == 1:
        what += f" ({m.get('one_tower_kernels', 'half')} kernels)"
    if name == "alexnet":
        before, after = architecture.conv1_pads(config.image_size, m.conv1_padding)
        if m.conv1_padding == -1:
            rule = (
                f"conv1 output rounded up as in cuda-convnet2 ({after} zero pixels past the "
                "bottom/right edge)"
                if after
                else "no padding needed"
            )
        else:
            rule = f"conv1 input padded with {before} zero pixels on every side"
        what += f"; input {config.image_size}x{config.image_size}, {rule}"
    return what


_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (e.g. configs/alexnet.py).")


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    try:
        table = format_table(layer_table(config), title=describe(config))
    except ValueError as e:  # a config the network refuses: its one-line reason, no traceback
        raise SystemExit(f"error: {e}") from None
    print(table)


if __name__ == "__main__":
    app.run(main)
