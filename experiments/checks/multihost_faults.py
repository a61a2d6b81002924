"""One host preempted, one host dead, the coordinator dead: what two processes on loopback do,
timed, and whether rerunning the same command ends where an uninterrupted run ends.

  python -m experiments.checks.multihost_faults                 # 60 steps, a checkpoint every 20
  python -m experiments.checks.multihost_faults --steps=30      # shorter

Every run is `python -m alexnet_jax.launch --processes=2 --cpu_devices=2 -- --config=configs/
default.py --config.num_train_steps=S --peer_timeout_s=10 ...`. Scenarios, each in its own
workdir, after process 0 has printed the evaluation of step S/3 (and, for the kills, once the
checkpoint of that step is complete):

  sigterm_1   SIGTERM to process 1 (one preempted host)
  sigkill_1   SIGKILL of process 1 and its training child (a crashed host)
  sigkill_0   SIGKILL of process 0, the coordinator, and its child

Each is then rerun with the same command to the end and its final parameters compared with an
uninterrupted run's. The seconds are from the signal to the launcher's `exit statuses` line.
Writes experiments/results/multiprocess/faults.{txt,json} and one log per scenario (gloo's
connection lines and C++/Python stack frames removed).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from alexnet_jax import orbax_quiet
from experiments import common, files

NOISE = re.compile(
    r"^\[\d\] (\[Gloo\]|Thread 0x|  File |Extension modules|\*\*\* Check failure|    @ |"
    r"@     0x|Current thread|  <no Python frame>)"
)


def _command(args: list[str], workdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "alexnet_jax.launch",
        "--processes=2",
        "--cpu_devices=2",
        "--",
        *args,
        f"--workdir={workdir}",
    ]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _saved(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
    )


def _complete(args, workdir: Path) -> str:
    run = subprocess.run(
        _command(args, workdir),
        env=common.subprocess_env(),
        cwd=common.ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if run.returncode:
        raise SystemExit(f"{workdir.name}: exit status {run.returncode}\n{run.stdout[-3000:]}")
    return run.stdout


def _fault(args, workdir: Path, scenario: str, at_step: int) -> dict:
    proc = subprocess.Popen(
        _command(args, workdir),
        env=common.subprocess_env(),
        cwd=common.ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    pids, lines = {}, []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[launch] process"):
            pids[int(line.split()[2].rstrip(":"))] = int(line.split()[-1])
        if line.startswith(f"[0] step {at_step}: eval"):
            break
    else:
        raise SystemExit(f"{scenario}: the run ended before step {at_step}:\n{''.join(lines)}")
    target = int(scenario[-1])
    if scenario.startswith("sigterm"):
        sent = time.monotonic()
        os.kill(pids[target], signal.SIGTERM)
    else:
        deadline = time.monotonic() + 120
        while at_step not in _saved(workdir) and time.monotonic() < deadline:
            time.sleep(0.1)  # Orbax renames the checkpoint's folder when it is complete
        sent = time.monotonic()
        for pid in [*_children(pids[target]), pids[target]]:
            os.kill(pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=300)
    seconds = time.monotonic() - sent
    log = "".join(lines) + rest
    statuses = re.findall(r"\[launch\] exit statuses (\[.*\])", log)
    message = [ln for ln in log.splitlines() if "stopped answering" in ln or "SIGTERM:" in ln]
    return {
        "signal_after_step": at_step,
        "seconds_to_exit": round(seconds, 1),
        "exit_statuses": statuses[-1] if statuses else None,
        "checkpoints_after": _saved(workdir),
        "message": message,
        "log": "\n".join(ln for ln in log.splitlines() if not NOISE.match(ln)) + "\n",
    }


def _same(a: Path, b: Path) -> tuple[int, int]:
    pa = jax.tree.leaves(common.restore_params(a)[1])
    pb = jax.tree.leaves(common.restore_params(b)[1])
    return sum(np.array_equal(x, y) for x, y in zip(pa, pb)), len(pa)


def main(argv=None) -> dict:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default=None, help="default: experiments/results/multiprocess")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.ERROR)

    every = max(1, args.steps // 3)
    run_args = [
        "--config=configs/default.py",
        f"--config.num_train_steps={args.steps}",
        f"--config.eval_every_steps={every}",
        f"--config.checkpoint_every_steps={every}",
        "--config.log_every_steps=5",
        "--config.progress_bar=False",
        "--peer_timeout_s=10",
    ]
    base = Path(tempfile.mkdtemp(prefix="alexnet_jax_faults_"))
    out = common.results_dir("multiprocess", args.out)
    print("uninterrupted run ...", flush=True)
    _complete(run_args, base / "uninterrupted")
    scenarios = {}
    for scenario in ("sigterm_1", "sigkill_1", "sigkill_0"):
        print(f"{scenario} ...", flush=True)
        found = _fault(run_args, base / scenario, scenario, every)
        (out / f"faults_{scenario}.log").write_text(found.pop("log"))
        rerun = _complete(run_args, base / scenario)
        resumed = re.findall(r"resumed from the checkpoint of step (\d+)", rerun)
        found["rerun_resumed_from"] = int(resumed[0]) if resumed else None
        same, leaves = _same(base / scenario, base / "uninterrupted")
        found["rerun_leaves_bit_identical"] = f"{same}/{leaves}"
        scenarios[scenario] = found
        print(f"  {found}", flush=True)
    command = "python -m experiments.checks.multihost_faults" + (
        f" --steps={args.steps}" if args.steps != 60 else ""
    )
    result = {
        "command": command,
        "machine": common.machine(),
        "args": run_args,
        "scenarios": scenarios,
    }
    lines = [
        f"# {command}  ({result['machine']})",
        "# python -m alexnet_jax.launch --processes=2 --cpu_devices=2 -- " + " ".join(run_args),
    ]
    for name, s in scenarios.items():
        lines.append(
            f"{name}: signal after step {s['signal_after_step']}; exit statuses "
            f"{s['exit_statuses']} {s['seconds_to_exit']} s after the signal; checkpoints "
            f"{s['checkpoints_after']}; rerun resumed from step {s['rerun_resumed_from']} and "
            f"ended with {s['rerun_leaves_bit_identical']} parameter leaves bit-identical to "
            "the uninterrupted run"
        )
        lines += [f"  > {m}" for m in s["message"]]
    text = "\n".join(lines) + "\n"
    files.write_report(out, "faults", text, result)
    return result


if __name__ == "__main__":
    main()
