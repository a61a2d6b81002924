"""A linear probe per layer: logistic regression on a network's features, C chosen on
validation data held out of the training split, the test split read once at the end.

How linearly separable the classes are in each layer's features (the question behind the
transfer experiments that followed the paper, e.g. DeCAF's fc6/fc7): for every layer, the
features of a training and a test split (`alexnet_jax.features`) are standardised with a
scaler fit on the training part only, and a multinomial logistic regression (scikit-learn,
lbfgs) is fit for each C of `--Cs` on the training split minus `--val_fraction` of it (held out
by a seeded stratified draw). The C with the lowest validation top-1 error (ties: the smaller
C) is refit on the whole training split. Only when every layer's C is chosen and refit is
anything of the test split touched (in the one-command form, only then is it extracted), and
its top-1 / top-5 errors are measured once. `events` in results.json (and events.jsonl, written
as they happen) lists every data read, C evaluation, choice, refit, test read and test
evaluation in order.

The features come from two folders written by `python -m alexnet_jax.features`, or, given a
config and a source of parameters (`--workdir`, `--weights` or `--random_init`, as that command
takes them, with `--config.<field>=<value>` overrides), are extracted here into
`--features_dir` (default `<out>/features`), `<split>/` for each split.

  python -m experiments.paper.linear_probe --config=configs/default.py \
      --workdir=/tmp/alexnet_jax_default --train_split=train --test_split=test \
      --layers=conv1,conv2,local3,local4,fc10,pool2 --out=/tmp/probe
  python -m experiments.paper.linear_probe --train_features=DIR_A --test_features=DIR_B --out=DIR
  python -m experiments.paper.linear_probe --compare=PROBE_A,PROBE_B --out=DIR   # a table of both

A bad input is one `error:` line and exit status 1; so are a training and a test folder whose
records disagree (another source, network, preprocessing, patches or layer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any

import numpy as np

from alexnet_jax import feature_files, features, orbax_quiet
from alexnet_jax.errors import first_line
from experiments import common, files

SMALL = " Top-5 error is 0 by definition with 5 classes or fewer."
DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
# What a training and a test features folder must share (their records' fields).
SAME = ("source", "model", "preprocessing", "patches")


class ProbeError(ValueError):
    """A probe that cannot run as asked (the message says why)."""


class Events:
    """The ordered log: each event numbered, kept, and appended to `path` as it happens."""

    def __init__(self, path: str | None = None):
        self.events: list[dict[str, Any]] = []
        self._path = path
        if path:
            open(path, "w").close()

    def __call__(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"seq": len(self.events), "event": event, **fields}
        self.events.append(entry)
        if self._path:
            with open(self._path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        return entry


def read_features(folder: str, layer: str, role: str, log: Events):
    """Every read of features goes through here: (x, labels, record) of one layer of a
    features folder, logged first as a 'read' event of `role` ('train' or 'test')."""
    log("read", role=role, folder=os.path.abspath(folder), layer=layer)
    return feature_files.load_features(folder, layer)


def topk_error(probs: np.ndarray, classes: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The fraction of `labels` not among the k classes of highest probability (0 when there
    are k classes or fewer: the paper's top-5 on a 10-class set is near 0 for that reason)."""
    k = min(k, probs.shape[1])
    top = classes[np.argsort(-probs, axis=1, kind="stable")[:, :k]]
    missed = ~np.any(top == labels[:, None], axis=1)
    return np.count_nonzero(missed) / len(labels)


def fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    """(scaler, classifier, iterations) of a standardised multinomial logistic regression."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded as iterations == max_iter
        clf.fit(scaler.transform(x), y)
    return scaler, clf, int(np.max(clf.n_iter_))


def validation_split(labels: np.ndarray, fraction: float, seed: int):
    """(training rows, validation rows): `fraction` of the rows, drawn with `seed`, stratified
    by label when every class has two examples or more."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ProbeError(f"--val_fraction must be between 0 and 1, got {fraction}.")
    rows = np.arange(len(labels))
    counts = np.unique(labels, return_counts=True)[1]
    stratify = labels if counts.min() >= 2 else None
    try:
        train, val = train_test_split(
            rows, test_size=fraction, random_state=seed, stratify=stratify
        )
    except ValueError as e:
        raise ProbeError(f"cannot hold {fraction} of {len(rows)} examples out: {e}") from None
    return np.sort(train), np.sort(val)


