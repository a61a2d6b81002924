"""Runs recorded by earlier versions resume with today's code (tests/fixtures/old_runs/): each
migration is named in one line, nothing in the workdir is renamed or moved, and the run ends with
the parameters the old code itself computed when it resumed the same run, bit for bit."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alexnet_jax import checkpoint, integrity
from tests import old_run_fixtures

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "old_runs"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("folder", ["before_optax_schedules", "before_dropout_scaling"])
def test_a_run_of_an_earlier_version_resumes_and_ends_as_that_version_ends_it(tmp_path, folder):
    expected = json.loads((FIXTURES / folder / "expected.json").read_text())
    if expected["cpu"] != old_run_fixtures.cpu_signature():
        # XLA's kernels differ with the CPU's features: the old commit computes the reference
        # here, from this checkout's history.
        if not old_run_fixtures.has_commit(expected["commit"]):
            pytest.skip(
                f"this CPU is not the fixture's ({expected['cpu']['model']}) and the git history "
                f"has no commit {expected['commit'][:7]} to compute the reference here"
            )
        line, digests = old_run_fixtures.resumed_by_old_code(folder, tmp_path / "old")
        expected = {**expected, "final_line": line, "params_sha256": digests}
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / folder / "workdir", run)
    saved = run / "checkpoints" / str(expected["saved_step"])
    before = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.main", *expected["resume_args"],
         "--config.keep_checkpoints=5", "--allocator=system", f"--workdir={run}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert f"resumed from the checkpoint of step {expected['saved_step']} in {run}/checkpoints" in (
        lines
    )
    # One line per migration: the config record's fields, the checkpoint's unverifiable bytes
    # (format 1) and, before the Optax schedules change, the count leaf.
    config_notes = [ln for ln in lines if ln.startswith("migrated the config record of ")]
    assert len(config_notes) == 1 and "alexnet_jax 0.1.0 or earlier" in config_notes[0]
    assert "model.dropout_scaling='test_time'" in config_notes[0]  # the §3.3 net has none
    tree_notes = [ln for ln in lines if ln.startswith("migrated the checkpoint of step 6")]
    counted = folder == "before_optax_schedules"
    assert len(tree_notes) == int(counted)
    if counted:
        assert "opt_state/hyperparams_states/learning_rate/count" in tree_notes[0]
        assert "model.lrn_kind='cross_map'" in config_notes[0]
        assert "test_split=''" in config_notes[0]
    assert sum("before checkpoints carried checksums" in ln for ln in lines) == 1
    # Nothing renamed, moved or changed: the old checkpoint is there with its bytes.
    listing = sorted((p.name for p in (run / "checkpoints").iterdir()), key=int)
    assert listing == ["6", "9", "12"]  # no <step>.corrupt, nothing else
    after = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    assert after == before
    # The end is the old code's end.
    step, params = checkpoint.restore_params(str(run))
    assert step == expected["final_step"] == 12
    digests = {
        k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
        for k, v in integrity.leaf_paths(params).items()
    }
    assert digests == expected["params_sha256"]
    assert lines[-1] == expected["final_line"]
    # The record now carries today's format, and the migration is in config_changes.jsonl.
    record = json.loads((run / "config.json").read_text())["__record__"]
    assert record["format"] == 2
    change = json.loads((run / "config_changes.jsonl").read_text().splitlines()[0])
    assert "migrated_fields" in change and change["record"]["from"].startswith("alexnet_jax 0.1.0")
