"""Training from another network's parameters (`config.init_from`, alexnet_jax/transfer.py).

The sources are made here: a short run of the offline default, a torchvision-format state dict
(torch.save of random arrays in torchvision's layouts) and a converter-format bvlc_alexnet.npy
(tests/test_weights.py's writers). Kept layers are compared with the source converted by hand in
this file (transposes, tower split, fc6's row order, Caffe's BGR), excluded layers with the
initialisation of a run of the same seed without `init_from`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint, optim, parallel, train, transfer
from configs import caffe_bvlc_alexnet, default, torchvision_alexnet
from tests.test_faults import one_line_error, refused_line, tree_hash
from tests.test_weights import caffe_reference, torchvision_state_dict, write_converter_npy

ROOT = Path(__file__).resolve().parents[1]


def _state(config, imported=None):
    """The step-0 TrainState training builds for `config` (one device)."""
    config = config.copy_and_resolve_references()
    config.mesh.data, config.mesh.tower = 1, 1
    mesh = parallel.make_mesh(config.mesh, config.model, jax.devices()[:1])
    tx = optim.create_optimizer(config.optimizer, steps_per_epoch=1, total_steps=1)
    with jax.set_mesh(mesh):
        state = train.create_train_state(config, mesh, tx, jax.random.key(config.seed), imported)
    return jax.tree.map(np.asarray, state)


def _assert_excluded_is_own_init(config, state, layers):
    """Excluded layers are bit for bit what the same seed gives without a source."""
    scratch = _state(config)
    for layer in layers:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(state.params[layer][leaf], scratch.params[layer][leaf])


def _write_pth(path, sd):
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)


# --- Kept layers equal the source, bit for bit; excluded ones are the config's init ------------


@pytest.mark.slow
def test_torchvision_pth_kept_layers_are_the_files_arrays_bit_for_bit(tmp_path):
    sd = torchvision_state_dict(seed=1)
    path = tmp_path / "alexnet.pth"
    _write_pth(path, sd)
    config = torchvision_alexnet.get_config()
    config.model.num_classes = 3
    config.init_from.source = str(path)
    config.init_from.exclude = ("fc8",)
    imported = transfer.load(config)
    assert imported.record["format"] == "torchvision"
    kept = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert imported.record["imported"] == kept
    state = _state(config, imported)
    assert int(state.step) == 0
    p = state.params
    for layer, key in (("conv1", "features.0"), ("conv2", "features.3"), ("conv3", "features.6"),
                       ("conv4", "features.8"), ("conv5", "features.10")):  # fmt: skip
        want = sd[f"{key}.weight"].transpose(2, 3, 1, 0)  # (out, in, H, W) -> (H, W, in, out)
        np.testing.assert_array_equal(p[layer]["kernel"][0], want)
        np.testing.assert_array_equal(p[layer]["bias"][0], sd[f"{key}.bias"])
    # fc6's rows: torch flattens pool5 as C x H x W, this network as H x W x C.
    w6 = sd["classifier.1.weight"].T.reshape(256, 6, 6, 4096).transpose(1, 2, 0, 3)
    np.testing.assert_array_equal(p["fc6"]["kernel"][0], w6.reshape(9216, 4096))
    np.testing.assert_array_equal(p["fc7"]["kernel"][0], sd["classifier.4.weight"].T)
    np.testing.assert_array_equal(p["fc7"]["bias"][0], sd["classifier.4.bias"])
    assert p["fc8"]["kernel"].shape == (1, 4096, 3)
    _assert_excluded_is_own_init(config, state, ["fc8"])
    # lecun init of fc8: N(0, 1 / fan_in) weights, zero biases.
    assert abs(p["fc8"]["kernel"].std() * np.sqrt(4096) - 1) < 0.05
    assert not p["fc8"]["bias"].any()
    # A fresh optimizer state: the momentum is zero.
    assert not any(np.any(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) >= 2)


@pytest.mark.slow  # the paper's full-size AlexNet's state, built in process
def test_caffe_npy_kept_layers_are_the_converter_arrays_bit_for_bit(tmp_path):
    ref = caffe_reference(seed=2)
    path = tmp_path / "bvlc_alexnet.npy"
    write_converter_npy(path, ref)
    config = caffe_bvlc_alexnet.get_config()
    config.model.num_classes = 5
    config.init_from.source = str(path)
    config.init_from.exclude = ("fc8",)
    state = _state(config, transfer.load(config))
    p = state.params
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        w = ref[layer][0].transpose(2, 3, 1, 0).astype(np.float32)  # (H, W, in, out)
        if layer == "conv1":
            w = w[:, :, ::-1, :]  # Caffe's BGR input channels, RGB here
        half = w.shape[-1] // 2  # two towers: the first half of the kernels, the second
        np.testing.assert_array_equal(p[layer]["kernel"][0], w[..., :half])
        np.testing.assert_array_equal(p[layer]["kernel"][1], w[..., half:])
        b = ref[layer][1].astype(np.float32)
        np.testing.assert_array_equal(np.concatenate(p[layer]["bias"]), b)
    w6 = ref["fc6"][0].reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, 4096)
    np.testing.assert_array_equal(
        np.concatenate(p["fc6"]["kernel"], axis=-1), w6.astype(np.float32)
    )
    np.testing.assert_array_equal(
        np.concatenate(p["fc7"]["kernel"], axis=-1), ref["fc7"][0].T.astype(np.float32)
    )
    _assert_excluded_is_own_init(config, state, ["fc8"])
    # Caffe's init of fc8: N(0, 0.01) weights, bias 0 (init='caffe' biases 0.1 only in
    # conv2/4/5 and fc6/fc7).
    assert abs(p["fc8"]["kernel"].std() / 0.01 - 1) < 0.05


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A 6-step run of the offline default (checkpoints 3 and 6)."""
    workdir = tmp_path_factory.mktemp("source") / "run"
    run = _cli(workdir, "--config.num_train_steps=6", "--config.checkpoint_every_steps=3")
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir


