"""Several processes, one job: JAX's own multi-process runtime (`jax.distributed`), set up so
that the documented launch works and failures end in one readable line.

`initialize(...)` calls `jax.distributed.initialize` with:

* the coordinator, process count and process id taken, in this order, from the arguments
  (`--coordinator_address`, `--num_processes`, `--process_id`), from the environment variables
  `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (JAX 0.10 reads only the
  first itself), or else from JAX's cluster auto-detection (SLURM, Open MPI, Kubernetes, Cloud
  TPU);
* the devices each process uses (`local_device_ids`), so that a process given several GPUs
  keeps them all: JAX's SLURM and Open MPI detection would otherwise give every process only
  the GPU numbered by its local rank (see `local_device_ids`);
* the coordinator service bound to the coordinator address's own interface, not all of them
  (JAX's default is `[::]:port`), unless `JAX_COORDINATOR_BIND_ADDRESS` or
  `--coordinator_bind_address` says otherwise;
* a bounded wait for a dead peer: a process that stops sending heartbeats for
  `peer_timeout_s` seconds (default 60; JAX's is 100) is declared dead by the coordination
  service, which then stops the survivors with an abort (JAX 0.10's client cannot take a Python
  missed-heartbeat callback: the call fails with std::bad_cast). `supervise` runs the training
  in a child process and turns that abort into one line naming the lost process, exit status
  `PEER_LOST_EXIT_CODE`. Rerunning the same command resumes from the last complete
  checkpoint (Orbax commits a checkpoint atomically, so none is ever half-written).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence


def _expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM_TASKS_PER_NODE ('2(x3),1') as one count per node ([2, 2, 2, 1])."""
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ValueError(f"cannot read SLURM_TASKS_PER_NODE={spec!r}")
        counts += [int(m[1])] * int(m[2] or 1)
    return counts