def choose(
    x: np.ndarray, y: np.ndarray, layer: str, cs: list[float], args: Any, log: Events
) -> dict[str, Any]:
    """C for one layer from the validation split held out of the training features."""
    train, val = validation_split(y, args.val_fraction, args.seed)
    errors, iterations = {}, {}
    for c in cs:
        scaler, clf, iters = fit(x[train], y[train], c, args.max_iter)
        probs = clf.predict_proba(scaler.transform(x[val]))
        errors[c] = topk_error(probs, clf.classes_, y[val], 1)
        iterations[c] = iters
        log("evaluated", layer=layer, C=c, val_top1_error=errors[c], iterations=iters)
    best = min(cs, key=lambda c: (errors[c], c))
    log("chosen", layer=layer, C=best, val_top1_error=errors[best])
    return {
        "chosen_C": best, "val_top1_error": {repr(c): errors[c] for c in cs},
        "val_iterations": {repr(c): iterations[c] for c in cs},
        "n_train": len(train), "n_val": len(val),
    }  # fmt: skip


def _mismatch(train: dict[str, Any], test: dict[str, Any], layer: str) -> str:
    """Why a test record cannot be scored with a probe fit on the train record ('' if it can)."""
    for field in SAME:
        if train.get(field) != test.get(field):
            if field == "model":
                a, b = train.get(field) or {}, test.get(field) or {}
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                return f"they come from other networks (model fields {', '.join(diff[:5])})"
            return f"their {field} differ ({train.get(field)!r} vs {test.get(field)!r})"
    if (train.get("dataset"), train.get("split")) == (test.get("dataset"), test.get("split")):
        return f"both are the split {train.get('split')!r}: the test split must be another"
    a = next(x for x in train["layers"] if x["name"] == layer)
    b = next((x for x in test["layers"] if x["name"] == layer), None)
    if b is None:
        return f"the test features have no layer {layer!r}"
    if (a["key"], a["dim"]) != (b["key"], b["dim"]):
        return (
            f"{layer} is {a['key']} ({a['dim']}-d) in the training features, {b['key']} "
            f"({b['dim']}-d) in the test features"
        )
    return ""


def _extract(args: Any, config: Any, params: Any, source: dict, split: str, log: Events) -> str:
    """Features of `split` for every layer, written under --out/features/ (one-command form)."""
    root = args.features_dir or os.path.join(args.out, "features")
    folder = os.path.join(root, common_split_stem(split))
    log("extract", split=split, folder=os.path.abspath(folder), layers=args.layers)
    features.write_features(
        config, params, source, folder, split=split, layers=args.layers, patches=args.patches,
        max_examples=args.max_examples, overwrite=True, progress=config.progress_bar,
    )  # fmt: skip
    return folder


def common_split_stem(split: str) -> str:
    """A folder name for a split ('train[:80%]' -> 'train__80__')."""
    from alexnet_jax import splits

    return splits.split_file_stem(split)


def probe(args: Any) -> dict[str, Any]:
    """The whole probe (module docstring); returns what results.json holds."""
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    log = Events(os.path.join(args.out, "events.jsonl"))
    cs = [float(c) for c in args.Cs.split(",")] if args.Cs else list(DEFAULT_CS)
    if not cs or min(cs) <= 0:
        raise ProbeError(f"--Cs must be positive numbers, got {args.Cs!r}.")
    folders = args.train_features or args.test_features
    if folders and not (args.train_features and args.test_features):
        raise ProbeError("give both --train_features and --test_features (or neither).")
    config = params = source = None
    if not folders:
        if not args.config:
            raise ProbeError("give --train_features and --test_features, or --config and a source.")
        config = _load_config(args.config, args.overrides)
        params, source = features.load_params(
            config, workdir=args.workdir, weights=args.weights,
            weights_format=args.weights_format, random_init=args.random_init,
        )  # fmt: skip
        if config.dataset in ("digits", "synthetic"):
            config.num_workers = 0
        args.train_split = args.train_split or config.train_split
        args.test_split = args.test_split or config.get("test_split") or config.eval_split
        args.layers = args.layers.split(",") if args.layers else ["fc7"]
        args.train_features = _extract(args, config, params, source, args.train_split, log)
    elif args.layers:
        args.layers = args.layers.split(",")

    # 1. Every layer's C, from the training features alone, then the refit.
    rows, fitted, train_record = [], {}, None
    layers = args.layers or [
        x["name"] for x in feature_files.read_record(args.train_features)["layers"]
    ]
    for layer in layers:
        x, y, train_record = read_features(args.train_features, layer, "train", log)
        row = {"layer": layer, "dim": int(x.shape[1]), **choose(x, y, layer, cs, args, log)}
        scaler, clf, iters = fit(x, y, row["chosen_C"], args.max_iter)
        log("refit", layer=layer, C=row["chosen_C"], n=len(y), iterations=iters)
        entry = next(e for e in train_record["layers"] if e["name"] == layer)
        row.update(key=entry["key"], description=entry["description"], refit_iterations=iters)
        fitted[layer] = (scaler, clf)
        rows.append(row)
        del x

    # 2. Only now the test split: extracted (one-command form), read, scored once.
    if config is not None:
        args.test_features = _extract(args, config, params, source, args.test_split, log)
    test_record = None
    for row in rows:
        layer = row["layer"]
        x, y, test_record = read_features(args.test_features, layer, "test", log)
        why = _mismatch(train_record, test_record, layer)
        if why:
            raise ProbeError(
                f"{args.train_features} and {args.test_features} cannot be paired: {why}."
            )
        scaler, clf = fitted[layer]
        probs = clf.predict_proba(scaler.transform(x))
        row["test_top1_error"] = topk_error(probs, clf.classes_, y, 1)
        row["test_top5_error"] = topk_error(probs, clf.classes_, y, 5)
        row["n_test"] = len(y)
        scores = {k: row[k] for k in ("test_top1_error", "test_top5_error")}
        log("test_evaluated", layer=layer, C=row["chosen_C"], n=len(y), **scores)
    return {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": common.machine(),
        "cpu": features._machine()["cpu"],
        "train_features": os.path.abspath(args.train_features),
        "test_features": os.path.abspath(args.test_features),
        "Cs": cs,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "max_iter": args.max_iter,
        "num_classes": int(train_record["num_classes"]),
        "layers": rows,
        "provenance": {"train": train_record, "test": test_record},
        "seconds": time.perf_counter() - started,
        "events": log.events,
    }


