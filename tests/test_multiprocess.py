"""Several processes on loopback with simulated CPU devices: the documented launch (the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables, set by
`alexnet_jax.launch`), input that follows the mesh, the same bits for any process count
(mesh.grad_sum='ordered'), preemption of one process and a dead one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alexnet_jax import distributed
from experiments import common

ROOT = Path(__file__).resolve().parents[1]

DIGITS = [
    "--config=configs/default.py",
    "--config.batch_size=8",  # two examples a device: the collectives, not the arithmetic, tested
    "--config.eval_every_steps=10",
    "--config.checkpoint_every_steps=10",
    "--config.log_every_steps=1",
    "--config.progress_bar=False",
    "--allocator=system",
]
ALEXNET = [
    *common.SMALL_ALEXNET, "--config.progress_bar=False", "--allocator=system",
    "--config.eval_ten_crop=False",  # the tower split is what is tested; one view is enough
]  # fmt: skip


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    return env


def one_process(devices: int, args: list[str], workdir: Path) -> None:
    cmd = [sys.executable, "-m", "alexnet_jax.main", *args, f"--workdir={workdir}"]
    run = subprocess.run(cmd, env=_env(devices), cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def launch(processes: int, devices: int, args: list[str], workdir: Path, **popen):
    cmd = [sys.executable, "-m", "alexnet_jax.launch", f"--processes={processes}",
           f"--cpu_devices={devices}", "--", *args, f"--workdir={workdir}"]  # fmt: skip
    return subprocess.Popen(
        cmd, env=_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, **popen,
    )  # fmt: skip


def launched(processes, devices, args, workdir, timeout=300) -> str:
    proc = launch(processes, devices, args, workdir)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def events(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def train_curve(workdir: Path, key: str) -> list[float]:
    return [e[key] for e in events(workdir) if key in e and "train_loss" in e]


def params(workdir: Path) -> list[np.ndarray]:
    import jax

    return jax.tree.leaves(common.restore_params(workdir)[1])


INTERRUPTED = [*DIGITS, "--config.num_train_steps=40", "--peer_timeout_s=10"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    launched(2, 2, INTERRUPTED, workdir)
    return workdir


@pytest.mark.slow
def test_two_processes_of_two_devices_follow_one_process_of_four(tmp_path, uninterrupted):
    # The two-process run is the module's uninterrupted one (INTERRUPTED's config, 2 x 2).
    two = uninterrupted
    one_process(4, INTERRUPTED, tmp_path / "one")
    # Same mesh (4, 1), same batches, and the gradient sum over the replicas adds them in replica
    # order (mesh.grad_sum='ordered'), so gloo across processes and the in-process collectives
    # give the same bits.
    for a, b in zip(params(two), params(tmp_path / "one"), strict=True):
        np.testing.assert_array_equal(a, b)
    for key in ("train_loss", "grad_norm", "param_norm"):
        assert train_curve(two, key) == train_curve(tmp_path / "one", key), key
    tested = [e for e in events(two) if "test_examples" in e]
    assert tested and tested[-1]["test_examples"] == 360  # the whole test split, once


@pytest.mark.slow
def test_one_tower_per_process_equals_two_devices_in_one_process(tmp_path):
    # The paper's layout: each process holds one tower (mesh data 1, tower 2). Both feed the
    # whole batch; the global batch is the configured 8, not 4.
    args = [*ALEXNET, "--config.mesh.data=1", "--config.mesh.tower=2"]
    launched(2, 1, args, tmp_path / "two")
    one_process(2, args, tmp_path / "one")
    for key in ("train_loss", "grad_norm", "param_norm"):
        assert train_curve(tmp_path / "two", key) == train_curve(tmp_path / "one", key), key
    count = [e["eval_examples"] for e in events(tmp_path / "two") if "eval_examples" in e]
    assert count == [e["eval_examples"] for e in events(tmp_path / "one") if "eval_examples" in e]
    assert count == [64]
    for a, b in zip(params(tmp_path / "two"), params(tmp_path / "one")):
        np.testing.assert_array_equal(a, b)


def _start_and_wait_for_step_10(workdir: Path):
    proc = launch(2, 2, INTERRUPTED, workdir)
    pids, lines = {}, []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[launch] process"):
            pids[int(line.split()[2].rstrip(":"))] = int(line.split()[-1])
        if line.startswith("[0] step 10: eval"):
            return proc, pids, lines
    raise AssertionError("".join(lines)[-4000:])


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _saved(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_then_resumes_exactly(
    tmp_path, uninterrupted
):
    proc, pids, lines = _start_and_wait_for_step_10(tmp_path / "run")
    sent = time.monotonic()
    os.kill(pids[1], signal.SIGTERM)  # one preempted host
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    out = "".join(lines) + out
    assert proc.returncode == 0, out[-4000:]
    assert "[launch] exit statuses [0, 0]" in out and took < 30
    stopped = max(_saved(tmp_path / "run"))
    assert 10 < stopped < 40 and f"saved the checkpoint of step {stopped}" in out
    rerun = launched(2, 2, INTERRUPTED, tmp_path / "run")
    assert f"resumed from the checkpoint of step {stopped}" in rerun
    for a, b in zip(params(tmp_path / "run"), params(uninterrupted)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigkill_of_one_process_stops_the_other_with_one_line_then_resumes_exactly(
    tmp_path, uninterrupted
):
    proc, pids, lines = _start_and_wait_for_step_10(tmp_path / "run")
    deadline = time.monotonic() + 60
    while not _saved(tmp_path / "run") and time.monotonic() < deadline:
        time.sleep(0.2)  # the checkpoint of step 10, complete (Orbax renames it when done)
    killed = time.monotonic()
    for pid in [*_children(pids[1]), pids[1]]:  # the host is gone: its processes with it
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - killed
    out = "".join(lines) + out
    survivor = [line for line in out.splitlines() if line.startswith("[0]")]
    message = [line for line in survivor if "stopped answering" in line]
    assert len(message) == 1, out[-4000:]
    assert "process(es) 1" in message[0] and "Rerun the same command" in message[0]
    assert not any("Fatal Python error" in line or "@     0x" in line for line in survivor)
    assert took < 10 + 30 and "[launch] exit statuses [75, -9]" in out
    assert _saved(tmp_path / "run")  # the periodic checkpoint of step 10 or later, complete
    rerun = launched(2, 2, INTERRUPTED, tmp_path / "run")
    assert "resumed from the checkpoint of step" in rerun
    for a, b in zip(params(tmp_path / "run"), params(uninterrupted)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "env, ids",
    [
        ({}, None),  # local processes / the environment variables: every visible device
        ({"JAX_LOCAL_DEVICE_IDS": "2,3"}, [2, 3]),
        # sbatch --ntasks-per-node=1 --gpus-per-task=2: both GPUs of the task
        (
            {"SLURM_JOB_ID": "7", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_GPUS_PER_TASK": "2", "CUDA_VISIBLE_DEVICES": "0,1"},
            [0, 1],
        ),
        # --ntasks-per-node=2 --gpus-per-task=1: each task sees its own GPU as device 0
        (
            {"SLURM_JOB_ID": "7", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "2",
             "SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "1"},
            [0],
        ),
        # --ntasks-per-node=2 --gres=gpu:2 (no binding): one GPU each, by local rank
        (
            {"SLURM_JOB_ID": "7", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "2(x3)",
             "SLURM_NODEID": "2", "CUDA_VISIBLE_DEVICES": "0,1"},
            [1],
        ),
        # 2 tasks share 4 GPUs: two each
        (
            {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
             "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
            [2, 3],
        ),
    ],
)  # fmt: skip
def test_local_device_ids_keep_every_gpu_of_a_task(env, ids):
    assert distributed.local_device_ids(env)[0] == ids


def test_local_device_ids_refuses_an_uneven_share_and_takes_explicit_lists():
    env = {"OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
           "CUDA_VISIBLE_DEVICES": "0,1,2"}  # fmt: skip
    with pytest.raises(ValueError, match="cannot share evenly"):
        distributed.local_device_ids(env)
    assert distributed.local_device_ids(env, "0,2")[0] == [0, 2]
    assert distributed.local_device_ids(env, "all")[0] is None


@pytest.mark.parametrize(
    "env, match",
    [
        ({"JAX_NUM_PROCESSES": "2"}, "give both"),
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "need JAX_COORDINATOR_ADDRESS"),
        ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "not an integer"),
    ],
)
def test_incomplete_launch_variables_get_one_clear_error(env, match):
    with pytest.raises(ValueError, match=match):
        distributed.initialize(env=env)
