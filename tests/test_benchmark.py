"""Tests of experiments/bench/benchmark.py and experiments/bench/torch_reference.py: the JAX-only
run, the PyTorch twin's equivalence, tcmalloc.

No timing is asserted (benchmarks print ratios, tests check numbers that cannot
drift). PyTorch is optional: the tests that need it skip without it.
"""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from alexnet_jax import allocator, models, parallel
from experiments.bench import benchmark
from experiments.bench import torch_reference as ref

ROOT = Path(__file__).resolve().parents[1]

REQUIRED_KEYS = (
    "jax_train_images_per_sec",
    "torch_train_images_per_sec",
    "jax_infer_images_per_sec",
    "torch_infer_images_per_sec",
    "train_speedup_vs_torch",
    "infer_speedup_vs_torch",
    "lrn_speedup_vs_torch",
    "lrn",
    "batch_size",
    "image_size",
    "dtype",
    "kernels",
    "kernels_resolved",
    "device",
    "allocator",
    "torch_threads",
    "jax_train_gflops_per_sec",
    "jax_infer_gflops_per_sec",
    "matmul_peak_gflops",
    "jax_matmul_gflops",
    "torch_matmul_gflops",
    "train_flops_per_image",
    "infer_flops_per_image",
    "floor_train_images_per_sec",
    "floor_infer_images_per_sec",
    "logits_max_rel_diff",
    "versions",
    "date",
    "command",
    "repeats",
    "warmup",
)
TORCH_KEYS = (
    "torch_train_images_per_sec",
    "torch_infer_images_per_sec",
    "train_speedup_vs_torch",
    "infer_speedup_vs_torch",
    "lrn_speedup_vs_torch",
    "torch_matmul_gflops",
    "torch_threads",
    "logits_max_rel_diff",
)
TINY_RUN = ["--batch", "2", "--repeats", "1", "--warmup", "1", "--matmul-size", "256"]


@pytest.fixture(scope="module")
def jax_only(tmp_path_factory):
    """One JAX-only run at batch 2 (compiling the step is most of it): (argv, returned, JSON)."""
    path = tmp_path_factory.mktemp("benchmark") / "results.json"
    argv = [*TINY_RUN, "--skip-torch", "--allocator", "system", "--json", str(path)]
    returned = benchmark.main(argv)
    return argv, returned, json.loads(path.read_text())


@pytest.mark.slow
def test_jax_only_run_writes_every_key(jax_only):
    argv, returned, written = jax_only
    assert set(REQUIRED_KEYS) <= set(written)
    assert written == json.loads(json.dumps(returned))
    assert (written["batch_size"], written["image_size"], written["dtype"]) == (2, 227, "float32")
    assert (written["repeats"], written["warmup"]) == (1, 1)
    assert shlex.split(written["command"])[1:] == ["-m", "experiments.bench.benchmark", *argv]
    assert written["device"].startswith("cpu: ")
    assert written["allocator"] == allocator.allocator_in_use()
    assert written["versions"]["jax"] == jax.__version__


@pytest.mark.slow
def test_jax_only_run_measures_positive_numbers(jax_only):
    *_, r = jax_only
    for key in (
        "jax_train_images_per_sec",
        "jax_infer_images_per_sec",
        "jax_train_gflops_per_sec",
        "jax_infer_gflops_per_sec",
        "matmul_peak_gflops",
        "floor_train_images_per_sec",
        "floor_infer_images_per_sec",
        "lrn_jax_total_ms",
    ):
        assert r[key] > 0, key
    assert r["matmul_peak_gflops"] == r["jax_matmul_gflops"]
    assert set(r["lrn"]) == {"conv1", "conv2"}
    assert r["lrn"]["conv1"]["shape_nhwc"] == [2, 55, 55, 96]
    assert r["lrn"]["conv2"]["shape_nhwc"] == [2, 27, 27, 256]
    # Forward multiply-adds per image (§3.5 layer table, conv2/4/5 per tower):
    # conv1 55^2*96*363 + conv2 27^2*256*1200 + conv3 13^2*384*2304 + conv4 13^2*384*1728
    # + conv5 13^2*256*1728 + fc6 9216*4096 + fc7 4096^2 + fc8 4096*1000 = 724.4M, i.e. 1.449
    # GFLOP. XLA skips the taps that fall on the zero padding, so it counts a little less.
    assert 1.3e9 < r["infer_flops_per_image"] < 1.449e9
    # Backward is about twice the forward (gradients of inputs and of weights).
    assert 2.5 < r["train_flops_per_image"] / r["infer_flops_per_image"] < 3.5
    # Floor and achieved GFLOP/s are one measurement seen two ways.
    fraction = r["jax_train_images_per_sec"] / r["floor_train_images_per_sec"]
    assert fraction == pytest.approx(r["jax_train_gflops_per_sec"] / r["matmul_peak_gflops"])


