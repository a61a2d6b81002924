"""experiments/paper/linear_probe.py: C is chosen on validation data held out of the training split
before anything of the test split is opened, and the scores are scikit-learn's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import top_k_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from alexnet_jax import features
from experiments.paper import linear_probe

CS = (0.001, 0.1, 10.0)


def _folder(path: Path, x: dict[str, np.ndarray], y: np.ndarray, split: str, **record) -> Path:
    """A features folder as alexnet_jax.features writes it (one features.npz), of `x`."""
    path.mkdir(parents=True)
    np.savez(path / "features.npz", labels=y.astype(np.int64),
             **{k: v.astype(np.float32) for k, v in x.items()})  # fmt: skip
    layers = [
        {"name": k, "key": k, "description": f"{k} of the digits", "shape": [v.shape[1]],
         "dim": v.shape[1], "dtype": "float32", "file": "features.npz"}
        for k, v in x.items()
    ]  # fmt: skip
    record = {
        "format": "npz", "source": {"pixels": True}, "model": {"model.name": "none"},
        "preprocessing": {}, "patches": "centre", "dataset": "digits", "split": split,
        "num_classes": 10, "layers": layers, "examples": len(y), **record,
    }  # fmt: skip
    (path / "features.json").write_text(json.dumps(record))
    return path


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    """Training and test folders of scikit-learn's digits pixels: 'pixels' (64-d) and 'top'
    (the upper half of each image, 32-d)."""
    root = tmp_path_factory.mktemp("pixels")
    digits = load_digits()
    x, y = digits.data, digits.target
    layers = lambda x: {"pixels": x, "top": x[:, :32]}  # noqa: E731
    train = _folder(root / "train", layers(x[:1200]), y[:1200], "train")
    test = _folder(root / "test", layers(x[1200:]), y[1200:], "test")
    return train, test, (x[:1200], y[:1200]), (x[1200:], y[1200:])


def _run(train, test, out, *extra):
    return linear_probe.main(
        [f"--train_features={train}", f"--test_features={test}", f"--out={out}",
         f"--Cs={','.join(map(str, CS))}", *extra]
    )  # fmt: skip


def test_nothing_of_the_test_split_is_opened_before_every_c_is_chosen(
    pixels, tmp_path, monkeypatch
):
    train, test, _, _ = pixels
    out = tmp_path / "probe"
    opened = []  # (path, the events written to events.jsonl when it was opened)
    real_load = np.load

    def load(path, *args, **kwargs):
        log = out / "events.jsonl"
        events = [json.loads(line) for line in log.read_text().splitlines()]
        opened.append((str(path), events))
        return real_load(path, *args, **kwargs)

    reads = []
    real_read = linear_probe.read_features

    def read(folder, layer, role, log):
        reads.append((str(folder), layer, role))
        return real_read(folder, layer, role, log)

    monkeypatch.setattr(np, "load", load)
    monkeypatch.setattr(linear_probe, "read_features", read)
    result = _run(train, test, out)

    test_opened = [(p, ev) for p, ev in opened if Path(p).parent == test]
    assert test_opened and len(opened) == 4  # a layer at a time: 2 train, then 2 test reads
    for _, events in test_opened:
        assert sorted(e["layer"] for e in events if e["event"] == "chosen") == ["pixels", "top"]
        assert sum(e["event"] == "refit" for e in events) == 2
    first_test = min(i for i, (p, _) in enumerate(opened) if Path(p).parent == test)
    assert all(Path(p).parent == train for p, _ in opened[:first_test])
    # The record says the same, in the same order.
    events = result["events"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert [(e["folder"], e["layer"], e["role"]) for e in events if e["event"] == "read"] == [
        (str(Path(f).resolve()), layer, role) for f, layer, role in reads
    ]  # fmt: skip
    kinds = [e["event"] for e in events]
    assert kinds == (["read"] + ["evaluated"] * 3 + ["chosen", "refit"]) * 2 + [
        "read", "test_evaluated"] * 2  # fmt: skip
    written = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert written == events == json.loads((out / "results.json").read_text())["events"]


def test_the_scores_are_scikit_learns_with_the_c_validation_chose(pixels, tmp_path):
    train, test, (x, y), (tx, ty) = pixels
    result = _run(train, test, tmp_path / "probe", "--layers=top")
    (row,) = result["layers"]
    xs, txs = x[:, :32].astype(np.float32), tx[:, :32].astype(np.float32)  # as stored
    # Validation: 20% of the training split, stratified, seed 0; the test split unused.
    fit_rows, val_rows = train_test_split(
        np.arange(len(y)), test_size=0.2, random_state=0, stratify=y
    )
    errors = {}
    for c in CS:
        scaler = StandardScaler().fit(xs[fit_rows])
        clf = LogisticRegression(C=c, max_iter=1000).fit(
            scaler.transform(xs[fit_rows]), y[fit_rows]
        )
        errors[c] = 1 - np.mean(clf.predict(scaler.transform(xs[val_rows])) == y[val_rows])
    assert row["val_top1_error"] == pytest.approx({repr(c): e for c, e in errors.items()})
    best = min(CS, key=lambda c: (errors[c], c))
    assert row["chosen_C"] == best and len(set(errors.values())) > 1  # the choice mattered
    # The chosen C refit on the whole training split, scored once on the test split.
    scaler = StandardScaler().fit(xs)
    clf = LogisticRegression(C=best, max_iter=1000).fit(scaler.transform(xs), y)
    probs = clf.predict_proba(scaler.transform(txs))
    top1 = np.mean(clf.predict(scaler.transform(txs)) == ty)
    assert row["test_top1_error"] == pytest.approx(1 - top1, abs=1e-12)
    top5 = top_k_accuracy_score(ty, probs, k=5, labels=clf.classes_)
    assert row["test_top5_error"] == pytest.approx(1 - top5, abs=1e-12)
    assert (row["n_train"], row["n_val"], row["n_test"]) == (960, 240, len(ty))
    assert 0 < row["test_top1_error"] < 0.3
    text = (tmp_path / "probe" / "results.md").read_text()
    assert f"| top (`top`) | 32 | {best:g} |" in text


def test_folders_that_do_not_pair_are_refused_in_one_line(pixels, tmp_path):
    train, _, _, (tx, ty) = pixels
    other = _folder(tmp_path / "other", {"pixels": tx, "top": tx[:, :32]}, ty, "test",
                    source={"weights": "elsewhere"})  # fmt: skip
    narrow = _folder(tmp_path / "narrow", {"pixels": tx[:, :10]}, ty, "test")
    for folder, why in ((other, "their source differ"), (narrow, "pixels is pixels (64-d)"),
                        (train, "both are the split 'train'")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            _run(train, folder, tmp_path / f"out_{folder.name}", "--layers=pixels", "--Cs=1")
        text = str(e.value)
        assert text.startswith("error: ") and why in text and "\n" not in text, text


@pytest.mark.slow
def test_one_command_extracts_the_test_split_after_the_choices(tmp_path, monkeypatch):
    from tests.test_features import _digits, _random_params

    config = _digits(tmp_path)
    params = _random_params(config)
    monkeypatch.setattr(features, "load_params", lambda config, **kw: (params, {"random": "numpy"}))
    calls = []
    real_write = features.write_features

    def write(config, params, record, folder, *, split, **kwargs):
        events = (tmp_path / "probe" / "events.jsonl").read_text().splitlines()
        calls.append((split, [json.loads(line)["event"] for line in events]))
        return real_write(config, params, record, folder, split=split, **kwargs)

    monkeypatch.setattr(features, "write_features", write)
    result = linear_probe.main(
        ["--config=configs/default.py", "--random_init", "--train_split=train[:96]",
         "--test_split=test", "--layers=fc10,pool2", "--max_examples=64", "--Cs=0.1,1",
         f"--out={tmp_path / 'probe'}", "--config.batch_size=32",
         "--config.progress_bar=False", f"--config.cache_dir={tmp_path / 'cache'}"]
    )  # fmt: skip
    (train_split, before_train), (test_split, before_test) = calls
    assert train_split == "train[:96]" and "chosen" not in before_train
    assert test_split == "test" and before_test.count("chosen") == 2
    assert [r["n_train"] + r["n_val"] for r in result["layers"]] == [64, 64]
    assert [r["n_test"] for r in result["layers"]] == [64, 64]
    assert result["provenance"]["test"]["split"] == "test"
    assert (tmp_path / "probe" / "features" / "test" / "features.json").exists()


def test_compare_tabulates_each_probes_own_results(pixels, tmp_path):
    """--compare: one row per layer, each probe's test error and chosen C as its results.json
    has them, '-' where a probe lacks the layer."""
    train, test, _, _ = pixels
    a, b = tmp_path / "a", tmp_path / "b"
    first = _run(train, test, a, "--layers=pixels,top", "--Cs=1")
    second = _run(train, test, b, "--layers=top", "--Cs=0.1")
    linear_probe.main([f"--compare={a},{b}", f"--out={tmp_path / 'both'}"])
    table = (tmp_path / "both" / "results.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    rows = {line.split("|")[1].strip(): line for line in lines}
    by = {n: {r["layer"]: r for r in res["layers"]} for n, res in (("a", first), ("b", second))}
    top_a, top_b = by["a"]["top"], by["b"]["top"]
    assert f"{100 * top_a['test_top1_error']:.2f} (C 1)" in rows["top (32-d)"]
    assert f"{100 * top_b['test_top1_error']:.2f} (C 0.1)" in rows["top (32-d)"]
    cells = [c.strip() for c in rows["pixels (64-d)"].split("|")[1:-1]]
    assert cells[1] == f"{100 * by['a']['pixels']['test_top1_error']:.2f} (C 1)" and cells[2] == "-"