def _load_config(path: str, overrides: list[str]) -> Any:
    """A config file's get_config() with `--config.<field>=<value>` overrides applied, as the
    alexnet_jax commands read them."""
    from absl import flags
    from ml_collections import config_flags

    holder, argv = flags.FlagValues(), ["linear_probe", f"--config={path}", *overrides]
    config_flags.DEFINE_config_file("config", path, "", flag_values=holder, sys_argv=argv)
    try:
        holder(argv)
    except flags.Error as e:
        raise ProbeError(first_line(e, with_type=False)) from None
    return holder.config


def _touches_test(event: dict[str, Any], result: dict[str, Any]) -> bool:
    """Whether an event reads, extracts or scores the test split."""
    return (
        event.get("role") == "test"
        or event["event"] == "test_evaluated"
        or (event["event"] == "extract" and event["folder"] == result["test_features"])
    )


def _describe_source(src: dict[str, Any]) -> str:
    if "workdir" in src:
        return f"the run `{src['workdir']}` at step {src['checkpoint_step']}"
    if "sha256" in src:
        return f"`{src['weights']}` ({src['format']}, sha256 {src['sha256'][:12]}...)"
    if "random_init" in src:
        return f"the random initialisation ('{src['init']}', seed {src['seed']})"
    return f"the parameters {json.dumps(src)}"


def compare(folders: list[str], command: str) -> str:
    """A table of several probes' test errors per layer (their results.json)."""
    results = []
    for folder in folders:
        try:
            with open(os.path.join(folder, "results.json")) as f:
                results.append(json.load(f))
        except (OSError, ValueError) as e:
            line = first_line(e, with_type=False)
            raise ProbeError(f"{folder}: no probe results ({line}).") from None
    layers = list(dict.fromkeys(r["layer"] for result in results for r in result["layers"]))
    rows = []
    for layer in layers:
        cells = [next((r for r in result["layers"] if r["layer"] == layer), None)
                 for result in results]  # fmt: skip
        dim = next(c["dim"] for c in cells if c)
        rows.append([f"{layer} ({dim:,}-d)"] + [
            f"{100 * c['test_top1_error']:.2f} (C {c['chosen_C']:g})" if c else "-" for c in cells
        ])  # fmt: skip
    names = [os.path.basename(os.path.normpath(f)) for f in folders]
    table = common.markdown_table(
        ["layer"] + [f"{n}: test top-1 err % (chosen C)" for n in names], rows
    )
    listed = "\n".join(
        f"- {n} ([results]({n}/results.md)): features of "
        f"{_describe_source(r['provenance']['train']['source'])}; `{r['command']}`"
        for n, r in zip(names, results)
    )
    first = results[0]
    return (
        f"# Linear probes compared\n\n{listed}\n\n{table}\n\n"
        f"{first['provenance']['test']['examples']} test images: one is "
        f"{100 / first['provenance']['test']['examples']:.2f}%. Top-5 errors and the "
        "validation errors of every C are in each probe's results.md.\n\n"
        f"`{command}`; {first['machine']}; CPU {first['cpu']}.\n"
    )