@pytest.mark.slow  # two runs through the CLI (the source's, the fine-tuned one's)
def test_a_run_as_source_trains_from_its_parameters(tmp_path, digits_run):
    """Through the CLI with learning rate 0: the one step leaves the imported parameters as
    they were, so the checkpoint holds what training started from."""
    run = _cli(
        tmp_path / "ft", "--config.num_train_steps=1", "--config.optimizer.learning_rate=0.0",
        f"--config.init_from.source={digits_run}", "--config.init_from.step=3",
        "--config.init_from.exclude=('fc10',)",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"initialised from {digits_run} (run, step 3): imported conv1, conv2, local3, local4; " \
        "fc10 from this config's init" in run.stdout
    _, source = checkpoint.restore_params(digits_run / "checkpoints" / "3")
    step, got = checkpoint.restore_params(tmp_path / "ft")
    assert step == 1
    for layer in ("conv1", "conv2", "local3", "local4"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(got[layer][leaf], source[layer][leaf])
    config = default.get_config()
    scratch = _state(config).params["fc10"]
    np.testing.assert_array_equal(got["fc10"]["kernel"], scratch["kernel"])
    assert not np.array_equal(got["fc10"]["kernel"], source["fc10"]["kernel"])
    record = json.loads((tmp_path / "ft" / "config.json").read_text())["__record__"]["init_from"]
    assert record["source"] == str(digits_run) and record["step"] == 3
    assert record["excluded"] == ["fc10"] and record["format"] == "run"
    # Evaluation and features of the fine-tuned run carry what it started from.
    from alexnet_jax import evaluate, features

    member = evaluate.load_members(config, [str(tmp_path / "ft")], [], None)[0]
    assert member.source["init_from"] == record
    assert features.load_params(config, workdir=str(tmp_path / "ft"))[1]["init_from"] == record
    assert evaluate.load_members(config, [str(digits_run)], [], None)[0].source.keys() == {
        "workdir", "checkpoint_step"
    }  # a run from its config's initialisation has none


# --- Faults: one line, nothing written ---------------------------------------------------------


BASE = (
    "--config=configs/default.py",
    "--config.eval_every_steps=1000",
    "--config.log_every_steps=1",
    "--config.progress_bar=False",
    "--config.test_split=",
    "--allocator=system",
)


def _cli(workdir, *overrides, base=BASE, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="")
    env.pop("ALEXNET_JAX_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", "alexnet_jax.main", *base, f"--workdir={workdir}", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _refusal(workdir, config_module=default, **overrides) -> str:
    """What main's one line says when `train.train_and_evaluate` refuses BASE's run of
    `config_module` with `overrides` (by dotted name), run in this process: these refusals come
    before any training step (tests/test_faults.py's `refused_line`)."""
    config = config_module.get_config()
    config.update_from_flattened_dict(
        {"eval_every_steps": 1000, "log_every_steps": 1, "progress_bar": False, "test_split": "",
         **overrides}
    )  # fmt: skip
    return refused_line(config, workdir)


def _folder_dataset(root: Path, classes: int = 3, train: int = 8, val: int = 2) -> Path:
    """root/{train,val}/<class>/*.png: `classes` classes of 40x40 images told apart by colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 80, (40, 40, 3)).astype(np.uint8)
                image[..., c % 3] += np.uint8(120)
                Image.fromarray(image).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_shape_mismatch_without_exclude_is_one_line_and_writes_nothing(tmp_path, digits_run):
    data = _folder_dataset(tmp_path / "data")
    workdir = tmp_path / "ft"
    line = _refusal(
        workdir, **{"dataset": f"folder:{data}", "train_split": "train",
                    "eval_split": "validation", "model.num_classes": 3, "num_train_steps": 2,
                    "init_from.source": str(digits_run)},
    )  # fmt: skip
    assert "fc10/kernel has shape (2048, 10) in the source and (2048, 3) in this network" in line
    assert "config.init_from.exclude" in line
    assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "corrupt_pth", "corrupt_npy", "damaged_run"])
# In process, a damaged run's failed read leaves Orbax's other reads to end in an event loop
# that is gone (test_checkpoint.py): pytest's hook reports them.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_missing_or_corrupt_source_is_one_line_and_writes_nothing(tmp_path, digits_run, kind):
    import shutil

    if kind == "missing":
        source, base, match = tmp_path / "nowhere.pth", default, "no such file or folder"
    elif kind == "corrupt_pth":
        source = tmp_path / "alexnet.pth"
        _write_pth(source, torchvision_state_dict())
        source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        base, match = torchvision_alexnet, "cannot be read as a PyTorch state dict"
    elif kind == "corrupt_npy":
        source = tmp_path / "bvlc_alexnet.npy"
        write_converter_npy(source, caffe_reference())
        source.write_bytes(source.read_bytes()[: source.stat().st_size // 3])
        base, match = caffe_bvlc_alexnet, "bvlc_alexnet.npy"
    else:
        source = tmp_path / "run"
        shutil.copytree(digits_run, source)
        largest = max(
            (p for p in (source / "checkpoints" / "6").rglob("*") if p.is_file()),
            key=lambda p: p.stat().st_size,
        )
        data = bytearray(largest.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 4096] = os.urandom(4096)
        largest.write_bytes(bytes(data))
        base, match = default, "is damaged"
    overrides = {"init_from.source": str(source), "num_train_steps": 2}
    if base is not default:  # AlexNet on a 3-class folder: fails before the first image is read
        data = _folder_dataset(tmp_path / "data")
        overrides.update(
            {"dataset": f"folder:{data}", "train_split": "train", "eval_split": "validation",
             "model.num_classes": 3, "init_from.exclude": ("fc8",), "batch_size": 4}
        )  # fmt: skip
    workdir = tmp_path / "ft"
    line = _refusal(workdir, base, **overrides)
    assert "init_from" in line and match in line, line
    assert not workdir.exists()


@pytest.mark.slow
def test_changed_source_on_resume_is_refused_and_writes_nothing(tmp_path, digits_run):
    workdir = tmp_path / "ft"
    first = _cli(
        workdir, "--config.num_train_steps=2", f"--config.init_from.source={digits_run}",
        "--config.init_from.exclude=('fc10',)",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    before = tree_hash(workdir)
    line = one_line_error(
        _cli(
            workdir, "--config.num_train_steps=4", "--config.init_from.step=3",
            f"--config.init_from.source={digits_run}", "--config.init_from.exclude=('fc10',)",
        )  # fmt: skip
    )
    assert "init_from.step: -1 -> 3" in line, line
    assert tree_hash(workdir) == before


# --- Fine-tuning a torchvision file on a folder: killed, resumed without the file --------------


@pytest.mark.slow
def test_torchvision_finetune_killed_resumes_bit_identically_without_the_source(tmp_path):
    data = _folder_dataset(tmp_path / "data", train=4, val=2)
    try:  # torch's own .pth when torch is here; else the same state dict as .npz (no torch)
        import torch  # noqa: F401

        source = tmp_path / "alexnet.pth"
        _write_pth(source, torchvision_state_dict(seed=3))
    except ImportError:
        source = tmp_path / "alexnet.npz"
        np.savez(source, **torchvision_state_dict(seed=3))
    args = (
        "--config=configs/finetune.py:torchvision", f"--config.dataset=folder:{data}",
        "--config.model.num_classes=3", f"--config.init_from.source={source}",
        "--config.batch_size=4", "--config.num_train_steps=7", "--config.num_epochs=-1",
        "--config.checkpoint_every_steps=2", "--config.log_every_steps=1",
        "--config.eval_every_steps=1000", "--config.eval_ten_crop=False",
        "--config.progress_bar=False", "--allocator=system", "--config.num_workers=0",
    )  # fmt: skip
    reference = _cli(tmp_path / "reference", *args, base=())
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "initialised from" in reference.stdout

    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="")
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "alexnet_jax.main", *args, f"--workdir={killed}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline:  # checkpoint 2 complete (Orbax names it when it is)
        if checkpoint.has_checkpoints(killed):
            break
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    assert proc.poll() is None  # killed before the end (steps 3-7 and three saves remain)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.has_checkpoints(killed)
    source.rename(tmp_path / f"moved_away{source.suffix}")  # the resume must not need it
    resumed = _cli(killed, *args, base=())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint of step" in resumed.stdout
    assert "initialised from" not in resumed.stdout
    step_a, a = checkpoint.restore_params(tmp_path / "reference")
    step_b, b = checkpoint.restore_params(killed)
    assert step_a == step_b == 7
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    record = json.loads((killed / "config.json").read_text())["__record__"]["init_from"]
    assert record["source"] == str(source) and record["format"] == "torchvision"
    assert len(record["sha256"]) == 64


# --- The config.init_from switches (docs/transfer.md's table; tests/test_switches.py runs them) --


def _cifar_config(**init_from):
    config = default.get_config()
    config.init_from.update(init_from)
    return config


def _save_run(workdir: Path, seeds: dict[int, int]) -> dict[int, dict]:
    """A run folder with a checkpoint per {step: seed} (parameters of that seed's init); the
    parameters of each, as NumPy."""
    saved = {}
    ckpt = checkpoint.Checkpointer(str(workdir), keep=10, say=lambda _: None)
    try:
        for step, seed in seeds.items():
            config = default.get_config()
            config.seed = seed
            state = _state(config)
            ckpt.save(step, jax.tree.map(jax.numpy.asarray, state), {"schedule": "constant"}, {})
            ckpt.wait()
            saved[step] = state.params
    finally:
        ckpt.close()
    return saved


def check_source(tmp: Path) -> None:
    """source: the run's parameters replace the config's initialisation (all layers)."""
    saved = _save_run(tmp / "run", {4: 11})
    config = _cifar_config(source=str(tmp / "run"))
    state = _state(config, transfer.load(config))
    scratch = _state(_cifar_config())
    for layer in saved[4]:
        np.testing.assert_array_equal(state.params[layer]["kernel"], saved[4][layer]["kernel"])
        assert not np.array_equal(state.params[layer]["kernel"], scratch.params[layer]["kernel"])
    # '' is the paper's (here the config's) initialisation.
    assert transfer.check_init_from(_cifar_config()) == []


def check_step(tmp: Path) -> None:
    """step: which checkpoint of the run; -1 the latest."""
    saved = _save_run(tmp / "run", {3: 21, 6: 22})
    for step, want in ((3, 3), (-1, 6), (6, 6)):
        config = _cifar_config(source=str(tmp / "run"), step=step)
        imported = transfer.load(config)
        assert imported.record["step"] == want
        got, expected = imported.params["conv1"]["kernel"], saved[want]["conv1"]["kernel"]
        np.testing.assert_array_equal(got, expected)


def check_exclude(tmp: Path) -> None:
    """exclude: those layers keep the config's initialisation; the others are imported."""
    saved = _save_run(tmp / "run", {5: 31})
    config = _cifar_config(source=str(tmp / "run"), exclude=("fc10", "conv2"))
    imported = transfer.load(config)
    assert sorted(imported.params) == ["conv1", "local3", "local4"]
    state = _state(config, imported)
    scratch = _state(_cifar_config())
    for layer in ("fc10", "conv2"):
        got, expected = state.params[layer]["kernel"], scratch.params[layer]["kernel"]
        np.testing.assert_array_equal(got, expected)
    for layer in ("conv1", "local3", "local4"):
        np.testing.assert_array_equal(state.params[layer]["kernel"], saved[5][layer]["kernel"])


def check_format(tmp: Path) -> None:
    """format: '' infers from the path; a given format is used (a name that says nothing)."""
    sd = torchvision_state_dict(seed=4)
    config = torchvision_alexnet.get_config()
    np.savez(tmp / "alexnet.npz", **sd)
    config.init_from.source = str(tmp / "alexnet.npz")
    imported = transfer.load(config)
    assert imported.record["format"] == "torchvision"
    np.testing.assert_array_equal(imported.params["fc7"]["kernel"][0], sd["classifier.4.weight"].T)
    ref = caffe_reference(seed=5)
    write_converter_npy(tmp / "bvlc_alexnet.npy", ref)
    (tmp / "bvlc_alexnet.npy").rename(tmp / "alexnet.weights")  # a name that says nothing
    config = caffe_bvlc_alexnet.get_config()
    config.init_from.source = str(tmp / "alexnet.weights")
    with pytest.raises(transfer.TransferError, match="cannot tell the format"):
        transfer.load(config)
    config.init_from.format = "caffe_npy"
    imported = transfer.load(config)
    assert imported.record["format"] == "caffe_npy"
    fc7 = np.concatenate(imported.params["fc7"]["kernel"], axis=-1)
    np.testing.assert_array_equal(fc7, ref["fc7"][0].T.astype(np.float32))
    config.init_from.format = "torchvision"  # the file is not one: refused, not misread
    with pytest.raises(transfer.TransferError):
        transfer.load(config)
    config.init_from.source = str(tmp)  # a folder is a run
    config.init_from.format = ""
    with pytest.raises(transfer.TransferError, match="has no checkpoint"):
        transfer.load(config)


INIT_FROM_CHECKS = {
    "source": check_source,
    "format": check_format,
    "step": check_step,
    "exclude": check_exclude,
}


@pytest.mark.slow
def test_a_run_whose_only_checkpoint_is_damaged_is_refused_not_reimported(tmp_path, digits_run):
    """A fine-tuned run with no readable checkpoint left stops in one line (the checkpoint set
    aside, never deleted) instead of silently starting over; started afresh, it imports again."""
    workdir = tmp_path / "ft"
    args = (
        "--config.num_train_steps=2", "--config.checkpoint_every_steps=2",
        f"--config.init_from.source={digits_run}", "--config.init_from.exclude=('fc10',)",
    )  # fmt: skip
    first = _cli(workdir, *args)
    assert first.returncode == 0 and "initialised from" in first.stdout, first.stderr[-3000:]
    largest = max(
        (p for p in (workdir / "checkpoints" / "2").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(largest.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = os.urandom(4096)
    largest.write_bytes(bytes(data))
    line = one_line_error(_cli(workdir, *args), library_noise=True)
    assert "no readable checkpoint" in line and "2.corrupt" in line, line
    assert (workdir / "checkpoints" / "2.corrupt").is_dir()
    fresh = _cli(tmp_path / "ft_again", *args)
    assert fresh.returncode == 0 and "initialised from" in fresh.stdout, fresh.stderr[-3000:]