@pytest.mark.slow
def test_jax_only_run_leaves_torch_keys_null(jax_only):
    *_, r = jax_only
    for key in TORCH_KEYS:
        assert r[key] is None, key
    assert r["versions"]["torch"] is None
    assert all(v["torch_ms"] is None for v in r["lrn"].values())


def test_missing_torch_names_the_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"pip install torch==2\.13\.0.*--skip-torch"):
        benchmark.main(TINY_RUN)


@pytest.fixture(scope="module")
def paper_params():
    """Initialised parameters of the paper's net (the same shapes at 224 and 227)."""
    pytest.importorskip("torch")  # Only the PyTorch comparisons use them.
    model_config = benchmark.benchmark_config(227).model
    return parallel.init_params(model_config, (227, 227, 3), jax.random.key(0))


@pytest.mark.parametrize("image_size", [227, 224])  # 224 pads conv1's input (cuda-convnet)
def test_torch_twin_gives_our_logits(image_size, paper_params):
    config = benchmark.benchmark_config(image_size)
    params = paper_params
    shape = (2, image_size, image_size, 3)
    images = (60.0 * np.random.default_rng(0).standard_normal(shape)).astype(np.float32)
    ours = jax.jit(models.create_model(config.model).apply)({"params": params}, images)
    twin = ref.torch_alexnet(config.model, image_size)
    copy = ref.torch_alexnet(config.model, image_size)
    ref.copy_jax_params(params, twin, image_size)
    assert benchmark.max_rel_diff(ours, ref.torch_logits(twin, images)) < 1e-4
    # The check can fail: PyTorch's own initialisation gives other logits.
    assert benchmark.max_rel_diff(ours, ref.torch_logits(copy, images)) > 0.5


def _torch_lrn(norm, x_nhwc, g_nhwc, towers):
    """PyTorch LRN per tower on NHWC arrays: (y, gradient of sum(y * g)), back in NHWC."""
    import torch

    x = torch.tensor(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)), requires_grad=True)
    y = ref.torch_lrn_per_tower(norm, x, towers)
    (y * torch.tensor(g_nhwc.transpose(0, 3, 1, 2))).sum().backward()
    return y.detach().numpy().transpose(0, 2, 3, 1), x.grad.numpy().transpose(0, 2, 3, 1)


def test_torch_lrn_per_tower_matches_ours():
    torch = pytest.importorskip("torch")
    model_config = benchmark.benchmark_config(227).model
    rng = np.random.default_rng(0)
    # Large activations, so that the alpha term moves the output by several percent.
    x = (np.maximum(rng.standard_normal((2, 9, 9, 96)), 0.0) * 40.0).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    ours = benchmark._jax_lrn(x, model_config)
    our_grad = jax.grad(lambda x: (benchmark._jax_lrn(x, model_config) * g).sum())(x)
    theirs, their_grad = _torch_lrn(ref.torch_lrn_module(model_config), x, g, 2)
    assert benchmark.max_rel_diff(ours, theirs) < 1e-5
    assert benchmark.max_rel_diff(our_grad, their_grad) < 1e-5
    # The test tells the layers apart: the paper's alpha passed unconverted, or one window
    # across both towers, give other outputs.
    unconverted = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    assert benchmark.max_rel_diff(ours, _torch_lrn(unconverted, x, g, 2)[0]) > 1e-3
    norm = ref.torch_lrn_module(model_config)
    assert benchmark.max_rel_diff(ours, _torch_lrn(norm, x, g, 1)[0]) > 1e-3


def test_find_tcmalloc_gives_none_or_a_file():
    path = allocator.find_tcmalloc()
    assert path is None or (os.path.isfile(path) and "tcmalloc" in os.path.basename(path))


