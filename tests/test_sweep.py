"""experiments/sweep/: planning, the manifest and its refusals, status without JAX, the report
against an independent computation, the Slurm submission (fake sbatch on PATH), and runs
interrupted as Slurm preempts (SIGTERM) or killed (SIGKILL, then --retry_failed) that end
bit-identical to uninterrupted ones."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

from alexnet_jax import workdir as workdir_lib
from experiments import common
from experiments.sweep import folder as sweep
from experiments.sweep import launch, plan
from experiments.sweep import report as sweep_report

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = common.subprocess_env()
    env.pop("ALEXNET_JAX_TRACEBACK", None)
    return env


def test_variants_from_overrides_grids_and_ablation_files():
    variants = plan.parse_variants(
        ["wide:model.lrn_size=7,optimizer.learning_rate=0.02",
         "pre:model.lrn_before_relu=('conv1', 'conv2'),seed=3"],
        ["model.lrn=True,False", "model.activation=relu,tanh"],
        "no_lrn,tanh",
    )  # fmt: skip
    assert variants["wide"] == ["model.lrn_size=7", "optimizer.learning_rate=0.02"]
    # A comma inside a value does not split it: only one before the next KEY= does.
    assert variants["pre"] == ["model.lrn_before_relu=('conv1', 'conv2')", "seed=3"]
    assert variants["lrn=False+activation=tanh"] == ["model.lrn=False", "model.activation=tanh"]
    assert len([v for v in variants if v.startswith("lrn=")]) == 4  # the 2 x 2 product
    assert variants["no_lrn"] == ["model.lrn=False"]  # configs/ablations/no_lrn.py's one change
    assert variants["tanh"] == ["model.activation='tanh'"]
    with pytest.raises(SystemExit, match="expected NAME:KEY=VALUE"):
        plan.parse_variants(["no_colon"], [], "")


def _base(**budget):
    overrides = {"num_epochs": 1, "num_train_steps": budget.get("steps", 6)}
    return plan.base_config("cifar", None, "", overrides)


def _fake_sweep(root: Path, seeds: int = 3, variants=("no_lrn", "act_tanh")) -> dict:
    """A finished sweep folder written as the runner writes one, with seeded random results: the
    metrics files (each run's own record) and result.json agree."""
    changes = {"no_lrn": {"model.lrn": False}, "act_tanh": {"model.activation": "tanh"}}
    runs = plan.plan(_base(), "base", {v: changes[v] for v in variants}, seeds)
    manifest = {
        "format": sweep.FORMAT, "base": "cifar", "base_variant": "base",
        "variants": {v: [f"{k}={x}" for k, x in changes[v].items()] for v in variants},
        "seeds": seeds, "budget": {"epochs": 1, "steps": 6}, "runs": runs, "submissions": [],
    }  # fmt: skip
    sweep.write_manifest(root, manifest)
    rng = np.random.RandomState(0)
    for rid, entry in runs.items():
        folder = sweep.run_folder(root, rid)
        folder.mkdir(parents=True)
        workdir_lib.write_record(common.config_from_flat(entry["config"]), str(folder), {})
        final = {
            "eval_top1_error": float(rng.uniform(0.05, 0.3)),
            "eval_top5_error": float(rng.uniform(0, 0.05)),
            "test_top1_error": float(rng.uniform(0.05, 0.3)),
            "test_top5_error": float(rng.uniform(0, 0.05)),
        }
        events = [
            {"step": s, "epoch": s / 35, "train_loss": float(rng.uniform(0.1, 2)),
             "train_top1_error": 0.5, "learning_rate": 0.01 if s < 4 else 0.001,
             "images_per_sec": 100.0}
            for s in (2, 4, 6)
        ]  # fmt: skip
        events += [
            {"step": 3, "eval_top1_error": 0.5, "eval_top5_error": 0.1, "eval_loss": 1.0},
            {"step": 6, **{k: v for k, v in final.items() if k.startswith("eval")}},
            {"step": 6, **{k: v for k, v in final.items() if k.startswith("test")}},
        ]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        (folder / "result.json").write_text(json.dumps({"metrics": final}))
        sweep.update_status(root, rid, state="finished", metrics=final)
    return manifest


def test_the_report_matches_an_independent_computation_from_the_metrics_files(tmp_path):
    manifest = _fake_sweep(tmp_path)
    data = sweep_report.report(tmp_path, tmp_path / "out")
    # Independently: each run's last logged test error, NumPy's mean/std, SciPy's paired t test.
    finals = {}
    for rid, entry in manifest["runs"].items():
        lines = (sweep.run_folder(tmp_path, rid) / "metrics.jsonl").read_text().splitlines()
        last = [json.loads(ln) for ln in lines if "test_top1_error" in ln][-1]
        finals.setdefault(entry["variant"], {})[entry["seed"]] = last["test_top1_error"]
    base = np.array([finals["base"][s] for s in range(3)])
    for variant in ("base", "no_lrn", "act_tanh"):
        values = np.array([finals[variant][s] for s in range(3)])
        got = data["summary"][variant]["metrics"]["test_top1_error"]
        np.testing.assert_allclose([got["mean"], got["std"]], [values.mean(), values.std(ddof=1)],
                                   rtol=1e-12)  # fmt: skip
        if variant == "base":
            continue
        paired = data["summary"][variant]["paired"]["test_top1_error"]
        np.testing.assert_allclose(paired["differences"], values - base, rtol=1e-12)
        interval = stats.ttest_rel(values, base).confidence_interval(0.95)
        np.testing.assert_allclose(paired["ci95"], [interval.low, interval.high], rtol=1e-9)
        np.testing.assert_allclose(paired["mean"], (values - base).mean(), rtol=1e-12)
    text = (tmp_path / "out" / "results.md").read_text()
    d = 100 * (np.array([finals["no_lrn"][s] for s in range(3)]) - base)
    low, high = 100 * np.array(stats.ttest_rel(d / 100 + base, base).confidence_interval())
    assert f"{d.mean():+.2f} [{low:+.2f}, {high:+.2f}] (n = 3)" in text
    assert "no_lrn: +1.4 (§3.3)" in text  # the paper's figure beside its ablation ...
    assert "tanh: n/a (CIFAR-10" in text  # ... found by the change, not by the name
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "paired_changes.png").stat().st_size > 10_000


