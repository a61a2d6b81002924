"""AlexNet in JAX against the identical network in PyTorch, timed in one process.

  python -m experiments.bench.benchmark [--batch 128] [--image-size 227] [--repeats 5] [--warmup 2]
      [--json results.json | --json -] [--skip-torch] [--dtype float32|bfloat16]
      [--kernels auto|cpu|xla] [--torch-compile]
      [--allocator auto|tcmalloc|glibc_tuned|system] [--lrn-only] [--matmul-size 4096]

PyTorch is an optional, benchmark-only dependency: `pip install -r requirements-bench.txt`.

What is measured, on one device (`jax.devices()[0]`; PyTorch on CUDA when it is available,
else on the CPU with its default thread count):

* the training step of the paper's network (configs/alexnet.py: both towers side by side,
  dropout on, mean cross-entropy, the SGD of §5 with momentum 0.9, weight decay 5e-4 and the
  rate inside the momentum) on fixed random images (N(0, 1) x 60) and labels. JAX: the
  project's own step (`train.single_device_step`, the state donated) without its on-device
  augmentation, plus its norms of the gradient and parameters. PyTorch: the same layers
  (`experiments/bench/torch_reference.py`: grouped convolutions for the own-tower layers
  conv2/4/5, `nn.LocalResponseNorm` per tower), eager, with `torch.optim.SGD` (constant
  rate: the same update as §5);
* inference: `model.apply(..., train=False)` jitted, against `model.eval()` under
  `torch.inference_mode()`;
* LRN (§3.3) forward+backward, per tower, on conv1- and conv2-shaped post-ReLU activations:
  `alexnet_jax.lrn.local_response_norm` against `torch.nn.LocalResponseNorm` (always float32);
* an n x n float32 matmul in both frameworks: the machine's practical peak in this run;
* XLA's FLOP count of the jitted JAX steps (cost analysis) over their median time (achieved
  GFLOP/s), and the FLOPs per image over the peak: the images/s the machine would reach if every
  FLOP ran at the matmul peak (the compute floor). The training step's count includes the SGD
  update, shared by the batch, so its FLOPs per image fall slightly as the batch grows.

Before any timing, our initialised parameters are copied into the PyTorch model and both run
inference on the same images: `logits_max_rel_diff` (max |difference| / max |logit|, ~1e-6 in
float32) shows they are the same network.

How to read it: the last column of the ratio table is JAX's speedup over PyTorch (> 1: JAX is
faster), both measured in this process on the same inputs with the same allocator, their calls
alternating round by round; every number is the median of --repeats timed calls after --warmup
untimed ones (the JAX steps are compiled before, their compile time is reported apart). Only
ratios from one run mean much: absolute speeds move with the machine's load. "of peak" (equal
to "measured/floor") is how close a step comes to running every FLOP at matmul speed; PyTorch's
measured/floor uses XLA's FLOP count of the same network. On GPUs both frameworks' default
float32 matmul/convolution precision may use TF32, so the "float32" peak can be a TF32 one.

Allocator: glibc's malloc returns large freed blocks to the OS, so every execution page-faults
its big buffers in again (on a 2-core EPYC VM a 167 MB elementwise op took 55 ms with glibc, 13
ms with tcmalloc, and a whole AlexNet training step about twice as long in both frameworks).
Like PyTorch's own CPU launcher (`torch.backends.xeon.run_cpu`), `--allocator auto` (default)
re-executes this module with tcmalloc in LD_PRELOAD when it finds it; `--allocator system` keeps
glibc. Both frameworks share the process, hence the allocator: the comparison stays fair. The
allocator in use is printed and saved.

jax, flax and torch are imported inside functions: the re-execution must happen before either
loads, and torch may be missing (`--skip-torch`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from alexnet_jax import machine
from alexnet_jax.allocator import ALLOCATORS, allocator_in_use, preload_allocator
from experiments.bench.timing import interleaved_medians
from experiments.bench.torch_reference import (
    copy_jax_params,
    torch_alexnet,
    torch_device,
    torch_logits,
    torch_lrn_module,
    torch_lrn_per_tower,
    torch_sync,
)

if TYPE_CHECKING:
    import jax
    import ml_collections
    import torch

MODULE = "experiments.bench.benchmark"
DTYPES = ("float32", "bfloat16")
# What `measure_models` measures: all None with --lrn-only, the torch ones with --skip-torch.
MODEL_KEYS = (
    "jax_train_images_per_sec",
    "torch_train_images_per_sec",
    "jax_infer_images_per_sec",
    "torch_infer_images_per_sec",
    "logits_max_rel_diff",
    "train_flops_per_image",
    "infer_flops_per_image",
    "jax_train_compile_s",
    "jax_infer_compile_s",
)
TORCH_MISSING = (
    "PyTorch is not installed. It is an optional, benchmark-only dependency: "
    "`pip install torch==2.13.0` (or -r requirements-bench.txt), or pass --skip-torch to time "
    "JAX alone."
)


def say(message: str) -> None:
    """A progress line on stderr (measurements take tens of seconds on a CPU)."""
    print(message, file=sys.stderr, flush=True)


# --- The JAX side ------------------------------------------------------------------------------


def benchmark_config(
    image_size: int, dtype: str = "float32", kernels: str = "auto"
) -> ml_collections.ConfigDict:
    """The paper's config (configs/alexnet.py) at `image_size`, computing in `dtype`, with
    `model.kernels=kernels`."""
    from configs import alexnet as alexnet_config

    config = alexnet_config.get_config()
    config.image_size = image_size
    config.model.kernels = kernels
    if "compute_dtype" in config.model:
        config.model.compute_dtype = dtype
    elif dtype != "float32":
        raise SystemExit(
            f"--dtype {dtype} needs config.model.compute_dtype, which configs/alexnet.py does not "
            "define in this checkout; use --dtype float32."
        )
    return config


def xla_flops(compiled: Any) -> float | None:
    """FLOPs of a compiled JAX computation by XLA's cost analysis, None if it gives none."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older JAX: one dict per computation.
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def jax_alexnet(config: Any, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Our AlexNet on `jax.devices()[0]`: parameters and the compiled training/inference steps.

    The training step is the project's own (`train.single_device_step`: `train.make_train_step`
    on a (1, 1) mesh, both towers on the device) without the on-device augmentation, which
    the PyTorch side does not have either.

    Returns:
      A dict with 'params' (initialised from config.seed), 'train' (a function of no arguments
      running one donated training step, waiting for it), 'infer' (same for inference, returning
      the logits), their XLA FLOPs ('train_flops', 'infer_flops') and compile seconds.
    """
    import jax
    import jax.numpy as jnp

    from alexnet_jax import models, train

    mesh, state, step = train.single_device_step(config)
    model = models.create_model(config.model)
    # The step donates its state, so inference keeps a copy of the initial parameters.
    params = jax.tree.map(jnp.copy, state.params)
    x, y = jax.device_put((images, labels.astype(np.int32)), jax.devices()[0])

    def infer(params, images):
        return model.apply({"params": params}, images, train=False)

    with jax.set_mesh(mesh):
        start = time.perf_counter()
        train_c = step.lower(state, x, y, None).compile()
        train_compile_s = time.perf_counter() - start
        start = time.perf_counter()
        infer_c = jax.jit(infer).lower(params, x).compile()
        infer_compile_s = time.perf_counter() - start

    def run_train() -> None:
        nonlocal state
        state, out = train_c(state, x, y, None)
        jax.block_until_ready((state, out))

    return {
        "params": params,
        "train": run_train,
        "infer": lambda: jax.block_until_ready(infer_c(params, x)),
        "train_flops": xla_flops(train_c),
        "train_hlo": train_c.as_text(),  # for experiments/bench/profile_train_step.py
        "infer_flops": xla_flops(infer_c),
        "train_compile_s": train_compile_s,
        "infer_compile_s": infer_compile_s,
    }


def max_rel_diff(a: Any, b: Any) -> float:
    """max |a - b| / max |a|, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def torch_steps(
    config: Any, torch_model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, dtype: str
) -> dict[str, Callable[[], Any]]:
    """Functions of no arguments running PyTorch's training step and inference, synchronised."""
    import torch
    import torch.nn.functional as F

    device = next(torch_model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    o = config.optimizer
    sgd = torch.optim.SGD(
        torch_model.parameters(),
        lr=o.learning_rate,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
    )

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def train() -> None:
        torch_model.train()
        sgd.zero_grad(set_to_none=True)
        with autocast():
            logits = torch_model(x)
        F.cross_entropy(logits.float(), y).backward()
        sgd.step()
        torch_sync(device)

    def infer() -> None:
        torch_model.eval()
        with torch.inference_mode(), autocast():
            torch_model(x)
        torch_sync(device)

    return {"train": train, "infer": infer}


# --- The measurements --------------------------------------------------------------------------


def lrn_shapes(config: Any, batch: int) -> dict[str, tuple[int, int, int, int]]:
    """NHWC shapes of the activations LRN normalizes in AlexNet: conv1's and conv2's outputs."""
    from alexnet_jax import architecture

    m = config.model
    sizes = architecture.spatial_sizes(config.image_size, m.pool_window)
    widths = architecture.tower_widths(m.towers, m.num_classes, m.one_tower_kernels)
    return {n: (batch, sizes[n], sizes[n], widths[n] * m.towers) for n in ("conv1", "conv2")}


def measure_lrn(config: Any, batch: int, args: argparse.Namespace) -> dict[str, dict]:
    """LRN forward+backward (value and gradient of sum(LRN(x) * g)) per shape, in ms."""
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    rng = np.random.default_rng(2)
    results = {}
    for name, shape in lrn_shapes(config, batch).items():
        x = np.maximum(rng.standard_normal(shape, np.float32), 0.0) * 10.0  # post-ReLU
        g = rng.standard_normal(shape, np.float32)
        fwd_bwd = jax.jit(jax.value_and_grad(lambda x, g: jnp.sum(_jax_lrn(x, config.model) * g)))
        jx, jg = jax.device_put((x, g), device)
        fns = {"jax": lambda jx=jx, jg=jg, f=fwd_bwd: jax.block_until_ready(f(jx, jg))}
        if not args.skip_torch:
            fns["torch"] = _torch_lrn_fwd_bwd(config.model, x, g)
        say(f"timing LRN {name} {shape} forward+backward: {', '.join(fns)}")
        ms = {k: 1e3 * v for k, v in interleaved_medians(fns, args.warmup, args.repeats).items()}
        results[name] = {
            "shape_nhwc": list(shape),
            "jax_ms": ms["jax"],
            "torch_ms": ms.get("torch"),
        }
    return results


def _jax_lrn(x: jax.Array, m: Any) -> jax.Array:
    """Our LRN on conv-shaped NHWC maps, within each tower, as the model runs it."""
    from alexnet_jax import models

    alpha = models.lrn_alpha(m)
    return models.tower_norm(
        x, m.towers, m.lrn_kind, size=m.lrn_size, alpha=alpha, beta=m.lrn_beta, k=m.lrn_k
    )


def _torch_lrn_fwd_bwd(model_config: Any, x: np.ndarray, g: np.ndarray) -> Callable[[], None]:
    import torch

    device = torch_device()
    norm = torch_lrn_module(model_config)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device).requires_grad_()
    gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy()).to(device)

    def fwd_bwd() -> None:
        xt.grad = None
        (torch_lrn_per_tower(norm, xt, model_config.towers) * gt).sum().backward()
        torch_sync(device)

    return fwd_bwd


