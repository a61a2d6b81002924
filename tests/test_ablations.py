"""experiments/paper/ablations.py runs the real recipe (evaluations that drive the plateau schedule,
checkpoints at the cadence) and reruns resume, skip or refuse instead of starting over."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_jax import metrics
from experiments.paper import ablations
from experiments.sweep import plan as sweep_plan

ROOT = Path(__file__).resolve().parents[1]

# Base given as a path; a learning rate so small that the validation error cannot improve, so
# the plateau schedule (patience 1) drops the rate at the second evaluation.
PLATEAU = [
    "--base=configs/default.py",
    "--variants=",
    "--seeds=1",
    "--steps=6",
    "--eval_every=2",
    "--checkpoint_every=2",
    "--log_every=1",
    "--set=optimizer.schedule=plateau",
    "--set=optimizer.plateau_patience=1",
    "--set=optimizer.learning_rate=1e-9",
    "--set=mesh.data=1",
]


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plateau")
    args = [*PLATEAU, f"--workdir={root / 'runs'}", f"--out={root / 'out'}"]
    results = ablations.main(args)
    return args, results, root / "runs" / "paper_seed0", root / "out"


@pytest.mark.slow
def test_plateau_schedule_drops_the_rate_when_validation_stalls(plateau_run):
    _, _, run, _ = plateau_run
    events = metrics.read_metrics(str(run))
    lr = {e["step"]: e["learning_rate"] for e in events if "learning_rate" in e}
    evals = [e["step"] for e in events if "eval_top1_error" in e]
    assert evals == [2, 4, 6]  # the base's cadence as set, not only the last step
    assert lr[1] == pytest.approx(1e-9)
    drops = [s for s in evals if s + 1 in lr and lr[s + 1] == pytest.approx(0.1 * lr[s])]
    assert drops, (lr, evals)


@pytest.mark.slow
def test_checkpoints_are_written_at_the_cadence(plateau_run):
    _, _, run, _ = plateau_run
    steps = {int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()}
    assert {2, 4, 6} <= steps


@pytest.mark.slow
def test_base_given_as_a_config_path(plateau_run):
    _, results, run, out = plateau_run
    data = json.loads((out / "results.json").read_text())
    assert data["base"] == "configs/default.py" and data["model"] == "cifar_lrn"
    assert json.loads((run / "config.json").read_text())["optimizer"]["schedule"] == "plateau"
    (paper,) = results["paper"]["runs"]
    assert paper["status"] == "started" and paper["seconds"] > 0
    assert "| paper | `-` |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_switches_run_by_the_base_network_not_its_name(tmp_path):
    cifar = ablations.plan(
        sweep_plan.load_base("configs/cifar10_lrn.py"), ["no_lrn", "one_tower"], 2, tmp_path
    )
    assert [folder.name for _, _, folder in cifar["no_lrn"]["runs"]] == [
        "no_lrn_seed0", "no_lrn_seed1"
    ]  # fmt: skip
    assert cifar["no_lrn"]["runs"][1][1].model.lrn is False
    assert cifar["one_tower"]["runs"] is None
    alexnet = ablations.plan(sweep_plan.load_base("configs/alexnet.py"), ["one_tower"], 1, tmp_path)
    assert alexnet["one_tower"]["runs"][0][1].model.towers == 1


@pytest.mark.slow
def test_changed_config_on_a_run_folder_is_refused(plateau_run, capsys):
    args, _, run, _ = plateau_run
    with pytest.raises(SystemExit) as refused:
        ablations.main([*args, "--steps=10"])
    message = str(refused.value)
    assert "\n" not in message
    assert str(run) in message and "num_train_steps: 6 there, 10 now" in message
    assert "--fresh" in message and "--workdir" in message
    assert not (run / "checkpoints" / "10").exists()


def test_table_reports_the_test_split_when_runs_have_it():
    def runs(test):
        r = {"seed": 0, "eval_top1_error": 0.5, "eval_top5_error": 0.2}
        return [{**r, "test_top1_error": test, "test_top5_error": 0.1} if test else r]

    with_test = {
        "paper": {"overrides": {}, "runs": runs(0.3)},
        "no_lrn": {"overrides": {"model.lrn": False}, "runs": runs(0.35)},
    }
    assert ablations.metric_keys(with_test)[2] == "test"
    # One seed: no spread to show, said as n = 1 (never ± 0.00).
    assert "| no_lrn | `model.lrn=False` | +5.00 (n = 1) (abs. 35.00)" in ablations.table(
        with_test, "cifar"
    )
    without = {k: {**v, "runs": runs(None)} for k, v in with_test.items()}
    assert ablations.metric_keys(without)[:2] == ("eval_top1_error", "eval_top5_error")


def _runner(root, *extra):
    cmd = [
        sys.executable, "-m", "experiments.paper.ablations", "--base=configs/default.py",
        "--variants=", "--seeds=1", "--steps=20", "--checkpoint_every=4", "--eval_every=10",
        "--log_every=2", "--set=batch_size=8", f"--workdir={root / 'runs'}",
        f"--out={root / 'out'}", *extra,
    ]  # fmt: skip
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
    )
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc):
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_killed_runner_resumes_on_rerun_and_then_skips(tmp_path):
    run = tmp_path / "runs" / "paper_seed0"
    proc = _runner(tmp_path)
    deadline = time.time() + 240
    while not any(p.name.isdigit() for p in (run / "checkpoints").glob("*")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (run / "result.json").exists()  # killed before the run finished

    out = _finish(_runner(tmp_path))
    (line,) = [x for x in out.splitlines() if x.startswith("paper      seed 0: resumed")]
    resumed_from = int(line.split("resumed from step ")[1].split()[0])
    assert 0 < resumed_from < 20
    events = metrics.read_metrics(str(run))
    assert [e["step"] for e in events if "train_loss" in e] == list(range(2, 21, 2))
    assert [e["step"] for e in events if "eval_top1_error" in e] == [10, 20]
    first = json.loads((tmp_path / "out" / "results.json").read_text())
    assert first["results"]["paper"]["runs"][0]["resumed_from_step"] == resumed_from

    logged = (run / "metrics.jsonl").read_text()
    out = _finish(_runner(tmp_path))
    assert "seed 0: skipped, finished" in out and "seed 0: started" not in out
    assert (run / "metrics.jsonl").read_text() == logged  # nothing trained
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    (a,), (b,) = first["results"]["paper"]["runs"], again["results"]["paper"]["runs"]
    assert b["status"] == "skipped"
    assert {k: v for k, v in a.items() if k.endswith("_error")} == {
        k: v for k, v in b.items() if k.endswith("_error")
    }


@pytest.mark.slow
def test_fresh_deletes_the_runs_and_starts_over(tmp_path):
    args = [
        "--base=configs/default.py", "--variants=", "--seeds=1", "--steps=2", "--eval_every=2",
        "--checkpoint_every=2", "--log_every=1", "--set=mesh.data=1",
        f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}",
    ]  # fmt: skip
    first = ablations.main(args)["paper"]["runs"][0]
    assert first["status"] == "started"
    assert ablations.main(args)["paper"]["runs"][0]["status"] == "skipped"
    # Another budget on the same folder: refused without --fresh, started over with it.
    with pytest.raises(SystemExit):
        ablations.main([*args, "--steps=4"])
    again = ablations.main([*args, "--steps=4", "--fresh"])["paper"]["runs"][0]
    assert again["status"] == "started" and again["resumed_from_step"] is None
    run = tmp_path / "runs" / "paper_seed0"
    steps = [e["step"] for e in metrics.read_metrics(str(run)) if "train_loss" in e]
    assert steps == [1, 2, 3, 4]  # one run from step 0: the old events are gone


def test_fresh_never_deletes_a_folder_a_live_run_holds(tmp_path):
    """--fresh refuses, in one line, to delete a run folder whose lock a running process holds
    (here: this test's own process), and deletes it once the holder is gone."""
    import json
    import os
    import socket
    import subprocess

    from alexnet_jax import workdir as workdir_lib

    run = tmp_path / "runs" / "paper_seed0"
    run.mkdir(parents=True)
    lock = run / workdir_lib.LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now",
          "kernel_start": workdir_lib.kernel_start(os.getpid())}  # fmt: skip
    lock.write_text(json.dumps(me))
    args = [
        "--base=configs/default.py", "--variants=", "--seeds=1", "--steps=2",
        f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}", "--fresh",
    ]  # fmt: skip
    with pytest.raises(SystemExit, match=f"--fresh: {run} is in use by a running run .pid"):
        ablations.main(args)
    assert lock.exists()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that has ended: the lock is stale, the folder may go
    lock.write_text(json.dumps({**me, "pid": gone.pid, "kernel_start": None}))
    assert workdir_lib.live_holder(str(run)) is None
