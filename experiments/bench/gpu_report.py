"""One command for a GPU host: every speed measurement the project needs, under one directory.

  python -m experiments.bench.gpu_report [--out DIR] [--skip-torch] [--quick]

Writes experiments/results/gpu/<date>_<device>/ (or --out): `report.md` (the tables),
`report.json` (every number, the versions, the commands) and each step's own output. The steps,
each in its own process (so that no process holds the GPU's memory while another measures, and
a step that fails is reported and the rest still run):

1. the environment: `nvidia-smi`, the JAX devices, the versions of JAX, jaxlib, Flax, Optax,
   PyTorch and CUDA as they are on the host (they may differ from requirements.txt);
2. the PyTorch-comparison harness (`experiments/bench/benchmark.py`) at batch 128 and 512, float32
   and bfloat16, `model.kernels='auto'` (XLA's own convolutions on a GPU) against the
   identical PyTorch model, eager; PyTorch's float32 matmuls and convolutions may use TF32
   (its default for cuDNN convolutions) and so may XLA's (`jax_default_matmul_precision`
   default): the report prints both settings;
3. the other kernel path (`model.kernels='cpu'`, the CPU-tuned ops) at batch 512, JAX only,
   to show which `auto` should pick on the GPU;
4. PyTorch with `torch.compile` at batch 512, bfloat16, when it compiles on the host;
5. the tower split when the host has two devices or more: the project's training step with
   both towers on one device (mesh (1, 1)) against one tower per device (mesh (1, 2)), img/s
   and the ratio;
6. the host input pipeline (`experiments/bench/input_pipeline_benchmark.py`) on prepared 256x256
   JPEGs with num_workers swept up to the host's cores, next to the training step's img/s, so
   it is plain whether the input keeps up.

It needs JAX, Flax, Optax, NumPy and Pillow, PyTorch for the comparison (else `--skip-torch`),
and Grain and ml_collections for step 6 only (skipped with a note when missing). A host without
network access can bring missing wheels as docs/performance.md says. `--quick` runs every step
at the smallest sizes (batch 2, one repeat, float32, no torch.compile): what the test suite runs
on the CPU so that the command cannot rot; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results" / "gpu"
ROOT = Path(__file__).resolve().parents[2]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(command: list[str], timeout: float, log: Path) -> tuple[int, str]:
    """Runs a step; its stdout+stderr go to `log`. Returns (status, stdout)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
        status, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        status, out = (
            124,
            (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""),
        )
        err = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    log.write_text(f"$ {shlex.join(command)}\n# status {status}, {seconds:.1f} s\n{out}\n"
                   f"--- stderr ---\n{err}")  # fmt: skip
    return status, out


# --- Steps run in their own process (python -m experiments.bench.gpu_report --step NAME) -------