def measure_matmul_peak(n: int, args: argparse.Namespace) -> dict[str, float | None]:
    """GFLOP/s of an n x n float32 matmul in JAX and (unless skipped) PyTorch."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(3).standard_normal((2, n, n), np.float32)
    ja, jb = jax.device_put((a[0], a[1]), jax.devices()[0])
    matmul = jax.jit(jnp.matmul).lower(ja, jb).compile()
    fns = {"jax": lambda: jax.block_until_ready(matmul(ja, jb))}
    if not args.skip_torch:
        import torch

        device = torch_device()
        ta, tb = (torch.from_numpy(v).to(device) for v in a)

        def torch_matmul() -> None:
            torch.mm(ta, tb)
            torch_sync(device)

        fns["torch"] = torch_matmul
    say(f"timing {n}x{n} float32 matmul (peak): {', '.join(fns)}")
    seconds = interleaved_medians(fns, args.warmup, args.repeats)
    gflops = {k: 2.0 * n**3 / s / 1e9 for k, s in seconds.items()}
    return {"jax": gflops["jax"], "torch": gflops.get("torch")}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def environment(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """The header: machine, versions, settings and the command, as JSON-able values."""
    import flax
    import jax
    import jaxlib
    import optax

    from alexnet_jax import models

    device = jax.devices()[0]
    cpu = machine.cpu_name() or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "torch": None,
    }
    torch_threads = torch_dev = None
    if not args.skip_torch:
        import torch

        versions["torch"] = torch.__version__
        torch_threads = torch.get_num_threads()
        dev = torch_device()
        torch_dev = "cpu" if dev.type == "cpu" else f"cuda: {torch.cuda.get_device_name(dev)}"
    return {
        "device": (
            f"cpu: {cpu} ({cores} cores)"
            if device.platform == "cpu"
            else f"{device.platform}: {device.device_kind}"
        ),
        "cpu": cpu,
        "cores": cores,
        "torch_device": torch_dev,
        "torch_threads": torch_threads,
        "allocator": allocator_in_use(),
        "versions": versions,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([os.path.basename(sys.executable), "-m", MODULE, *argv]),
        "batch_size": args.batch,
        "image_size": args.image_size,
        "dtype": args.dtype,
        "kernels": args.kernels,
        "torch_compile": args.torch_compile,
        "kernels_resolved": models.resolve_kernels(args.kernels),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "matmul_size": args.matmul_size,
    }


def run(args: argparse.Namespace, argv: Sequence[str], out: Any = None) -> dict[str, Any]:
    """Runs every measurement `args` asks for; prints the header to `out` (stdout) first.

    Returns:
      The results (see the module docstring); PyTorch's entries are None with --skip-torch, and
      everything but LRN is None with --lrn-only.
    """
    from alexnet_jax import config_checks

    config = benchmark_config(args.image_size, args.dtype, args.kernels)
    config_checks.check_image_size(args.image_size, config.model.pool_window)
    r: dict[str, Any] = environment(args, argv)
    print(format_header(r), file=out or sys.stdout, flush=True)
    r.update(dict.fromkeys(MODEL_KEYS))  # None unless measure_models fills them in.
    if not args.lrn_only:
        r.update(measure_models(config, args))
    r["lrn"] = measure_lrn(config, args.batch, args)
    for fw in ("jax", "torch"):
        ms = [v[f"{fw}_ms"] for v in r["lrn"].values()]
        r[f"lrn_{fw}_total_ms"] = None if None in ms else sum(ms)
    r["lrn_speedup_vs_torch"] = _ratio(r["lrn_torch_total_ms"], r["lrn_jax_total_ms"])
    peak = {"jax": None, "torch": None}
    if not args.lrn_only:
        peak = measure_matmul_peak(args.matmul_size, args)
    r["jax_matmul_gflops"], r["torch_matmul_gflops"] = peak["jax"], peak["torch"]
    r["matmul_peak_gflops"] = max((v for v in peak.values() if v), default=None)
    _derive(r)
    return r


def measure_models(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Builds both networks, checks they are the same one, then times training and inference.

    Returns:
      The images/s of each framework and phase, the identity check, XLA's FLOPs per image and
      the JAX compile times.
    """
    rng = np.random.default_rng(config.seed)
    shape = (args.batch, args.image_size, args.image_size, 3)
    images = (60.0 * rng.standard_normal(shape)).astype(np.float32)
    labels = rng.integers(0, config.model.num_classes, args.batch)
    say(f"compiling the JAX training step and inference (batch {args.batch}, {args.dtype})")
    jx = jax_alexnet(config, images, labels)
    r = {"jax_train_compile_s": jx["train_compile_s"], "jax_infer_compile_s": jx["infer_compile_s"]}
    fns = {"train": {"jax": jx["train"]}, "infer": {"jax": jx["infer"]}}
    if not args.skip_torch:
        say("building the PyTorch model and checking it against ours (inference logits)")
        tm = torch_alexnet(config.model, args.image_size).to(torch_device())
        copy_jax_params(jx["params"], tm, args.image_size)
        diff = max_rel_diff(_float32_logits(config, jx, images), torch_logits(tm, images))
        r["logits_max_rel_diff"] = diff
        if diff > 1e-3:
            say(
                f"IDENTITY CHECK FAILED: the logits differ by {diff:.2e} of their largest value "
                "(> 1e-3): the two models are not the same network."
            )
        if args.torch_compile:
            import torch

            say("torch.compile: the first (warm-up) calls compile PyTorch's model")
            tm = torch.compile(tm)
        for phase, fn in torch_steps(config, tm, images, labels, args.dtype).items():
            fns[phase]["torch"] = fn
    for phase, phase_fns in fns.items():
        what = "training step" if phase == "train" else "inference"
        say(f"timing the {what}: {', '.join(phase_fns)}, {args.warmup} + {args.repeats} rounds")
        for fw, seconds in interleaved_medians(phase_fns, args.warmup, args.repeats).items():
            r[f"{fw}_{phase}_images_per_sec"] = args.batch / seconds
        flops = jx[f"{phase}_flops"]
        r[f"{phase}_flops_per_image"] = flops / args.batch if flops else None
    return r


