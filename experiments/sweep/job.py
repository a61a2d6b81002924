"""The submitit job of one run of a sweep (experiments/sweep/__init__.py): it starts the run's
training process (experiments/sweep/worker.py) and requeues it.

`SweepRun(sweep, run_id)` is what each job (a local process or a Slurm array element) calls. It
starts `python -m experiments.sweep.worker train SWEEP RUN_ID` as a child, whose output goes to
`logs/<run>.log`, and records the run's state in `status/<run>.json`:

- the child ends with status 0: the run finished (`result.json` in its folder);
- it ends with `folder.STOPPED_EXIT_CODE`: it saved a checkpoint on SIGTERM (Slurm preempts a
  job with SIGTERM to all its processes) and the job requeues itself through submitit;
- submitit's own signal (USR2 before the time limit, or `job._interrupt()` of a local job)
  calls `checkpoint()`: the child is sent SIGTERM, saves its checkpoint and stops, and the
  job is requeued with the same callable;
- anything else (an error line, the NaN guard, SIGKILL): the run is failed, with the child's
  last line as the reason; `run DIR --retry_failed` resubmits it, and it resumes from its
  latest checkpoint.

The child dies with the job (PR_SET_PDEATHSIG), so a job killed outright leaves no training
process behind. In a job of several tasks (nodes x GPUs) every task starts its child, the
children join JAX's multi-process runtime from Slurm's environment (docs/parallel.md), and only
task 0 writes the status.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import submitit

from alexnet_jax import workdir as workdir_lib
from experiments.sweep import folder

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class SweepRun(submitit.helpers.Checkpointable):
    """The job of one (variant, seed) of a sweep: trains it in a child process to its end."""

    def __init__(self, sweep: str, rid: str):
        self.sweep = sweep
        self.rid = rid
        self._child: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"sweep": self.sweep, "rid": self.rid}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _child=None)

    def _rank(self) -> int:
        try:
            return submitit.JobEnvironment().global_rank
        except RuntimeError:  # not inside a submitit job
            return 0

    def __call__(self) -> dict:
        sweep = Path(self.sweep)
        rank = self._rank()
        log = folder.log_file(sweep, self.rid)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} "
                      f"task {rank}\n")  # fmt: skip
            out.flush()
            self._child = subprocess.Popen(
                [sys.executable, "-m", "experiments.sweep.worker", "train", self.sweep, self.rid],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )  # fmt: skip
            # Slurm preempts a job with SIGTERM to every process of it; a local job's controller
            # signals only this process. Either way the child gets it (twice is harmless: its
            # handler sets a flag), saves a checkpoint and stops.
            signal.signal(signal.SIGTERM, self._forward_sigterm)
            if rank == 0:
                previous = folder.read_status(sweep, self.rid)
                folder.update_status(
                    sweep, self.rid, state="running", pid=self._child.pid, job_pid=os.getpid(),
                    host=socket.gethostname(), attempts=previous.get("attempts", 0) + 1,
                    reason=None, started=time.time(),
                    job_start=workdir_lib.kernel_start(os.getpid()),
                )  # fmt: skip
            code = self._child.wait()
        if code == 0:
            run = folder.run_folder(sweep, self.rid)
            result = json.loads((run / "result.json").read_text())
            if rank == 0:
                folder.update_status(sweep, self.rid, state="finished",
                                        metrics=result["metrics"])  # fmt: skip
            return result["metrics"]
        if code in (folder.STOPPED_EXIT_CODE, -signal.SIGTERM):
            # Checkpointed on SIGTERM (a preemption): requeue through submitit's own path,
            # which calls `checkpoint` and requeues this job (scontrol requeue, or the local
            # controller's restart).
            os.kill(os.getpid(), submitit.JobEnvironment._usr_sig())
            time.sleep(60)  # the signal handler exits the process
        reason = folder.last_line(log)
        if code < 0:
            reason = f"killed by {signal.Signals(-code).name}; last line: {reason}"
        if rank == 0:
            folder.update_status(sweep, self.rid, state="failed", reason=reason,
                                    exit_code=code)  # fmt: skip
        raise RuntimeError(f"{self.rid} failed: {reason}")

    def _forward_sigterm(self, signum, frame) -> None:
        del signum, frame
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Preemption or time limit: the child saves a checkpoint (SIGTERM) and the same run is
        requeued; the requeued job resumes from it."""
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=600)
            except subprocess.TimeoutExpired:
                child.kill()
        if self._rank() == 0:
            previous = folder.read_status(Path(self.sweep), self.rid)
            folder.update_status(Path(self.sweep), self.rid, state="requeued",
                                    requeues=previous.get("requeues", 0) + 1)  # fmt: skip
        return submitit.helpers.DelayedSubmission(SweepRun(self.sweep, self.rid))