def _environment() -> dict[str, Any]:
    import jax

    versions = {"python": sys.version.split()[0], "jax": jax.__version__}
    for name in ("jaxlib", "flax", "optax", "numpy", "torch", "grain", "ml_collections"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or unversioned: say so
            versions[name] = None
    info = {
        "versions": versions,
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}: {d.device_kind}" for d in jax.devices()],
        "device_count": jax.device_count(),
        "cpu_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
    }
    if versions["torch"]:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["torch_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def _tower_split(batch: int, repeats: int) -> dict[str, Any]:
    """The training step on one device (both towers) and with one tower per device."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from alexnet_jax import train
    from configs import alexnet
    from experiments.bench.timing import interleaved_medians

    config = alexnet.get_config()
    config.batch_size = batch
    rng = np.random.default_rng(0)
    images = (60 * rng.standard_normal((batch, 224, 224, 3))).astype(np.float32)
    labels = rng.integers(0, 1000, batch).astype(np.int32)
    fns, meshes = {}, {}
    for name, shape in {"one_device": (1, 1), "two_devices": (1, 2)}.items():
        mesh, state, step = train.mesh_step(config, shape)
        state = [state]
        with jax.set_mesh(mesh):
            x, y = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (images, labels))

        def run(step=step, state=state, x=x, y=y, mesh=mesh):
            with jax.set_mesh(mesh):
                state[0], out = step(state[0], x, y, None)
            return out

        fns[name], meshes[name] = run, dict(mesh.shape)
    seconds = interleaved_medians(fns, 2, repeats)
    ips = {k: batch / v for k, v in seconds.items()}
    return {
        "batch": batch,
        "meshes": meshes,
        "images_per_sec": ips,
        "ratio": ips["two_devices"] / ips["one_device"],
    }


def _step_main(step: str, args: argparse.Namespace) -> None:
    if step == "environment":
        print(json.dumps(_environment()))
    elif step == "tower_split":
        print(json.dumps(_tower_split(args.batch, args.repeats)))
    else:
        raise SystemExit(f"unknown --step {step!r}")


# --- The report -------------------------------------------------------------------------------


def _harness(out: Path, tag: str, flags: list[str], quick: bool, timeout: float) -> dict | None:
    json_path = out / f"benchmark_{tag}.json"
    benchmark = [sys.executable, "-m", "experiments.bench.benchmark"]
    command = [*benchmark, *flags, "--json", str(json_path)]
    if quick:
        command += ["--repeats", "1", "--warmup", "1", "--matmul-size", "256"]
    say(f"harness {tag}: {' '.join(flags)}")
    status, _ = _run(command, timeout, out / f"benchmark_{tag}.txt")
    if status != 0 or not json_path.exists():
        say(f"  failed (status {status}); see {out / f'benchmark_{tag}.txt'}")
        return None
    return json.loads(json_path.read_text())


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="Output directory (default: results/gpu/...).")
    parser.add_argument("--skip-torch", action="store_true", help="Time JAX alone.")
    parser.add_argument("--quick", action="store_true", help="Smallest sizes: a smoke test.")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return _step_main(args.step, args) or {}

    started = time.perf_counter()
    me = [sys.executable, "-m", "experiments.bench.gpu_report"]
    tmp = Path(args.out or RESULTS / "_running")
    tmp.mkdir(parents=True, exist_ok=True)
    status, text = _run([*me, "--step", "environment"], 300, tmp / "environment.txt")
    if status != 0:
        raise SystemExit(f"the environment step failed; see {tmp / 'environment.txt'}")
    env = json.loads(text.strip().splitlines()[-1])
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
        (tmp / "nvidia-smi.txt").write_text(smi)
        env["nvidia_smi"] = smi
    device = re.sub(r"[^A-Za-z0-9]+", "-", env["devices"][0].split(": ", 1)[-1]).strip("-")
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS / f"{date}_{device}"
    if out != tmp:
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            shutil.move(str(f), out / f.name)
        tmp.rmdir()
    say(f"{env['devices'][0]} x {env['device_count']}, JAX {env['versions']['jax']}; writing {out}")

    torch_ok = not args.skip_torch and importlib.util.find_spec("torch") is not None
    base = ["--skip-torch"] if not torch_ok else []
    batches = (2,) if args.quick else (128, 512)
    big = batches[-1]
    timeout = 600 if not args.quick else 300
    runs: dict[str, Any] = {}
    # --quick: one float32 run per kernel path, no torch.compile (inductor on a CPU takes minutes).
    dtypes = ("float32",) if args.quick else ("float32", "bfloat16")
    for batch in batches:
        for dtype in dtypes:
            tag = f"b{batch}_{dtype}_auto"
            flags = [*base, "--batch", str(batch), "--dtype", dtype, "--kernels", "auto"]
            runs[tag] = _harness(out, tag, flags, args.quick, timeout)
    for dtype in dtypes:
        tag = f"b{big}_{dtype}_cpu"
        flags = ["--skip-torch", "--batch", str(big), "--dtype", dtype, "--kernels", "cpu"]
        runs[tag] = _harness(out, tag, flags, args.quick, timeout)
    if torch_ok and not args.quick:
        tag = f"b{big}_bfloat16_torch_compile"
        flags = ["--batch", str(big), "--dtype", "bfloat16", "--torch-compile"]
        runs[tag] = _harness(out, tag, flags, args.quick, timeout)

    tower = None
    if env["device_count"] >= 2:
        say("tower split: 1 vs 2 devices")
        command = [*me, "--step", "tower_split", "--batch", str(big),
                   "--repeats", "1" if args.quick else "10"]  # fmt: skip
        status, text = _run(command, timeout, out / "tower_split.txt")
        tower = json.loads(text.strip().splitlines()[-1]) if status == 0 else {"failed": status}

    pipeline = None
    if importlib.util.find_spec("grain") and importlib.util.find_spec("ml_collections"):
        cores = env["cpu_cores"] or 1
        workers = sorted({0, 1, 2, *(w for w in (4, 8, 16, 32) if w <= cores)})
        if args.quick:
            workers = [0, 1]
        say(f"input pipeline, num_workers {workers}")
        code = (
            "from configs import alexnet; "
            "from experiments.bench import input_pipeline_benchmark as b; "
            "import json; c = alexnet.get_config(); "
            f"r = b.run(c, workers={tuple(workers)!r}, num_images={64 if args.quick else 2048}, "
            f"seconds={0.5 if args.quick else 4.0}, model_batch={2 if args.quick else 128}, "
            f"repeats={1 if args.quick else 5}); print(json.dumps(r))"
        )
        status, text = _run([sys.executable, "-c", code], timeout, out / "input_pipeline.txt")
        pipeline = json.loads(text.strip().splitlines()[-1]) if status == 0 else {"failed": status}
        if status == 0:
            pipeline["model_batch"] = 2 if args.quick else 128
    else:
        say("input pipeline skipped: Grain or ml_collections is not installed")

    report = {
        "date": date,
        "command": shlex.join(
            ["python", "-m", "experiments.bench.gpu_report", *(argv or sys.argv[1:])]
        ),
        "quick": args.quick,
        "environment": env,
        "harness": runs,
        "tower_split": tower,
        "input_pipeline": pipeline,
        "seconds": time.perf_counter() - started,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(format_report(report))
    say(f"done in {report['seconds']:.0f} s: {out / 'report.md'}")
    print(format_report(report))
    return report


def _missing(value: dict | None, absent: str, log: str) -> str | None:
    """The line for a step that did not run (`absent`) or failed, else None."""
    if value is None:
        return absent
    if "failed" in value:
        return f"Failed (status {value['failed']}); see {log}."
    return None


def _tower_lines(t: dict) -> list[str]:
    ips = t["images_per_sec"]
    return [
        f"Batch {t['batch']}, float32: both towers on one device {ips['one_device']:.1f} img/s, "
        f"one tower per device (mesh {t['meshes']['two_devices']}) {ips['two_devices']:.1f} "
        f"img/s: **{t['ratio']:.2f}x**."
    ]


def _pipeline_lines(p: dict) -> list[str]:
    host = {k.split("_w")[-1]: v for k, v in p.items() if k.startswith("host_256_w")}
    consumed = p["model_batch"] / p["train_step_ms"] * 1e3
    best = max(host.values())
    verdict = (
        "the input keeps up."
        if best >= consumed
        else "**the input is the bottleneck** (more cores or workers, or prepared data)."
    )
    return [
        "| num_workers | host images/s |",
        "|---|---|",
        *(f"| {w} | {v:,.0f} |" for w, v in host.items()),
        "",
        f"The training step (augmentation on the device included, batch {p['model_batch']}) "
        f"consumes {consumed:,.0f} images/s; the host delivers up to {best:,.0f}: {verdict}",
    ]


def format_report(r: dict[str, Any]) -> str:
    env = r["environment"]
    v = env["versions"]
    lines = [
        f"# GPU report, {r['date']}"
        + (" (QUICK: a smoke test, its numbers mean nothing)" if r["quick"] else ""),  # fmt: skip
        "",
        f"`{r['command']}`: {env['devices'][0]} x {env['device_count']}, {env['cpu_cores']} CPU "
        f"cores; JAX {v['jax']}, jaxlib {v['jaxlib']}, Flax {v['flax']}, Optax {v['optax']}, "
        f"PyTorch {v['torch']} (CUDA {env.get('torch_cuda')}); JAX matmul precision "
        f"{env['jax_default_matmul_precision']}, PyTorch TF32: cuDNN "
        f"{env.get('torch_cudnn_allow_tf32')}, matmul {env.get('torch_matmul_allow_tf32')}; "
        f"{r['seconds']:.0f} s in all.",
        "",
        "| run | kernels | train img/s JAX | PyTorch | JAX / PyTorch | infer img/s JAX | PyTorch "
        "| JAX / PyTorch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tag, h in r["harness"].items():
        if h is None:
            lines.append(f"| {tag} | failed (see benchmark_{tag}.txt) | | | | | | |")
            continue
        run = f"batch {h['batch_size']}, {h['dtype']}" + (
            ", torch.compile" if h.get("torch_compile") else ""
        )
        cells = [
            run,
            f"{h['kernels']} ({h['kernels_resolved']})",
            _fmt(h["jax_train_images_per_sec"]),
            _fmt(h["torch_train_images_per_sec"]),
            _fmt(h["train_speedup_vs_torch"], ".2f"),
            _fmt(h["jax_infer_images_per_sec"]),
            _fmt(h["torch_infer_images_per_sec"]),
            _fmt(h["infer_speedup_vs_torch"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    sections = (
        ("Tower split", r["tower_split"], "One device on this host: not measured.",
         "tower_split.txt", _tower_lines),
        ("Input pipeline (prepared 256x256 JPEGs)", r["input_pipeline"],
         "Skipped: Grain or ml_collections is not installed.", "input_pipeline.txt",
         _pipeline_lines),
    )  # fmt: skip
    for title, value, absent, log, body in sections:
        note = _missing(value, absent, log)
        lines += ["", f"## {title}", "", *([note] if note else body(value))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
