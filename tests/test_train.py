"""The training system end to end: steps, guard rails, checkpoints and exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import metrics, train
from configs import alexnet as alexnet_config
from configs import default as default_config

ROOT = Path(__file__).resolve().parents[1]


def _digits_config(**overrides):
    """The offline default, shortened."""
    config = default_config.get_config()
    config.progress_bar = False
    config.update_from_flattened_dict(overrides)
    return config


def _synthetic_alexnet(**overrides):
    """The paper's AlexNet on a few synthetic 230x230 images (227 crops), tiny budget."""
    config = alexnet_config.get_config()
    config.update_from_flattened_dict(
        {
            "dataset": "synthetic",
            "synthetic_examples": 16,
            "synthetic_classes": 10,
            "model.num_classes": 10,
            "resize_size": 230,
            "image_size": 227,
            "batch_size": 4,
            "num_train_steps": 2,
            "num_workers": 0,
            "log_every_steps": 1,
            "eval_every_steps": 2,
            "checkpoint_every_steps": 2,
            "eval_ten_crop": False,
            "progress_bar": False,
            "mesh.tower": 1,
            "mesh.data": 1,
            "optimizer.schedule": "constant",
            **overrides,
        }
    )
    return config


def _restored_params(workdir):
    """The parameters of a run's latest checkpoint, as NumPy arrays."""
    path = Path(workdir) / "checkpoints"
    step = max(int(p.name) for p in path.iterdir() if p.name.isdigit())
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(path / str(step) / "state")
    return step, jax.tree.map(np.asarray, state["params"])


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    """(workdir, result) of three steps of the full-size AlexNet on one device
    (`_synthetic_alexnet`), trained once for the tests that read such a run."""
    workdir = tmp_path_factory.mktemp("one_device") / "run"
    return workdir, train.train_and_evaluate(_synthetic_alexnet(num_train_steps=3), str(workdir))


@pytest.mark.slow
def test_one_step_of_full_size_alexnet(one_device_run):
    workdir, result = one_device_run
    events = metrics.read_metrics(str(workdir))
    train_events = [e for e in events if "train_loss" in e]
    assert [e["step"] for e in train_events] == [1, 2, 3]
    for key in ("train_loss", "train_top1_error", "learning_rate", "images_per_sec"):
        assert np.isfinite(train_events[0][key]), key
    assert train_events[0]["learning_rate"] == pytest.approx(0.01)
    assert 0.0 <= result["eval_top1_error"] <= 1.0
    assert (workdir / "config.json").exists()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_two_towers_on_two_devices_follow_the_one_device_trajectory(tmp_path, one_device_run):
    two = _synthetic_alexnet(num_train_steps=3, **{"mesh.tower": 2})
    train.train_and_evaluate(two, str(tmp_path / "two"))
    runs = {"one": one_device_run[0], "two": tmp_path / "two"}
    loss = {
        name: [e["train_loss"] for e in metrics.read_metrics(str(run)) if "train_loss" in e]
        for name, run in runs.items()
    }
    assert len(loss["one"]) == 3
    np.testing.assert_allclose(loss["two"], loss["one"], rtol=1e-5)
    assert loss["one"][0] != loss["one"][-1]


@pytest.mark.slow
def test_cifar_net_loss_falls_on_digits(tmp_path):
    config = _digits_config(
        num_train_steps=60, eval_every_steps=60, checkpoint_every_steps=60, log_every_steps=10
    )
    train.train_and_evaluate(config, str(tmp_path))
    losses = [e["train_loss"] for e in metrics.read_metrics(str(tmp_path)) if "train_loss" in e]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _digits_config(
        num_train_steps=10, checkpoint_every_steps=5, eval_every_steps=10, log_every_steps=1
    )
    train.train_and_evaluate(config, str(tmp_path))
    _, good = _restored_params(tmp_path)
    # Continue the run with a NaN injected through the learning rate: step 11 makes NaNs.
    config.num_train_steps = 20
    config.optimizer.learning_rate = float("nan")
    # A changed learning rate is refused on resume (workdir.config_changes) unless the workdir
    # has no recorded config: take it away to continue the same checkpoint with the NaN.
    (tmp_path / "config.json").unlink()
    # Right after a resume, the checkpoint it resumed from is named as the first suspect (with
    # what its verification said), before the learning rate.
    with pytest.raises(FloatingPointError) as e:
        train.train_and_evaluate(config, str(tmp_path))
    text = str(e.value)
    assert text.startswith(
        "param_norm = nan at step 11, 1 step(s) after resuming from the "
        "checkpoint of step 10 (its checksums matched): that checkpoint is the first suspect, "
        "and nothing was saved since. Move it aside "
        f"(mv {tmp_path}/checkpoints/10 {tmp_path}/checkpoints/10.suspect) and rerun the same "
        "command to resume from step 5;"
    ), text
    assert text.index("first suspect") < text.index("optimizer.learning_rate")
    step, params = _restored_params(tmp_path)
    assert step == 10
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(good)):
        np.testing.assert_array_equal(x, y)
    # A run that did not resume (or saved since) keeps the plain advice.
    fresh = tmp_path / "fresh"
    with pytest.raises(FloatingPointError, match="at step 1: .* no checkpoint had been written "
                       "yet. Lower optimizer.learning_rate"):  # fmt: skip
        train.train_and_evaluate(config, str(fresh))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"image_size": 200}, "6x6"),
        ({"batch_size": 6, "mesh.tower": 1, "mesh.data": 4}, "not divisible by the 4"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"model.activation": "relu6x"}, "jax.nn"),
        ({"mesh.tower": 3}, "mesh.tower"),
        ({"mesh.grad_sum": "tree"}, "mesh.grad_sum='tree' is not one of"),
        ({"optimizer.schedule": "exponential"}, "schedule"),
        ({"optimizer.layer_lr_multipliers": (("conv9", 0.0),)}, "selects no parameter"),
        (
            {"optimizer.schedule": "manual", "optimizer.manual_schedule": ((5, 0.1), (2, 0.01))},
            "manual_schedule",
        ),
        ({"augment.pca_color": False, "augment.pca_color_end_epoch": 3}, "is off"),
        ({"model.lrn_before_relu": ("conv3",)}, "lrn_before_relu"),
        ({"optimizer.bias_learning_rate": -3.0}, "bias_learning_rate"),
        ({"model.dropout_scaling": "none"}, "dropout_scaling"),
    ],
)
def test_invalid_config_fails_before_anything_is_compiled(tmp_path, overrides, match):
    config = _synthetic_alexnet(**overrides)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
    assert time.perf_counter() - start < 30


