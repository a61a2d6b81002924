"""Writes the fixtures of runs recorded by earlier versions (tests/fixtures/old_runs/).

Each fixture is a workdir that an older commit of this project wrote (config.json, metrics,
its checkpoint of step 6) for a tiny version of the offline default (the §3.3 net on 8x8
digit crops, 219,466 parameters), and `expected.json`: what the same commit computed when it
resumed that run to step 12 (the SHA-256 of every final parameter, and its last line).
tests/test_upgrade.py resumes a copy with today's code and requires the same parameters, bit
for bit, with a notice for each migration and nothing renamed. `expected.json` records the CPU
it was made on: on a CPU with other features the test runs the old commit itself, from this
checkout's git history, for its reference (`resumed_by_old_code`).

  python -m tests.old_run_fixtures          # needs the git history (a clone, not a copy)

Each commit's code is taken with `git archive` into a temporary folder and run there with this
environment's packages (requirements.txt has not changed since those commits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from alexnet_jax import checkpoint, integrity
from experiments import common

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "old_runs"

# (folder, commit, what the fixture is before, the config overrides its recorded config needs
# on today's command line beyond the shared ones).
RUNS = (
    (
        "before_optax_schedules",
        "06ec737",
        "the Optax schedules change (7bf32c6: the optimizer state gained the schedule's count "
        "leaf) and the fields added since (model.lrn_kind, test_split, ..., "
        "model.dropout_scaling); the commit of the issue's report",
        ["--config.train_split=train", "--config.eval_split=test", "--config.test_split="],
    ),
    (
        "before_dropout_scaling",
        "d035bab",
        "model.dropout_scaling (3e37686), which the §3.3 net does not have",
        [],
    ),
)
SHARED = [
    "--config=configs/default.py",
    "--config.image_size=8",
    "--config.resize_size=10",
    "--config.checkpoint_every_steps=3",
    "--config.keep_checkpoints=1",
    "--config.log_every_steps=3",
]
SAVED_STEP, FINAL_STEP = 6, 12


def params_sha256(workdir: Path) -> tuple[int, dict[str, str]]:
    """(step, {'conv1/kernel': SHA-256 of its float32 bytes, ...}) of a run's latest checkpoint."""
    step, params = checkpoint.restore_params(str(workdir))
    flat = integrity.leaf_paths(params)
    return step, {
        k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in flat.items()
    }


def cpu_signature() -> dict[str, str]:
    """The CPU's model name and a hash of its feature flags: XLA compiles its CPU kernels for
    the host's features, so the same flags give the same bits, other flags may not."""
    model, flags = "?", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "?":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return {"model": model, "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()}


def has_commit(commit: str) -> bool:
    """Whether this checkout's git history holds `commit` (a fresh clone does; a copy not)."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _code(commit: str, scratch: Path) -> Path:
    """The commit's files in scratch/commit (`git archive`)."""
    code = scratch / commit
    if not code.exists():
        code.mkdir(parents=True)
        subprocess.run(f"git -C {ROOT} archive {commit} | tar -x -C {code}", shell=True,
                       check=True)  # fmt: skip
    return code


def resumed_by_old_code(folder: str, scratch: Path) -> tuple[str, dict[str, str]]:
    """(last line, params SHA-256) of the fixture's run resumed to the final step by the commit
    that wrote it, on this machine: the reference where this CPU is not the fixture's."""
    commit = next(c for f, c, _, _ in RUNS if f == folder)
    run = scratch / f"{folder}_old_resume"
    shutil.copytree(FIXTURES / folder / "workdir", run)
    last = _train(_code(commit, scratch), run, FINAL_STEP, [])
    return last, params_sha256(run)[1]


def _train(code: Path, workdir: Path, steps: int, extra: list[str]) -> str:
    env = common.subprocess_env()
    env["PYTHONPATH"] = str(code)
    done = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.main", *SHARED, *extra,
         f"--config.num_train_steps={steps}", f"--workdir={workdir}"],
        cwd=code, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{code.name}: the run failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def make(folder: str, commit: str, before: str, extra: list[str], scratch: Path) -> dict:
    code = _code(commit, scratch)
    full = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True, check=True
    ).stdout.strip()
    run = scratch / f"{folder}_run"
    _train(code, run, SAVED_STEP, [])
    target = FIXTURES / folder / "workdir"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run, target)
    shutil.rmtree(target / "tensorboard", ignore_errors=True)  # not read on resume
    last = _train(code, run, FINAL_STEP, [])
    step, digests = params_sha256(run)
    expected = {
        "commit": full,
        "before": before,
        "made_with": f"python -m alexnet_jax.main {' '.join(SHARED)} "
        f"--config.num_train_steps={SAVED_STEP} --workdir=WORKDIR (at commit {commit})",
        "resumed_by_that_commit": f"the same with --config.num_train_steps={FINAL_STEP}",
        "resume_args": [*SHARED, *extra, f"--config.num_train_steps={FINAL_STEP}"],
        "saved_step": SAVED_STEP,
        "final_step": step,
        "final_line": last,
        "params_sha256": digests,
        "cpu": cpu_signature(),
    }
    (FIXTURES / folder / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    jax.config.update("jax_platforms", "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        for folder, commit, before, extra in RUNS:
            expected = make(folder, commit, before, extra, Path(scratch))
            print(f"{folder}: commit {commit}, step {expected['final_step']}: "
                  f"{expected['final_line']}")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