def local_tasks(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(this task's local rank, tasks on this node) under SLURM or Open MPI, else None."""
    if "OMPI_COMM_WORLD_LOCAL_RANK" in env and "OMPI_COMM_WORLD_LOCAL_SIZE" in env:
        return int(env["OMPI_COMM_WORLD_LOCAL_RANK"]), int(env["OMPI_COMM_WORLD_LOCAL_SIZE"])
    if "SLURM_LOCALID" in env and "SLURM_JOB_ID" in env:
        if "SLURM_NTASKS_PER_NODE" in env:
            count = int(env["SLURM_NTASKS_PER_NODE"])
        elif "SLURM_TASKS_PER_NODE" in env:
            per_node = _expand_tasks_per_node(env["SLURM_TASKS_PER_NODE"])
            count = per_node[int(env.get("SLURM_NODEID", "0"))]
        else:
            count = int(env.get("SLURM_NTASKS", "1")) // int(env.get("SLURM_NNODES", "1"))
        return int(env["SLURM_LOCALID"]), max(count, 1)
    return None


def _visible_gpus(env: Mapping[str, str]) -> int | None:
    for var in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        if env.get(var, "").strip():
            return len([d for d in env[var].split(",") if d.strip()])
    return None


def local_device_ids(
    env: Mapping[str, str], requested: str = "auto"
) -> tuple[list[int] | None, str]:
    """The accelerators this process uses, as `jax.distributed.initialize` takes them.

    Rules ('auto'), for a job of one or more tasks per node:
      * `JAX_LOCAL_DEVICE_IDS` (or an explicit `requested` list such as '0,1') wins.
      * No SLURM / Open MPI task (e.g. the environment variables or local processes): None,
        every device the process sees.
      * The scheduler bound GPUs to the task (`SLURM_GPUS_PER_TASK` set), or the node runs one
        task: every GPU the task sees (k of them in CUDA_VISIBLE_DEVICES) -> [0, ..., k-1].
        `sbatch --ntasks-per-node=1 --gpus-per-task=2`: both towers' GPUs.
      * m tasks share the node's k visible GPUs: with k == m, task r takes [r] (JAX's own
        rule, one GPU per task); with k = c m, task r takes the block [r c, (r + 1) c).
      * Anything else is an error naming the layout and the fix.
    'all' means None (every visible device); a comma list is taken as it is.

    Returns:
      (ids or None, a short reason for the log).
    """
    if requested not in ("auto", "all"):
        return [int(i) for i in requested.split(",") if i.strip()], "--local_device_ids"
    if requested == "all":
        return None, "--local_device_ids=all"
    if env.get("JAX_LOCAL_DEVICE_IDS", "").strip():
        ids = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",") if i.strip()]
        return ids, "JAX_LOCAL_DEVICE_IDS"
    tasks = local_tasks(env)
    if tasks is None:
        return None, "no SLURM/Open MPI task: every visible device"
    rank, count = tasks
    visible = _visible_gpus(env)
    if visible is None:
        if count == 1:
            return None, "one task on the node: every visible device"
        return [rank], f"{count} tasks on the node, no visible-devices list: GPU {rank}"
    if "SLURM_GPUS_PER_TASK" in env or count == 1:
        return list(range(visible)), f"the task's own {visible} GPU(s)"
    if visible == count:
        return [rank], f"{count} tasks share {visible} GPUs: one each"
    if visible % count == 0:
        per = visible // count
        return list(range(rank * per, (rank + 1) * per)), f"{per} of {visible} GPUs per task"
    raise ValueError(
        f"{count} tasks on this node see {visible} GPUs, which they cannot share evenly; bind "
        "GPUs to tasks (sbatch --gpus-per-task=N) or set JAX_LOCAL_DEVICE_IDS for each task."
    )


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer.") from None


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    coordinator_bind_address: str | None = None,
    requested_device_ids: str = "auto",
    peer_timeout_s: int = 60,
    env: Mapping[str, str] | None = None,
) -> dict:
    """Starts JAX's multi-process runtime as the module docstring says; returns what it used."""
    import jax

    env = os.environ if env is None else env
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None:
        num_processes = _env_int(env, "JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int(env, "JAX_PROCESS_ID")
    explicit = None not in (coordinator_address, num_processes, process_id)
    if (num_processes is None) != (process_id is None):
        raise ValueError(
            "give both the number of processes and this process's id (JAX_NUM_PROCESSES and "
            "JAX_PROCESS_ID, or --num_processes and --process_id), or neither to let JAX "
            "detect the cluster (SLURM, Open MPI, Kubernetes)."
        )
    if num_processes is not None and coordinator_address is None:
        raise ValueError(
            "JAX_NUM_PROCESSES/JAX_PROCESS_ID need JAX_COORDINATOR_ADDRESS=host:port (process "
            "0's host and a free port), or --coordinator_address."
        )
    ids, why = local_device_ids(env, requested_device_ids)
    bind = coordinator_bind_address or env.get("JAX_COORDINATOR_BIND_ADDRESS") or None
    if bind is None and coordinator_address is not None:
        bind = coordinator_address  # its interface only, not JAX's default [::]:port
    kwargs = dict(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=ids,
        coordinator_bind_address=bind,
        heartbeat_timeout_seconds=int(peer_timeout_s),
    )
    if explicit:
        kwargs["cluster_detection_method"] = "deactivate"

    jax.distributed.initialize(**kwargs)
    return {
        "coordinator": coordinator_address or "(cluster auto-detection)",
        "bind": bind,
        "local_device_ids": ids,
        "local_device_ids_rule": why,
        "process_id": jax.process_index(),
        "num_processes": jax.process_count(),
    }


# --- A dead peer: one line instead of JAX's abort ---------------------------------------------

PEER_LOST_EXIT_CODE = 75  # EX_TEMPFAIL: try again; the same command resumes.
SUPERVISED_ENV = "ALEXNET_JAX_SUPERVISED"
# What JAX's coordination service logs when it gives up on a process, before it aborts.
_PEER_LOST = re.compile(
    r"unhealthy \(stopped sending heartbeats\)|"
    r"Polled an error from coordination service|"
    r"JAX distributed service detected fatal errors"
)
_UNHEALTHY = re.compile(r"unhealthy \(stopped sending heartbeats\):\s*([\d,\s]+)")
_LEADER_GONE = re.compile(r"Failed to send RPC to coordination service|Socket closed")


def peer_lost_line(text: str, process: str, timeout_s: int) -> str | None:
    """The one line for a run that JAX stopped because a peer vanished, or None."""
    if not _PEER_LOST.search(text):
        return None
    if m := _UNHEALTHY.search(text):
        what = f"process(es) {' '.join(m.group(1).split())}"
    elif _LEADER_GONE.search(text):
        what = "the coordinator (process 0)"
    else:
        what = "another process"
    return (
        f"process {process}: {what} of this job stopped answering (no heartbeat for up to "
        f"{timeout_s} s), so this process stopped too. Rerun the same command on every host: "
        "it resumes from the last complete checkpoint in --workdir."
    )


def exit_when_orphaned(code: int = 0, parent: int | None = None) -> None:
    """Exits this process (with `code`) as soon as the process that started it is gone.

    Args:
      code: the exit status.
      parent: the starting process's pid, when known (default: the current parent, which is
        already the reaper if the starter died before this call).
    """
    import threading
    import time

    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(code)

    threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


def supervise(argv: Sequence[str], timeout_s: int) -> int:
    """Runs `python -m alexnet_jax.main argv` as a child and passes its output through; if JAX
    aborts it because a peer vanished, prints `peer_lost_line` instead of the abort's stack and
    returns PEER_LOST_EXIT_CODE. SIGTERM and SIGINT are passed on (preemption still works)."""
    import signal
    import subprocess

    env = dict(os.environ, **{SUPERVISED_ENV: "1"})
    child = subprocess.Popen(
        [sys.executable, "-m", "alexnet_jax.main", *argv], env=env, stderr=subprocess.PIPE
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, f: child.poll() is None and child.send_signal(s))
    seen, hidden = "", False
    while chunk := os.read(child.stderr.fileno(), 65536):
        text = chunk.decode(errors="replace")
        seen = (seen + text)[-20000:]
        if not hidden and _PEER_LOST.search(seen):
            hidden = True  # what follows is JAX's abort: the stack of a deliberate stop
        if not hidden:
            sys.stderr.write(text)
            sys.stderr.flush()
    code = child.wait()
    process = os.environ.get("JAX_PROCESS_ID") or os.environ.get("SLURM_PROCID") or "?"
    line = peer_lost_line(seen, process, timeout_s) if code != 0 else None
    if line:
        print(line, file=sys.stderr, flush=True)
        return PEER_LOST_EXIT_CODE
    if hidden:  # matched, but the child did not stop for it: show what was held back
        sys.stderr.write(seen[-5000:])
    return code if code >= 0 else 128 - code