def test_the_report_counts_missing_runs_and_has_no_interval_for_one_seed(tmp_path):
    _fake_sweep(tmp_path, seeds=2, variants=("no_lrn",))
    (sweep.run_folder(tmp_path, "no_lrn_seed1") / "result.json").unlink()
    sweep.update_status(tmp_path, "no_lrn_seed1", state="failed", reason="error: boom")
    data = sweep_report.report(tmp_path, tmp_path / "out")
    assert data["missing"] == {"no_lrn_seed1": "failed"}
    text = (tmp_path / "out" / "results.md").read_text()
    assert "(n = 1: no interval)" in text and "no_lrn_seed1 (failed)" in text
    assert data["summary"]["no_lrn"]["paired"]["test_top1_error"]["ci95"] is None


def test_a_run_with_another_recorded_config_is_refused_by_name(tmp_path):
    manifest = _fake_sweep(tmp_path, seeds=1, variants=("no_lrn",))
    folder = sweep.run_folder(tmp_path, "no_lrn_seed0")
    changed = common.config_from_flat(manifest["runs"]["no_lrn_seed0"]["config"])
    changed.optimizer.learning_rate = 0.5
    (folder / "config.json").unlink()
    workdir_lib.write_record(changed, str(folder), {})
    with pytest.raises(SystemExit, match=r"run no_lrn_seed0 in .* another config .*"
                       r"optimizer.learning_rate: 0.01 there, 0.5 now"):  # fmt: skip
        sweep_report.report(tmp_path, tmp_path / "out")


