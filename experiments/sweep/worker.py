"""One run of a sweep in this process: `run_inline` (the inline launcher, and what
experiments/paper/ablations.py runs through), and `train`, the training process that a job
(experiments/sweep/job.py) starts as `python -m experiments.sweep.worker train SWEEP RUN_ID`.

Both run `common.resumable_run` in the run's folder and record its state in its status file.
JAX (experiments.common) is imported inside the functions: `train` must first re-execute the
process with the allocator (`allocator.preload_allocator`) before JAX loads.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from alexnet_jax import orbax_quiet
from alexnet_jax import workdir as workdir_lib
from experiments.sweep import folder


def run_inline(sweep: Path, rid: str, config: Any) -> dict:
    """Runs one run of a sweep in this process (the `inline` launcher, and what
    experiments/paper/ablations.py runs through): `common.resumable_run` in its folder, its
    state in its status file. Returns resumable_run's outcome.

    Raises:
      SystemExit: training stopped on SIGTERM (its checkpoint is saved; rerun to continue).
      Exception: the run failed (its status says why).
    """
    from experiments import common  # JAX: see the module's docstring

    previous = folder.read_status(sweep, rid)
    folder.update_status(
        sweep, rid, state="running", pid=os.getpid(), job_pid=os.getpid(),
        job_start=workdir_lib.kernel_start(os.getpid()), host=socket.gethostname(),
        attempts=previous.get("attempts", 0) + 1, reason=None, started=time.time(),
    )  # fmt: skip
    try:
        outcome = common.resumable_run(config, folder.run_folder(sweep, rid))
    except SystemExit as e:
        folder.update_status(
            sweep, rid, state="requeued", reason=str(e), requeues=previous.get("requeues", 0) + 1
        )
        raise
    except BaseException as e:
        folder.update_status(sweep, rid, state="failed", reason=f"error: {e}".splitlines()[0])
        raise
    folder.update_status(sweep, rid, state="finished", metrics=outcome["metrics"])
    return outcome


def train(sweep: str, rid: str) -> int:
    """The training process of a run: its config from the manifest, `resumable_run` in its
    folder. Exit status 0: finished; STOPPED_EXIT_CODE: stopped on SIGTERM with a checkpoint;
    1: an error, one line."""
    from alexnet_jax import allocator

    allocator.preload_allocator("experiments.sweep.worker", "auto", ["train", sweep, rid])
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    orbax_quiet.install()  # and its notes on resuming, as alexnet_jax.main does
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from alexnet_jax import distributed

        print(f"jax.distributed: {distributed.initialize()}", flush=True)
    from alexnet_jax import checkpoint, train
    from experiments import common

    manifest = folder.read_manifest(Path(sweep))
    entry = manifest["runs"][rid]
    config = common.config_from_flat(entry["config"], f"{sweep}/sweep.json run {rid}")
    run = folder.run_folder(Path(sweep), rid)
    try:
        outcome = common.resumable_run(config, run)
    except SystemExit as e:  # stopped on SIGTERM: its checkpoint is saved
        print(e, flush=True)
        return folder.STOPPED_EXIT_CODE
    except train.DELIBERATE as e:
        print(f"error: {e}", flush=True)
        return checkpoint.DISK_FULL_EXIT_CODE if isinstance(e, checkpoint.DiskFullError) else 1
    print(f"{rid}: {outcome['status']}; final {outcome['metrics']}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "train":
        raise SystemExit("usage: python -m experiments.sweep.worker train SWEEP_DIR RUN_ID")
    sys.stdout.flush()
    code = train(sys.argv[2], sys.argv[3])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as main.py: no interpreter-shutdown noise from abandoned reads