def markdown(result: dict[str, Any]) -> str:
    """The table per layer, what it was measured on, and the order of events."""
    p = result["provenance"]["train"]
    source = _describe_source(p["source"])
    cs = result["Cs"]
    rows = [
        [
            f"{r['layer']} (`{r['key']}`)", f"{r['dim']:,}", f"{r['chosen_C']:g}",
            " / ".join(f"{100 * r['val_top1_error'][repr(c)]:.1f}" for c in cs),
            f"{100 * r['test_top1_error']:.2f}", f"{100 * r['test_top5_error']:.2f}",
            f"{r['n_train']} / {r['n_val']} / {r['n_test']}",
        ]
        for r in result["layers"]
    ]  # fmt: skip
    table = common.markdown_table(
        ["layer", "D", "chosen C", f"val top-1 err % for C = {', '.join(f'{c:g}' for c in cs)}",
         "test top-1 err %", "test top-5 err %", "n train / val / test"], rows,
    )  # fmt: skip
    what = "\n".join(f"- {r['layer']}: {r['description']}" for r in result["layers"])
    chosen = [e["seq"] for e in result["events"] if e["event"] == "chosen"]
    first_test = min(e["seq"] for e in result["events"] if _touches_test(e, result))
    small = result["num_classes"] <= 5
    return (
        f"# Linear probe per layer: {p['model']['model.name']} on {p['dataset']}\n\n"
        f"Features of {source}, {p['patches']} patch"
        f"{'' if p['patches'] == 'centre' else 'es (mean)'}; training split "
        f"'{p['split']}', test split '{result['provenance']['test']['split']}'. Multinomial "
        "logistic regression (scikit-learn lbfgs, max_iter "
        f"{result['max_iter']}) on standardised features (scaler fit on the training part "
        f"only); C chosen on {result['val_fraction']:.0%} of the training split held out "
        f"(stratified, seed {result['seed']}), refit on the whole training split, then the "
        f"test split read and scored once (events: last choice #{max(chosen)}, first test "
        f"event #{first_test}). One validation image is "
        f"{100 / result['layers'][0]['n_val']:.2f}%, one test image "
        f"{100 / result['layers'][0]['n_test']:.2f}%.{SMALL if small else ''}"
        f"\n\n{table}\n\nLayers:\n{what}\n\n"
        f"Command: `{result['command']}`\n\nMachine: {result['machine']}; CPU {result['cpu']}; "
        f"{result['seconds']:.0f} s.\n"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--train_features", default="", help="a features folder (training)")
    parser.add_argument("--test_features", default="", help="a features folder (test)")
    parser.add_argument("--config", default="", help="or: a config file (--config.<field>=...)")
    parser.add_argument("--workdir", default=None, help="... and a training run")
    parser.add_argument("--weights", default=None, help="... or a weights file")
    parser.add_argument("--weights_format", default="", help="... in this format")
    parser.add_argument("--random_init", action="store_true", help="... or the config's init")
    parser.add_argument("--train_split", default="", help="'' = the config's train_split")
    parser.add_argument("--test_split", default="", help="'' = the config's test_split")
    parser.add_argument("--layers", default="", help="comma-separated ('' = all of the folder)")
    parser.add_argument("--patches", default="centre", choices=features.PATCHES)
    parser.add_argument("--max_examples", type=int, default=0, help="> 0: first N of a split")
    parser.add_argument("--Cs", default="", help="comma-separated C grid (default 1e-3..1e2)")
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_iter", type=int, default=1000)
    parser.add_argument("--out", default=None, help="results folder")
    parser.add_argument("--features_dir", default="", help="'' = <out>/features")
    parser.add_argument("--compare", default="", help="or: probe folders to tabulate, a,b,...")
    args, unknown = parser.parse_known_args(argv)
    args.overrides = [a for a in unknown if a.startswith("--config.")]
    if len(args.overrides) != len(unknown):
        parser.error(
            f"unrecognized arguments: {' '.join(a for a in unknown if a not in args.overrides)}"
        )
    args.command = " ".join(["python -m experiments.paper.linear_probe", *(argv or sys.argv[1:])])
    args.out = str(common.results_dir("linear_probe", args.out))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    args = parse(argv)
    if args.compare:
        try:
            text = compare(args.compare.split(","), args.command)
        except ProbeError as e:
            raise SystemExit(f"error: {e}") from None
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(text)
        print(text + f"\nwritten to {args.out}")
        return {"compare": args.compare.split(",")}
    try:
        result = probe(args)
    except (ValueError, OSError) as e:  # ProbeError, FeaturesError, WeightsError, no data
        raise SystemExit(f"error: {e}") from None
    files.write_json(os.path.join(args.out, "results.json"), result)
    text = markdown(result)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    print(text + f"\nwritten to {args.out}")
    return result


if __name__ == "__main__":
    main()