def test_status_reads_fifty_runs_without_importing_jax(tmp_path):
    runs = {sweep.run_id(f"v{i}", s): {"variant": f"v{i}", "seed": s, "config": {}}
            for i in range(25) for s in range(2)}  # fmt: skip
    manifest = {"format": sweep.FORMAT, "base": "cifar", "base_variant": "v0", "variants": {},
                "seeds": 2, "budget": {}, "runs": runs, "submissions": []}  # fmt: skip
    sweep.write_manifest(tmp_path, manifest)
    for i, rid in enumerate(runs):
        folder = sweep.run_folder(tmp_path, rid)
        folder.mkdir(parents=True)
        event = {"step": 10 * i, "epoch": i / 4, "train_loss": 1.0}
        (folder / "metrics.jsonl").write_text(json.dumps(event) + "\n")
        state = ("queued", "running", "requeued", "finished", "failed")[i % 5]
        fields = {"state": state, "requeues": i % 3, "job_id": f"77_{i}", "reason": "error: x"}
        if state == "finished":
            fields["metrics"] = {"test_top1_error": 0.25}
        if state == "running":
            fields.update(host="elsewhere", job_pid=1)  # not checkable from here: running
        sweep.update_status(tmp_path, rid, **fields)
    code = (
        "import sys, time; t = time.perf_counter(); from experiments.sweep import cli; "
        f"cli.main(['status', {str(tmp_path)!r}]); "
        "print('JAX', 'jax' in sys.modules, time.perf_counter() - t)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("JAX False")
    assert lines[-2] == "50 runs: 10 queued, 10 running, 10 requeued, 10 finished, 10 failed"
    assert lines[1].startswith("v0_seed1")
    assert "running at step 10, epoch 0.25, job 77_1" in lines[1]
    assert "finished: test_top1_error 25.00%" in lines[3] and "requeued 2x" in lines[5]
    assert lines[4].endswith("failed: error: x, requeued 1x")


def test_a_folder_with_another_sweep_is_refused_in_one_line(tmp_path):
    base = _base()
    runs = plan.plan(base, "base", {"no_lrn": {"model.lrn": False}}, 1)
    other = plan.plan(base, "base", {"no_lrn": {"model.lrn": False, "model.lrn_k": 1.0}}, 1)
    manifest = {"runs": runs}
    plan.refuse_another_sweep(manifest, runs, tmp_path)  # the same plan: continued
    with pytest.raises(SystemExit, match=r"holds another sweep \(run no_lrn_seed0: model.lrn_k"):
        plan.refuse_another_sweep(manifest, other, tmp_path)
    more = plan.plan(base, "base", {"no_lrn": {"model.lrn": False}}, 2)
    with pytest.raises(SystemExit, match=r"runs only there: \[\], only now: \['base_seed1'"):
        plan.refuse_another_sweep(manifest, more, tmp_path)


FAKE_SBATCH = """#!/bin/sh
# Records its arguments and the script, answers as sbatch does.
echo "$@" >> "{record}/sbatch_args"
cp "$1" "{record}/script.sh"
echo "Submitted batch job 4242"
"""
FAKE_OTHER = """#!/bin/sh
echo "$0 $@" >> "{record}/other_calls"
"""


@pytest.mark.slow
def test_the_slurm_launcher_submits_one_array_with_the_requested_resources(tmp_path):
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_OTHER), ("sacct", FAKE_OTHER),
                       ("scancel", FAKE_OTHER), ("srun", FAKE_OTHER)):  # fmt: skip
        path = bin_dir / name
        path.write_text(text.format(record=record))
        path.chmod(0o755)
    env = dict(_env(), PATH=f"{bin_dir}:{os.environ['PATH']}")
    folder = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", "run", str(folder), "--base=cifar",
         "--variant=no_lrn:model.lrn=False", "--grid=model.activation=relu,tanh", "--seeds=2",
         "--steps=6", "--launcher=slurm", "--nodes=2", "--gpus_per_node=4",
         "--cpus_per_task=10", "--time=600", "--partition=gpu", "--account=lab42",
         "--array_parallelism=3", "--sbatch=qos=high", "--signal_delay=300",
         "--max_requeues=5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    script = (record / "script.sh").read_text()
    for line in ("#SBATCH --array=0-7%3", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=10",
                 "#SBATCH --time=600", "#SBATCH --partition=gpu", "#SBATCH --account=lab42",
                 "#SBATCH --qos=high", "#SBATCH --signal=USR2@300"):  # fmt: skip
        assert line in script.splitlines(), (line, script)
    assert "submitit.core._submit" in script and "srun" in script
    assert (record / "sbatch_args").read_text().count("\n") == 1  # one array, one sbatch
    manifest = json.loads((folder / sweep.MANIFEST).read_text())
    jobs = manifest["submissions"][-1]["job_ids"]
    assert len(manifest["runs"]) == 8 and sorted(jobs.values()) == [f"4242_{i}" for i in range(8)]
    # Each array element runs SweepRun(sweep, its run).
    import pickle

    import cloudpickle  # noqa: F401  (submitit pickles with it)

    elements = {}
    for i in range(8):
        with open(folder / "submitit" / f"4242_{i}" / f"4242_{i}_submitted.pkl", "rb") as f:
            delayed = pickle.load(f)
        elements[i] = (delayed.function.sweep, delayed.function.rid)
        assert delayed._timeout_countdown == 5  # --max_requeues: time-outs requeued
    assert {rid for _, rid in elements.values()} == set(manifest["runs"])
    assert {s for s, _ in elements.values()} == {str(folder.resolve())}
    assert not (record / "other_calls").exists()  # nothing but sbatch was called
    status = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", "status", str(folder)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.stdout.splitlines()[-1] == "8 runs: 8 queued"


@pytest.mark.slow
def test_the_slurm_launcher_without_slurm_is_one_line(tmp_path):
    env = dict(_env(), PATH=os.path.dirname(sys.executable))  # no srun, no sbatch
    done = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", "run", str(tmp_path / "s"), "--base=cifar",
         "--seeds=1", "--steps=2", "--launcher=slurm"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --launcher=slurm needs Slurm's commands (srun, sbatch) on PATH and they are not "
        "there: run from a Slurm login node, or use --launcher=local."
    )


