"""The README's multi-host commands, pasted as written on one machine, against one process with
the same devices: final parameters compared leaf by leaf, and the logged curves and errors.

  python -m experiments.checks.multihost_check                 # the full offline default, 525 steps
  python -m experiments.checks.multihost_check --steps=20      # a smoke run
  python -m experiments.checks.multihost_check --grad_sum=psum # the same with jax.lax.psum's order

Runs, each in a fresh workdir (simulated CPU devices, loopback):
  launch    python -m alexnet_jax.launch --processes=2 --cpu_devices=2 --
              --config=configs/default.py
  env       the README's per-host recipe by hand: JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
            JAX_PROCESS_ID set for two `python -m alexnet_jax.main --distributed` processes
  one       XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m alexnet_jax.main
  towers    the paper's layout (one tower per process: 2 processes x 1 device, mesh (1, 2),
            configs/alexnet.py on synthetic 224x224 data, 6 steps) against one process of 2 devices

and writes experiments/results/multiprocess/multihost_check.{txt,json} (multihost_check_psum.*
with --grad_sum=psum).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from alexnet_jax import launch, metrics, orbax_quiet
from experiments import common, files

TOWERS = [*common.SMALL_ALEXNET, "--config.mesh.data=1", "--config.mesh.tower=2"]


def _run(cmds: list[tuple[list[str], dict]], log: Path) -> float:
    """Starts the commands together, waits for all; raises with the log's tail if one fails."""
    started = time.perf_counter()
    with open(log, "w") as f:
        procs = [
            subprocess.Popen(cmd, env=env, cwd=common.ROOT, stdout=f, stderr=subprocess.STDOUT)
            for cmd, env in cmds
        ]
        codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{log.name}: exit statuses {codes}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def _final(workdir: Path) -> dict:
    events = metrics.read_metrics(str(workdir))
    last = {}
    for e in events:
        last.update({k: v for k, v in e.items() if k.startswith(("eval_", "test_"))})
    return {
        "train_loss": [e["train_loss"] for e in events if "train_loss" in e],
        "grad_norm": [e["grad_norm"] for e in events if "grad_norm" in e],
        "final": last,
    }


def _compare(a: Path, b: Path) -> dict:
    pa = jax.tree.leaves(common.restore_params(a)[1])
    pb = jax.tree.leaves(common.restore_params(b)[1])
    fa, fb = (np.concatenate([np.asarray(p, np.float64).ravel() for p in ps]) for ps in (pa, pb))
    ca, cb = _final(a), _final(b)
    return {
        "leaves": len(pa),
        "leaves_bit_identical": sum(np.array_equal(x, y) for x, y in zip(pa, pb)),
        "elements_different": int(np.sum(fa != fb)),
        "max_abs_diff": float(np.abs(fa - fb).max()),
        "relative_l2": float(np.linalg.norm(fa - fb) / np.linalg.norm(fb)),
        "train_loss_identical": ca["train_loss"] == cb["train_loss"],
        "grad_norm_identical": ca["grad_norm"] == cb["grad_norm"],
        "logged_steps": len(ca["train_loss"]),
        "final": [ca["final"], cb["final"]],
    }


