"""`python -m alexnet_jax.evaluate`: runs and weights files, ensembles, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alexnet_jax import evaluate, metrics, train, weights
from tests.helpers import trained_run_config

ROOT = Path(__file__).resolve().parents[1]


_config = trained_run_config  # 20 steps of the offline default


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_run):
    """Two short digits runs of the offline default, seeds 0 (the session's `trained_run`) and 1."""
    seed1 = tmp_path_factory.mktemp("runs") / "seed1"
    train.train_and_evaluate(_config(1), str(seed1))
    return trained_run, seed1


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "alexnet_jax.evaluate", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow  # trains two short runs (module fixture)
def test_a_run_evaluates_to_its_last_logged_evaluation(runs):
    run = runs[0]
    config = _config()
    members = evaluate.load_members(config, [str(run)], [], None)
    result = evaluate.evaluate_members(config, members, config.eval_split, progress=False)
    logged = [e for e in metrics.read_metrics(str(run)) if "eval_top1_error" in e][-1]
    errors = result["errors"][members[0].name]
    assert errors["centre_top1_error"] == pytest.approx(logged["eval_top1_error"], abs=1e-9)
    assert errors["centre_top5_error"] == pytest.approx(logged["eval_top5_error"], abs=1e-9)
    assert result["examples"] == 287 and result["members"][0]["checkpoint_step"] == 20


@pytest.mark.slow  # trains two short runs (module fixture)
def test_an_ensemble_averages_the_members_softmaxes(runs, tmp_path):
    out = tmp_path / "out"
    done = _cli(
        "--config=configs/default.py", f"--workdir={runs[0]}", f"--workdir={runs[1]}",
        f"--out={out}", "--save_probs", "--per_class", "--config.progress_bar=False",
        "--split=test",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in result["members"]]
    assert len(names) == 2 and set(result["errors"]) == {*names, "ensemble"}
    probs = np.load(out / "probs.npz")
    labels = probs["labels"]
    for patch in ("centre", "ten"):
        members = [probs[f"{n}/{patch}"] for n in names]
        for name, p in zip(names, members):
            want = 1 - (p.argmax(-1) == labels).mean()
            assert result["errors"][name][f"{patch}_top1_error"] == pytest.approx(want)
        mean = np.mean(members, axis=0)  # the NumPy average of the saved softmaxes
        np.testing.assert_allclose(probs[f"ensemble/{patch}"], mean, rtol=1e-6, atol=1e-7)
        want = 1 - (mean.argmax(-1) == labels).mean()
        assert result["errors"]["ensemble"][f"{patch}_top1_error"] == pytest.approx(want)
    text = (out / "results.md").read_text()
    assert "| measured |" in text and "ensemble, 10 patches" in text and "40.66" in text
    assert result["split"] == "test" and result["examples"] == 360  # --split, not eval_split
    for name, run in zip(names, runs):  # each member as its run logged its test evaluation
        logged = [e for e in metrics.read_metrics(str(run)) if "test_top1_error" in e][-1]
        assert result["errors"][name]["centre_top1_error"] == pytest.approx(
            logged["test_top1_error"], abs=1e-9
        )
    per_class = result["per_class_top1_error"]["ensemble"]
    assert len(per_class) == 10 and all(0 <= e <= 1 for e in per_class)


@pytest.mark.slow
def test_a_corrupt_weights_file_is_one_error_and_writes_nothing(tmp_path):
    bad = tmp_path / "bvlc_alexnet.npy"
    bad.write_bytes(b"\x93NUMPY not really")
    out = tmp_path / "out"
    done = _cli("--config=configs/caffe_bvlc_alexnet.py", f"--weights={bad}",
                "--weights_format=caffe_npy", f"--out={out}")  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bvlc_alexnet.npy cannot be read" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    done = _cli("--config=configs/caffe_bvlc_alexnet.py", f"--weights={bad}", f"--out={out}")
    assert done.returncode != 0 and "--weights_format" in done.stderr and not out.exists()


@pytest.mark.slow  # trains two short runs (module fixture)
def test_a_run_of_another_network_is_refused(runs):
    config = _config()
    config.model.lrn = False
    with pytest.raises(evaluate.EvaluationError, match="model.lrn: True in the run, False here"):
        evaluate.load_members(config, [str(runs[0])], [], None)
    with pytest.raises(evaluate.EvaluationError, match="nothing to evaluate"):
        evaluate.load_members(config, [], [], None)


@pytest.mark.slow
def test_imported_caffe_weights_evaluate_with_their_hash(tmp_path):
    from tests.test_weights import caffe_reference, write_converter_npy

    path = tmp_path / "bvlc_alexnet.npy"
    write_converter_npy(path, caffe_reference())
    out = tmp_path / "out"
    done = _cli("--config=configs/caffe_bvlc_alexnet.py", f"--weights={path}",
                "--weights_format=caffe_npy", f"--out={out}", "--config.dataset=synthetic",
                "--config.synthetic_examples=8", "--config.eval_split=validation",
                "--config.batch_size=4", "--config.num_workers=0")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["members"][0]["sha256"] == weights.sha256(str(path))
    assert result["examples"] == 8
    assert "Caffe bvlc_alexnet model card" in (out / "results.md").read_text()


@pytest.mark.slow  # trains two short runs (module fixture)
def test_evaluation_imports_no_tensorflow(runs):
    code = (
        "import sys\n"
        "from alexnet_jax import evaluate\n"
        "from configs import default\n"
        "c = default.get_config(); c.progress_bar = False\n"
        "c.num_train_steps, c.eval_every_steps, c.checkpoint_every_steps = 20, 20, 20\n"
        "c.log_every_steps = 10\n"
        f"m = evaluate.load_members(c, [{str(runs[0])!r}], [], None)\n"
        "evaluate.evaluate_members(c, m, c.eval_split, progress=False)\n"
        "print('tensorflow' in sys.modules, 'torch' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["False", "False"]


@pytest.mark.slow  # a float64 NumPy forward of the full grouped network
def test_caffes_own_preprocessing_warp_and_mean_image_end_to_end(tmp_path):
    """The docs' command for Caffe's preprocessing (images warped to 256x256, the mean image
    of a .binaryproto subtracted, the centre 227 patch, BGR into conv1) against an independent
    NumPy Caffe forward of the same files."""
    from PIL import Image

    from tests.test_augment import _caffe_blob_class
    from tests.test_weights import caffe_forward, caffe_reference, write_converter_npy

    rng = np.random.default_rng(7)
    paths = []
    for split in ("train", "val"):
        for c, (w, h) in enumerate([(320, 200), (180, 300)]):  # wide and tall: warp matters
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            small = rng.integers(0, 256, (h // 20, w // 20, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
            image.save(folder / "x.png")
            if split == "val":
                paths.append(folder / "x.png")
    bgr_mean = np.stack([rng.uniform(lo, lo + 30, (256, 256)) for lo in (95, 110, 120)])
    blob = _caffe_blob_class()()
    blob.num, blob.channels, blob.height, blob.width = 1, 3, 256, 256
    blob.data.extend(bgr_mean.astype(np.float32).ravel().tolist())
    (tmp_path / "imagenet_mean.binaryproto").write_bytes(blob.SerializeToString())  # Caffe's
    ref = caffe_reference()
    npy = tmp_path / "bvlc_alexnet.npy"
    write_converter_npy(npy, ref)
    out = tmp_path / "out"
    mean = tmp_path / "imagenet_mean.binaryproto"
    done = _cli(f"--config=configs/caffe_bvlc_alexnet.py:{mean}", f"--weights={npy}",
                "--weights_format=caffe_npy",
                f"--config.dataset=folder:{tmp_path / 'data'}", "--config.eval_split=validation",
                "--config.batch_size=2", "--config.num_workers=0", "--save_probs",
                f"--out={out}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    recorded = json.loads((out / "results.json").read_text())["preprocessing"]
    assert recorded["resize_mode"] == "warp" and recorded["mean"] == "image"
    assert recorded["mean_file_sha256"] == weights.sha256(str(mean))
    assert (
        f"Images warped to 256, 227 patches, minus the mean image of `{mean}`"
        in (out / "results.md").read_text()
    )
    with np.load(out / "probs.npz") as saved:
        (key,) = [k for k in saved.files if k.endswith("/centre")]
        got, labels = saved[key], saved["labels"]
    assert labels.tolist() == [0, 1]
    # Caffe: the whole image resampled to 256x256, minus the mean image, the centre 227.
    warped = np.stack([
        np.asarray(Image.open(p).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR))
        for p in paths
    ]).astype(np.float64)  # fmt: skip
    bgr = warped[..., ::-1].transpose(0, 3, 1, 2) - bgr_mean
    logits = caffe_forward(bgr[:, :, 14:241, 14:241], ref)
    shifted = logits - logits.max(-1, keepdims=True)
    want = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))  # log-softmax
    assert (got.argmax(-1) == logits.argmax(-1)).all()
    seen = got > 1e-30  # float32 softmaxes of far-off classes underflow to 0
    gap = np.abs(np.log(got[seen]) - want[seen]).max() / np.abs(logits).max()
    assert gap < 1e-5, gap