def _wait_for(predicate, timeout: float = 300, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_preempted_and_killed_runs_resume_and_end_bit_identical(tmp_path):
    folder = tmp_path / "sweep"
    args = [sys.executable, "-m", "experiments.sweep", "run", str(folder), "--base=cifar",
            "--variant=no_pca:augment.pca_color=False", "--seeds=1", "--steps=40",
            "--checkpoint_every=5", "--log_every=5", "--eval_every=40",
            "--set=mesh.data=1", "--set=batch_size=8"]  # fmt: skip
    launcher = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen: dict[str, set] = {}

    def poll_status() -> dict:
        # What `sweep status` prints (folder.status_lines), read here: a `status` subprocess
        # for every poll would take a core from the runs being timed.
        try:
            printed = sweep.status_lines(folder)
        except sweep.SweepError:  # no manifest yet
            return {}
        for line in printed[:-1]:
            rid, state = line.split()[0], line.split()[1].rstrip(":")
            seen.setdefault(rid, set()).add(state)
        return {rid: sweep.read_status(folder, rid) for rid in seen}

    def step_of(rid: str) -> int:
        event = sweep.last_training_event(sweep.run_folder(folder, rid))
        return event["step"] if event else 0

    try:
        # base_seed0 is preempted as Slurm does it (SIGTERM to the job) after step 10.
        _wait_for(lambda: poll_status() and step_of("base_seed0") >= 10
                  and sweep.read_status(folder, "base_seed0").get("state") == "running",
                  what="base_seed0 past step 10")  # fmt: skip
        os.kill(sweep.read_status(folder, "base_seed0")["job_pid"], signal.SIGTERM)
        # no_pca_seed0: its training process is killed outright after step 10.
        _wait_for(lambda: poll_status() and step_of("no_pca_seed0") >= 10
                  and sweep.read_status(folder, "no_pca_seed0").get("state") == "running",
                  what="no_pca_seed0 past step 10")  # fmt: skip
        os.kill(sweep.read_status(folder, "no_pca_seed0")["pid"], signal.SIGKILL)
        while launcher.poll() is None:
            poll_status()
            time.sleep(0.1)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    out = launcher.stdout.read()
    assert launcher.returncode == 1, out  # a failed run: the command says so
    poll_status()
    assert sweep.read_status(folder, "base_seed0")["requeues"] == 1
    assert sweep.read_status(folder, "base_seed0")["state"] == "finished"
    killed = sweep.read_status(folder, "no_pca_seed0")
    assert killed["state"] == "failed" and killed["reason"].startswith("killed by SIGKILL")
    retry = subprocess.run([*args[:5], "--retry_failed"], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert "1 of 2 runs to local" in retry.stdout
    poll_status()
    assert seen["base_seed0"] >= {"running", "requeued", "finished"}, seen
    assert seen["no_pca_seed0"] >= {"running", "failed", "finished"}, seen
    # Each interrupted run resumed from a checkpoint, not from step 0 ...
    for rid in ("base_seed0", "no_pca_seed0"):
        log = sweep.log_file(folder, rid).read_text()
        resumed = [int(ln.split("step ")[1].split()[0]) for ln in log.splitlines()
                   if ln.startswith("resumed from the checkpoint of step")]  # fmt: skip
        assert resumed and resumed[0] >= 5, log[-3000:]  # a checkpoint, not step 0
    # ... and ends with the parameters of an uninterrupted run of the same config.
    manifest = sweep.read_manifest(folder)
    for rid in ("base_seed0", "no_pca_seed0"):
        config = common.config_from_flat(manifest["runs"][rid]["config"])
        reference = tmp_path / f"reference_{rid}"
        from alexnet_jax import train

        train.train_and_evaluate(config, str(reference))
        got = jax.tree.leaves(common.restore_params(sweep.run_folder(folder, rid))[1])
        want = jax.tree.leaves(common.restore_params(reference)[1])
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    lines = subprocess.run([sys.executable, "-m", "experiments.sweep", "status", str(folder)],
                           cwd=ROOT, env=_env(), capture_output=True, text=True).stdout  # fmt: skip
    assert lines.splitlines()[-1] == "2 runs: 2 finished"


@pytest.mark.slow
def test_parallel_local_runs_overlap_and_each_finishes(tmp_path):
    """--parallel 2: two runs at a time through submitit's local executor (on a CPU host they
    share its cores; on a GPU host each gets its share of CUDA_VISIBLE_DEVICES)."""
    folder = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", "run", str(folder), "--base=cifar",
         "--seeds=2", "--steps=4", "--set=mesh.data=1", "--parallel=2"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    a, b = (sweep.read_status(folder, f"base_seed{s}") for s in (0, 1))
    assert a["state"] == b["state"] == "finished"
    assert b["started"] < a["updated"] and a["started"] < b["updated"]  # both ran at once


def test_parallel_local_slots_share_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert launch._gpu_shares(2) == [[0, 1], [2, 3]]
    assert launch._gpu_shares(4) == [[0], [1], [2], [3]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch._gpu_shares(2) == [[], []]  # no GPU: the slots share the CPU
