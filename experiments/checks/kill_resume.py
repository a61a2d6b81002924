"""SIGKILL at random steps of one run, rerun after each kill, and compare the end with an
uninterrupted run: final parameters leaf by leaf and every training event.

  python -m experiments.checks.kill_resume                  # 20 kills of a 60-step run
  python -m experiments.checks.kill_resume --kills=3        # quicker

The run is `python -m alexnet_jax.main --config=configs/default.py --config.num_train_steps=60
--config.checkpoint_every_steps=7 --config.log_every_steps=1 ...` (a checkpoint every 7 steps,
so most kills land between checkpoints and between windows of logged metrics). The kill steps are
distinct steps drawn at random (seeded) from 1-59, in order; each kill waits for the training
event of its step in the rerun's metrics.jsonl, then sends SIGKILL. Writes
experiments/results/faults/kill_resume.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from alexnet_jax import metrics, orbax_quiet
from experiments import common, files

ARGS = [
    "--config=configs/default.py",
    "--config.num_train_steps=60",
    "--config.checkpoint_every_steps=7",
    "--config.eval_every_steps=30",
    "--config.log_every_steps=1",
    "--config.progress_bar=False",
    "--config.test_split=",
    "--allocator=system",
]


def _start(workdir: Path) -> subprocess.Popen:
    env = common.subprocess_env()
    return subprocess.Popen(
        [sys.executable, "-m", "alexnet_jax.main", *ARGS, f"--workdir={workdir}"],
        cwd=common.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _last_event(workdir: Path, since: float) -> int:
    """Step of the last event in metrics.jsonl if the file was written after `since` (a
    rerun first drops the events its killed predecessor wrote after its last checkpoint)."""
    path = workdir / "metrics.jsonl"
    if not path.exists() or path.stat().st_mtime < since:
        return 0
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def _events(workdir: Path) -> list[dict]:
    return [
        {k: v for k, v in e.items() if k != "images_per_sec"}
        for e in metrics.read_metrics(str(workdir))
        if "train_loss" in e
    ]


def main(argv=None) -> dict:
    orbax_quiet.install()  # drop Orbax's notes on restoring, as alexnet_jax.main does
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="default: experiments/results/faults")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.ERROR)
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="alexnet_jax_kills_"))

    reference = base / "uninterrupted"
    proc = _start(reference)
    out = proc.communicate(timeout=900)[0]
    if proc.returncode:
        raise SystemExit(out[-3000:])

    workdir = base / "killed"
    kills = []
    # The kill points: distinct steps drawn at random from the whole run, taken in order.
    for target in sorted(rng.sample(range(1, 60), args.kills)):
        started = time.time()
        proc = _start(workdir)
        while proc.poll() is None and _last_event(workdir, started) < target:
            time.sleep(0.005)
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before step {target}:\n{proc.communicate()[0]}")
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        at = _last_event(workdir, started)
        saved = common.latest_checkpoint_step(workdir)
        kills.append({"target_step": target, "killed_after_event": at, "latest_checkpoint": saved})
        print(f"kill {len(kills)}: after step {at} (target {target}); latest checkpoint {saved}",
              flush=True)  # fmt: skip
    proc = _start(workdir)
    out = proc.communicate(timeout=900)[0]
    if proc.returncode:
        raise SystemExit(out[-3000:])
    took_over = "took over the stale lock" in out

    pa = jax.tree.leaves(common.restore_params(workdir)[1])
    pb = jax.tree.leaves(common.restore_params(reference)[1])
    same = sum(np.array_equal(x, y) for x, y in zip(pa, pb))
    events_same = _events(workdir) == _events(reference)
    command = (
        "python -m experiments.checks.kill_resume"
        + (f" --kills={args.kills}" if args.kills != 20 else "")
        + (f" --seed={args.seed}" if args.seed else "")
    )
    result = {
        "command": command,
        "machine": common.machine(),
        "args": ARGS,
        "kills": kills,
        "final_leaves_bit_identical": f"{same}/{len(pa)}",
        "training_events_identical": events_same,
        "logged_steps": len(_events(workdir)),
        "last_rerun_took_over_stale_lock": took_over,
    }
    text = (
        f"# {command}  ({result['machine']})\n"
        f"# python -m alexnet_jax.main {' '.join(ARGS)}\n"
        + "".join(
            f"kill {i}: SIGKILL after the event of step {k['killed_after_event']} (drawn: "
            f"{k['target_step']}); latest complete checkpoint {k['latest_checkpoint']}\n"
            for i, k in enumerate(kills, 1)
        )
        + f"after {len(kills)} kills and reruns: {same}/{len(pa)} parameter leaves bit-identical "
        f"to the uninterrupted run; all {result['logged_steps']} training events identical "
        f"(throughput aside): {events_same}\n"
    )
    out_dir = common.results_dir("faults", args.out)
    files.write_report(out_dir, "kill_resume", text, result)
    return result


if __name__ == "__main__":
    main()
