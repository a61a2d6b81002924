"""alexnet_jax/workdir.py: the lock, config changes on resume, a workdir that is a file."""

import json
import socket
import subprocess

import ml_collections
import pytest

from alexnet_jax import workdir


def test_lock_refuses_a_second_holder_and_is_removed_on_exit(tmp_path):
    with workdir.Lock(str(tmp_path)):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["host"] == socket.gethostname() and isinstance(holder["pid"], int)
        with pytest.raises(workdir.WorkdirError, match="in use by another run: pid"):
            workdir.Lock(str(tmp_path)).__enter__()
    assert not (tmp_path / ".lock").exists()


def test_stale_lock_is_taken_over_with_a_notice(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    said = []
    with workdir.Lock(str(tmp_path), say=said.append):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] != gone.pid
    assert len(said) == 1 and "took over the stale lock" in said[0]


def test_reused_pid_counts_as_stale(tmp_path):
    import os

    (tmp_path / ".lock").write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "kernel_start": "1"})
    )
    said = []
    with workdir.Lock(str(tmp_path), say=said.append):
        pass
    assert said and "took over" in said[0]


def test_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "T"}))
    with pytest.raises(workdir.WorkdirError, match="on host elsewhere .not checkable from here."):
        workdir.Lock(str(tmp_path)).__enter__()


def _config(**fields):
    c = ml_collections.ConfigDict({"seed": 0, "num_train_steps": 30, "log_every_steps": 10,
                                   "model": {"lrn": True}, "mesh": {"data": -1}})  # fmt: skip
    for k, v in fields.items():
        node, _, leaf = k.rpartition(".")
        (c[node] if node else c)[leaf] = v
    return c


def test_config_changes_split_allowed_from_refused(tmp_path):
    (tmp_path / "config.json").write_text(_config().to_json())
    assert workdir.config_changes(_config(), str(tmp_path)) == ({}, {})
    allowed, refused = workdir.config_changes(
        _config(num_train_steps=40, **{"mesh.data": 2, "model.lrn": False, "seed": 1}),
        str(tmp_path),
    )
    assert allowed == {"num_train_steps": (30, 40), "mesh.data": (-1, 2)}
    assert refused == {"model.lrn": (True, False), "seed": (0, 1)}
    with pytest.raises(workdir.WorkdirError, match=r"model.lrn: True -> False; seed: 0 -> 1"):
        workdir.refuse_config_changes(refused, str(tmp_path))


def test_speed_only_switches_and_the_replaced_conv1_matmul_may_change(tmp_path):
    old = json.loads(_config().to_json())
    old["model"].update(conv1_matmul=True, grouped_conv=False)  # before model.kernels
    (tmp_path / "config.json").write_text(json.dumps(old))
    new = _config()
    new.model.kernels, new.model.grouped_conv = "auto", True
    allowed, refused = workdir.config_changes(new, str(tmp_path))
    assert refused == {}
    assert allowed == {
        "model.conv1_matmul": (True, "<absent>"),
        "model.grouped_conv": (False, True),
        "model.kernels": ("<absent>", "auto"),
    }


def test_no_recorded_config_accepts_anything(tmp_path):
    assert workdir.config_changes(_config(seed=5), str(tmp_path)) == ({}, {})


def test_unreadable_recorded_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(workdir.WorkdirError, match="cannot be read"):
        workdir.config_changes(_config(), str(tmp_path))


def test_workdir_that_is_a_file_or_inside_one(tmp_path):
    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(workdir.WorkdirError, match="is a file, not a directory"):
            workdir.check_path(str(path))
    workdir.check_path(str(tmp_path / "new" / "run"))  # created later: fine


def test_a_run_recorded_before_a_field_existed_resumes_at_the_old_behaviour(tmp_path):
    from configs import alexnet

    old = json.loads(alexnet.get_config().to_json_best_effort())
    for key in workdir.ADDED_FIELDS:
        *sections, field = key.split(".")
        parent = old
        for section in sections:
            parent = parent[section]
        del parent[field]
    (tmp_path / "config.json").write_text(json.dumps(old))
    new = alexnet.get_config()
    new.model.dropout_scaling = "inverted"  # what every run before the field did
    assert workdir.config_changes(new, str(tmp_path)) == ({}, {})
    # Today's default (the paper's test-time scaling) is another function: refused.
    allowed, refused = workdir.config_changes(alexnet.get_config(), str(tmp_path))
    assert refused == {"model.dropout_scaling": ("<absent>", "test_time")} and allowed == {}