def _float32_logits(config: Any, jx: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """Our inference logits in float32: the timed inference when it is float32, else a float32
    copy of the model (the identity check compares arithmetic, not rounding)."""
    import jax

    if config.model.compute_dtype == "float32":
        return np.asarray(jx["infer"]())
    from alexnet_jax import models

    model_config = config.model.copy_and_resolve_references()
    model_config.compute_dtype = "float32"
    model = models.create_model(model_config)
    return np.asarray(jax.jit(model.apply)({"params": jx["params"]}, images))


def _derive(r: dict[str, Any]) -> None:
    """Adds the ratios, achieved GFLOP/s, fractions of the peak and the compute floor."""
    peak = r["matmul_peak_gflops"]
    for phase in ("train", "infer"):
        jax_ips, torch_ips = r[f"jax_{phase}_images_per_sec"], r[f"torch_{phase}_images_per_sec"]
        per_image = r[f"{phase}_flops_per_image"]
        r[f"{phase}_speedup_vs_torch"] = _ratio(jax_ips, torch_ips)
        gflops = jax_ips * per_image / 1e9 if jax_ips and per_image else None
        floor = peak * 1e9 / per_image if peak and per_image else None
        r[f"jax_{phase}_gflops_per_sec"] = gflops
        r[f"jax_{phase}_fraction_of_peak"] = _ratio(gflops, peak)
        r[f"floor_{phase}_images_per_sec"] = floor
        r[f"jax_{phase}_fraction_of_floor"] = _ratio(jax_ips, floor)
        r[f"torch_{phase}_fraction_of_floor"] = _ratio(torch_ips, floor)


# --- Output ------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`, or '-' as wide as the spec asks."""
    width = int(re.match(r"\d*", spec).group(0) or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def format_header(r: dict[str, Any]) -> str:
    v = r["versions"]
    torch_part = (
        f"torch {v['torch']} on {r['torch_device']}, {r['torch_threads']} threads"
        if v["torch"]
        else "torch skipped"
    )
    return "\n".join(
        [
            f"# {r['command']}",
            f"# {r['date']}  device {r['device']}  allocator {r['allocator']}",
            f"# jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, {torch_part}, "
            f"python {v['python']}",
            f"# AlexNet (configs/alexnet.py), batch {r['batch_size']}, {r['image_size']}x"
            f"{r['image_size']}, {r['dtype']}, kernels {r['kernels']} ({r['kernels_resolved']}); "
            f"medians of {r['repeats']} after {r['warmup']} "
            "warm-up calls, JAX and PyTorch alternating",
        ]
    )


def format_table(r: dict[str, Any]) -> str:
    """The ratio table, then peak, GFLOP/s and floor lines."""
    lrn = r["lrn"]
    rows = [
        ("training step (img/s)", r["jax_train_images_per_sec"], r["torch_train_images_per_sec"]),
        ("inference (img/s)", r["jax_infer_images_per_sec"], r["torch_infer_images_per_sec"]),
        *((f"LRN {n} fwd+bwd (ms)", v["jax_ms"], v["torch_ms"], "ms") for n, v in lrn.items()),
        ("LRN total (ms)", r["lrn_jax_total_ms"], r["lrn_torch_total_ms"], "ms"),
    ]
    lines = [f"{'':<24}{'JAX':>10}{'PyTorch':>10}{'JAX speedup':>13}"]
    for name, jax_v, torch_v, *unit in rows:
        speedup = _ratio(torch_v, jax_v) if unit else _ratio(jax_v, torch_v)
        lines.append(
            f"{name:<24}{_fmt(jax_v, '10.2f')}{_fmt(torch_v, '10.2f')}"
            f"{_fmt(speedup, '12.2f')}{'x' if speedup else ' '}"
        )
    if r["logits_max_rel_diff"] is not None:
        ok = "ok" if r["logits_max_rel_diff"] <= 1e-3 else "FAILED (> 1e-3)"
        lines.append(
            f"identity: max |logits JAX - PyTorch| / max |logit| = "
            f"{r['logits_max_rel_diff']:.1e} ({ok})"
        )
    if r["jax_train_compile_s"] is not None:
        lines.append(
            f"JAX compile (not timed above): training step {r['jax_train_compile_s']:.1f} s, "
            f"inference {r['jax_infer_compile_s']:.1f} s"
        )
    if r["matmul_peak_gflops"]:
        n = r["matmul_size"]
        lines.append(
            f"{n}x{n} float32 matmul: JAX {_fmt(r['jax_matmul_gflops'], '.1f')}, PyTorch "
            f"{_fmt(r['torch_matmul_gflops'], '.1f')} GFLOP/s -> peak "
            f"{r['matmul_peak_gflops']:.1f} GFLOP/s"
        )
    for phase, what in (("train", "training step"), ("infer", "inference")):
        if not r[f"{phase}_flops_per_image"]:
            continue
        lines.append(
            f"JAX {what}: {r[f'{phase}_flops_per_image'] / 1e9:.2f} GFLOP/image (XLA), "
            f"{_fmt(r[f'jax_{phase}_gflops_per_sec'], '.1f')} GFLOP/s = "
            f"{_fmt(r[f'jax_{phase}_fraction_of_peak'], '.2f')} of peak; floor at peak "
            f"{_fmt(r[f'floor_{phase}_images_per_sec'], '.1f')} img/s, measured/floor JAX "
            f"{_fmt(r[f'jax_{phase}_fraction_of_floor'], '.2f')}, PyTorch "
            f"{_fmt(r[f'torch_{phase}_fraction_of_floor'], '.2f')}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--batch", type=int, default=128, help="Images per step (paper: 128).")
    parser.add_argument("--image-size", type=int, default=227, help="227 (Caffe) or 224.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed calls (median).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed calls before.")
    parser.add_argument("--json", metavar="PATH", help="Write the results there ('-': stdout).")
    parser.add_argument("--skip-torch", action="store_true", help="Time JAX alone.")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="Compute dtype.")
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="Time PyTorch's model under torch.compile instead of eager.",
    )
    parser.add_argument(
        "--kernels",
        choices=("auto", "cpu", "xla"),
        default="auto",
        help="model.kernels: the CPU-tuned ops, XLA's own, or by backend (auto).",
    )
    parser.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="auto",
        help="auto: tcmalloc when found, else glibc_tuned; tcmalloc: require it; glibc_tuned: "
        "glibc malloc keeping its freed blocks (GLIBC_TUNABLES); system: glibc as it is.",
    )
    parser.add_argument("--lrn-only", action="store_true", help="Only the LRN comparison.")
    parser.add_argument("--matmul-size", type=int, default=4096, help="n of the peak matmul.")
    args = parser.parse_args(argv)
    if min(args.batch, args.repeats, args.matmul_size) < 1 or args.warmup < 0:
        parser.error("--batch, --repeats and --matmul-size must be >= 1, --warmup >= 0.")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and prints the header and the ratio table.

    Args:
      argv: the arguments; None reads the command line, and only then may the process re-execute
        itself with tcmalloc preloaded (in-process callers keep the allocator they have).

    Returns:
      The results, as written by --json.
    """
    command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not args.skip_torch and importlib.util.find_spec("torch") is None:
        raise SystemExit(TORCH_MISSING)
    if command_line:
        preload_allocator(MODULE, args.allocator, argv)
    elif args.allocator in ("tcmalloc", "glibc_tuned") and not allocator_in_use().startswith(
        args.allocator
    ):
        raise SystemExit(f"--allocator {args.allocator} is set at start: run `python -m {MODULE}`.")
    out = sys.stderr if args.json == "-" else sys.stdout  # keep stdout pure JSON for '-'
    results = run(args, argv, out)
    print(format_table(results), file=out, flush=True)
    if args.json == "-":
        json.dump(results, sys.stdout, indent=2)
        print()
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return results


if __name__ == "__main__":
    if (main().get("logits_max_rel_diff") or 0.0) > 1e-3:
        sys.exit(1)