def main(argv=None) -> dict:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=-1, help="> 0: this many steps instead")
    parser.add_argument(
        "--grad_sum",
        default="ordered",
        choices=["ordered", "psum"],
        help="config.mesh.grad_sum of every run",
    )
    parser.add_argument("--out", default=None, help="default: experiments/results/multiprocess")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.ERROR)  # Orbax's notes while restoring the final parameters

    base = Path(tempfile.mkdtemp(prefix="alexnet_jax_multihost_"))
    out = common.results_dir("multiprocess", args.out)
    default = ["--config=configs/default.py"]
    towers = list(TOWERS)
    if args.grad_sum != "ordered":
        default.append(f"--config.mesh.grad_sum={args.grad_sum}")
        towers.append(f"--config.mesh.grad_sum={args.grad_sum}")
    if args.steps > 0:
        every = max(1, args.steps // 2)
        default += [
            f"--config.num_train_steps={args.steps}",
            f"--config.eval_every_steps={every}",
            f"--config.checkpoint_every_steps={every}",
        ]
    main_cmd = [sys.executable, "-m", "alexnet_jax.main"]
    launch_cmd = [sys.executable, "-m", "alexnet_jax.launch"]
    port = launch.free_port()
    runs = {
        "launch": [
            (
                [
                    *launch_cmd,
                    "--processes=2",
                    "--cpu_devices=2",
                    "--",
                    *default,
                    f"--workdir={base / 'launch'}",
                ],
                common.subprocess_env(),
            )
        ],
        "env": [
            (
                [*main_cmd, "--distributed", *default, f"--workdir={base / 'env'}"],
                dict(
                    common.subprocess_env(2),
                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES="2",
                    JAX_PROCESS_ID=str(i),
                ),
            )
            for i in range(2)
        ],
        "one": [([*main_cmd, *default, f"--workdir={base / 'one'}"], common.subprocess_env(4))],
        "towers_two": [
            (
                [
                    *launch_cmd,
                    "--processes=2",
                    "--cpu_devices=1",
                    "--",
                    *towers,
                    f"--workdir={base / 'towers_two'}",
                ],
                common.subprocess_env(),
            )
        ],
        "towers_one": [
            ([*main_cmd, *towers, f"--workdir={base / 'towers_one'}"], common.subprocess_env(2))
        ],
    }
    seconds = {}
    for name, cmds in runs.items():
        print(f"running {name} ...", flush=True)
        seconds[name] = round(_run(cmds, base / f"{name}.log"), 1)
    result = {
        "command": "python -m experiments.checks.multihost_check"
        + (f" --steps={args.steps}" if args.steps > 0 else "")
        + (f" --grad_sum={args.grad_sum}" if args.grad_sum != "ordered" else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": common.machine(),
        "jax": jax.__version__,
        "seconds": seconds,
        "launch_vs_one": _compare(base / "launch", base / "one"),
        "env_vs_one": _compare(base / "env", base / "one"),
        "towers_two_vs_one": _compare(base / "towers_two", base / "towers_one"),
    }
    lines = [
        f"# {result['command']}  ({result['machine']})",
        "# launch: python -m alexnet_jax.launch --processes=2 --cpu_devices=2 -- "
        f"{' '.join(default)}",
        "# env: JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i "
        f"XLA_FLAGS=...count=2 python -m alexnet_jax.main --distributed {' '.join(default)}",
        f"# one: XLA_FLAGS=...count=4 python -m alexnet_jax.main {' '.join(default)}",
        "# towers_two: launch --processes=2 --cpu_devices=1 -- <configs/alexnet.py, synthetic, "
        "6 steps, mesh (1, 2)>; towers_one: the same in one process of 2 devices",
    ]
    for key in ("launch_vs_one", "env_vs_one", "towers_two_vs_one"):
        c = result[key]
        lines.append(
            f"{key}: {c['leaves_bit_identical']}/{c['leaves']} parameter leaves bit-identical, "
            f"{c['elements_different']} elements differ (max abs {c['max_abs_diff']:.3g}, "
            f"relative L2 {c['relative_l2']:.3g}); train_loss identical at all "
            f"{c['logged_steps']} logged steps: {c['train_loss_identical']}, grad_norm: "
            f"{c['grad_norm_identical']}"
        )
        names = ("towers_two", "towers_one") if key.startswith("towers") else key.split("_vs_")
        for name, final in zip(names, c["final"]):
            shown = ", ".join(
                f"{k} {v:.0f}" if k.endswith("examples") else f"{k} {100 * v:.2f}%"
                for k, v in sorted(final.items())
                if k.endswith(("top1_error", "top5_error", "examples"))
            )
            lines.append(f"  {name}: {shown}")
    lines.append(f"seconds per run: {seconds}")
    text = "\n".join(lines) + "\n"
    name = "multihost_check" + ("" if args.grad_sum == "ordered" else f"_{args.grad_sum}")
    files.write_report(out, name, text, result)
    return result


if __name__ == "__main__":
    main()