def _main(workdir, *overrides, **popen):
    cmd = [
        sys.executable,
        "-m",
        "alexnet_jax.main",
        "--config=configs/default.py",
        f"--workdir={workdir}",
        "--config.progress_bar=False",
        *overrides,
    ]
    # One CPU device: the subprocess runs exactly what a user's first run does, and compiles fast.
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


RESUME = (
    "--config.batch_size=8",  # a quarter of the default's work per step; resuming is the same
    "--config.num_train_steps=60",
    "--config.checkpoint_every_steps=14",  # not a multiple of log_every_steps: see _same_events
    "--config.eval_every_steps=60",
    "--config.log_every_steps=5",
    "--config.num_workers=1",
)


def _wait_for_step(workdir, step, proc, timeout=300):
    """Blocks until metrics.jsonl has an event past `step` (the run is between checkpoints)."""
    deadline = time.time() + timeout
    path = Path(workdir) / "metrics.jsonl"
    while time.time() < deadline:
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line]
            if steps and max(steps) > step:
                return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    raise TimeoutError(f"no event past step {step}")


def _same_events(a, b):
    """The training events of two runs agree to the bit (all but the wall-clock throughput):
    a run resumed between two logged events averages the same steps as an uninterrupted one,
    because the checkpoint keeps the metrics of the steps since the last event."""

    def train_events(workdir):
        return [
            {k: v for k, v in e.items() if k != "images_per_sec"}
            for e in metrics.read_metrics(str(workdir))
            if "train_loss" in e
        ]

    assert train_events(a) == train_events(b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = _main(workdir, *RESUME)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    return workdir, out


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_rerun_is_bit_identical(tmp_path, uninterrupted):
    reference, out = uninterrupted
    assert "final eval_top1_error" in out
    proc = _main(tmp_path, *RESUME)
    _wait_for_step(tmp_path, 15, proc)  # checkpoint 14 written, 28 not yet: 4 steps unlogged
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / ".lock").exists()  # the killed run could not remove its lock
    proc = _main(tmp_path, *RESUME)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert "took over the stale lock" in out and not (tmp_path / ".lock").exists()
    step_a, a = _restored_params(reference)
    step_b, b = _restored_params(tmp_path)
    assert step_a == step_b == 60
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    # metrics.jsonl reads as one run: every logged step once.
    steps = [e["step"] for e in metrics.read_metrics(str(tmp_path)) if "train_loss" in e]
    assert steps == list(range(5, 61, 5))
    _same_events(reference, tmp_path)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes_exactly(tmp_path, uninterrupted):
    reference, _ = uninterrupted
    proc = _main(tmp_path, *RESUME)
    _wait_for_step(tmp_path, 20, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "SIGTERM" in out
    stopped_at, _ = _restored_params(tmp_path)
    assert 20 < stopped_at < 60
    proc = _main(tmp_path, *RESUME)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    _, a = _restored_params(reference)
    _, b = _restored_params(tmp_path)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    _same_events(reference, tmp_path)


@pytest.mark.slow
def test_misspelt_config_field_is_refused(tmp_path):
    proc = _main(tmp_path, "--config.modle.lrn=False")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert "modle" in out


def test_a_replaced_field_on_the_command_line_names_its_successor():
    argv = ["--config=configs/alexnet.py", "--config.model.conv1_matmul=False"]
    message = train.renamed_field_message(argv)
    assert message.startswith("--config.model.conv1_matmul was replaced by config.model.kernels")
    assert train.renamed_field_message(["--config.model.kernels=cpu", "--workdir=/x"]) is None


def _steps(config, n, state=None, steps_per_epoch=1):
    """`n` training steps of `config` (the digits CIFAR net, augmentation on the device) on the
    same uint8 images, from `state` or the config's initial state; returns the parameters after
    each step and a copy of the state after each (the step donates the state it is given)."""
    from tests.helpers import random_stats

    mesh, initial, step = train.single_device_step(
        config, augment_on_device=True, steps_per_epoch=steps_per_epoch
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (config.batch_size, config.resize_size, config.resize_size, 3))
    images = images.astype(np.uint8)
    labels = rng.integers(0, 10, config.batch_size).astype(np.int32)
    stats = random_stats(0, config.resize_size)
    state, out, states = initial if state is None else state, [], []
    with jax.set_mesh(mesh):
        for _ in range(n):
            state, _ = step(state, images, labels, stats)
            out.append(jax.tree.map(np.asarray, state.params))
            states.append(jax.tree.map(lambda v: v.copy(), state))
    return out, states


def _close(a, b):
    return all(
        np.allclose(x, y, rtol=1e-6, atol=1e-7)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.mark.slow
def test_the_training_step_ends_colour_noise_at_its_epoch():
    # pca_color_end_epoch=1 at one step per epoch: step 0 with colour noise, step 1 without.
    ended, states = _steps(_digits_config(batch_size=8, **{"augment.pca_color_end_epoch": 1}), 2)
    always, _ = _steps(_digits_config(batch_size=8), 2)
    assert _close(ended[0], always[0])
    assert not _close(ended[1], always[1])  # the second step differs from noise-on ...
    # ... and is the noise-off step from the same state.
    off, _ = _steps(_digits_config(batch_size=8, **{"augment.pca_color": False}), 1, states[0])
    assert _close(ended[1], off[0])


@pytest.mark.slow
def test_the_training_step_freezes_a_layer_and_keeps_the_bias_rate():
    config = _digits_config(
        batch_size=8,
        **{
            "optimizer.layer_lr_multipliers": (("conv1", 0.0),),
            "optimizer.bias_learning_rate": 0.0,
        },
    )
    initial = jax.tree.map(np.asarray, train.single_device_step(config)[1].params)
    (params, *_), _ = _steps(config, 2)
    for name, leaves in params.items():
        for leaf, value in leaves.items():
            frozen = name == "conv1" or leaf == "bias"  # multiplier 0; bias rate 0
            assert np.array_equal(value, initial[name][leaf]) == frozen, (name, leaf)


@pytest.mark.slow
def test_the_2012_code_config_trains_and_evaluates(tmp_path):
    from configs import alexnet_2012_code

    config = alexnet_2012_code.get_config()
    small = _synthetic_alexnet(num_train_steps=3)
    for key in (
        "dataset",
        "synthetic_examples",
        "synthetic_classes",
        "resize_size",
        "image_size",
        "batch_size",
        "num_train_steps",
        "num_workers",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "eval_ten_crop",
        "progress_bar",
    ):
        config[key] = small[key]  # fmt: skip
    config.model.num_classes, config.mesh.tower, config.mesh.data = 10, 1, 1
    # 4 steps per epoch of 16 examples: the manual drop at epoch 0.5 is step 2.
    config.optimizer.manual_schedule = ((0.5, 1e-3),)
    config.optimizer.layer_lr_multipliers = (("conv1", 0.0),)
    result = train.train_and_evaluate(config, str(tmp_path))
    assert 0.0 <= result["eval_top1_error"] <= 1.0
    rates = [e["learning_rate"] for e in metrics.read_metrics(str(tmp_path)) if "train_loss" in e]
    assert rates == pytest.approx([0.01, 0.01, 1e-3])
    _, params = _restored_params(tmp_path)
    initial = jax.tree.map(np.asarray, train.single_device_step(config)[1].params)
    np.testing.assert_array_equal(params["conv1"]["kernel"], initial["conv1"]["kernel"])
    assert not np.array_equal(params["conv2"]["kernel"], initial["conv2"]["kernel"])


@pytest.mark.slow
def test_a_resumed_run_draws_no_initial_state(tmp_path, trained_run, monkeypatch):
    """Resuming restores into `train.abstract_train_state`: `create_train_state` (which compiles
    and runs the initialisers) is not called. A fresh run calls it once: the spy can fail."""
    import shutil

    from tests.helpers import trained_run_config

    calls = []
    create = train.create_train_state
    monkeypatch.setattr(train, "create_train_state", lambda *a: calls.append(a) or create(*a))
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    config = trained_run_config()
    config.num_train_steps = 22  # two steps past the checkpoint of step 20
    train.train_and_evaluate(config, str(workdir))
    evaluated = [e["step"] for e in metrics.read_metrics(str(workdir)) if "eval_top1_error" in e]
    assert evaluated[-1] == 22
    assert calls == []
    config.num_train_steps = 1
    train.train_and_evaluate(config, str(tmp_path / "fresh"))
    assert len(calls) == 1