@pytest.mark.parametrize(
    "asked, tcmalloc, expect",
    [
        ("auto", "/usr/lib/libtcmalloc_minimal.so.4", "LD_PRELOAD"),
        ("auto", None, "GLIBC_TUNABLES"),
        ("glibc_tuned", "/usr/lib/libtcmalloc_minimal.so.4", "GLIBC_TUNABLES"),
        ("tcmalloc", "/usr/lib/libtcmalloc_minimal.so.4", "LD_PRELOAD"),
    ],
)
def test_preload_allocator_reexecutes_once_with_what_was_asked(
    monkeypatch, asked, tcmalloc, expect
):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(allocator._PRELOAD_GUARD, raising=False)
    monkeypatch.setattr(allocator, "allocator_in_use", lambda: "system (glibc malloc)")
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: tcmalloc)
    calls = []
    monkeypatch.setattr(os, "execve", lambda exe, args, env: calls.append((args, env)))
    allocator.preload_allocator("experiments.bench.benchmark", asked, ["--batch", "2"])
    ((args, env),) = calls
    assert args[1:] == ["-m", "experiments.bench.benchmark", "--batch", "2"]
    assert env[allocator._PRELOAD_GUARD] == "1"
    if expect == "LD_PRELOAD":
        assert env["LD_PRELOAD"] == tcmalloc and "GLIBC_TUNABLES" not in env
    else:
        assert env["GLIBC_TUNABLES"] == allocator.GLIBC_TUNED and "LD_PRELOAD" not in env
    # The re-executed process (guard set) never re-executes again, and reports the tuning.
    monkeypatch.setenv(allocator._PRELOAD_GUARD, "1")
    allocator.preload_allocator("experiments.bench.benchmark", "auto", [])
    assert len(calls) == 1


def test_glibc_tuning_is_reported_as_the_allocator_in_use(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", allocator.GLIBC_TUNED)
    if allocator.allocator_in_use().startswith(("tcmalloc", "jemalloc")):
        pytest.skip("a preloaded allocator is reported first")
    assert allocator.allocator_in_use().startswith("glibc_tuned")
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert allocator.allocator_in_use() == "system (glibc malloc)"


def test_preload_allocator_system_never_reexecutes():
    # Returning at all shows no execve happened (it would have replaced the test process).
    assert allocator.preload_allocator(benchmark.MODULE, "system", ["--lrn-only"]) is None
    with pytest.raises(ValueError, match="allocator must be one of"):
        allocator.preload_allocator(benchmark.MODULE, "mimalloc")


@pytest.mark.parametrize(
    "argv, asked",
    [
        ([], "auto"),
        (["--config=c.py", "--allocator=system"], "system"),
        (["--allocator", "tcmalloc", "--workdir=w"], "tcmalloc"),
        (["-allocator=glibc_tuned"], "glibc_tuned"),
        (["--allocator=system", "--allocator=tcmalloc"], "tcmalloc"),  # the last one, as absl
        (["--", "--allocator=system"], "auto"),  # past `--`: not a flag
        (["--config.allocator=system"], "auto"),  # another flag
        (["--flagfile=f", "--allocator=system"], None),  # the file may set it: decide later
        (["--allocator=mimalloc"], None),  # absl refuses it after parsing
        (["--allocator"], None),
    ],
)
def test_the_allocator_is_read_from_the_command_line_before_absl(argv, asked):
    assert allocator.allocator_from_argv(argv) == asked


@pytest.mark.slow
def test_main_restarts_with_the_allocator_before_it_imports_jax(tmp_path):
    # -X importtime logs the first process's imports (the restarted one runs without -X): up to
    # the restart, no jax. A restart after the imports would pay them twice (seconds a run).
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    env.pop(allocator._PRELOAD_GUARD, None)
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "alexnet_jax.main", "--allocator=glibc_tuned",
         "--config=configs/default.py", f"--workdir={tmp_path}", "--helpshort"],
        cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]  # absl's help exits 1
    before = run.stderr.split("re-executing with GLIBC_TUNABLES=")[0]
    assert "re-executing" in run.stderr and "alexnet_jax.allocator" in before
    imported = [line.rsplit("|", 1)[-1].strip() for line in before.splitlines() if "|" in line]
    assert not [m for m in imported if m == "jax" or m.startswith(("jax.", "flax", "optax"))]
    assert "workdir" in run.stdout  # the restarted process parsed the flags and printed help


def test_kernels_flag_reaches_the_timed_model():
    # --kernels sets model.kernels of the config both frameworks' steps are built from.
    assert benchmark.benchmark_config(227, kernels="xla").model.kernels == "xla"
    args = benchmark.parse_args(["--kernels", "cpu"])
    assert benchmark.benchmark_config(227, args.dtype, args.kernels).model.kernels == "cpu"
