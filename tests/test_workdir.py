"""alexnet_jax/workdir.py: the lock, config changes on resume, a workdir that is a file."""

import json
import os
import socket
import subprocess

import ml_collections
import pytest

from alexnet_jax import migrations, workdir


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
    for key in migrations.ADDED_FIELDS:
        *sections, field = key.split(".")
        parent = old
        for section in sections:
            parent = parent[section]
        del parent[field]
    (tmp_path / "config.json").write_text(json.dumps(old))
    new = alexnet.get_config()
    new.model.dropout_scaling = "inverted"  # what every run before the field did
    assert workdir.config_changes(new, str(tmp_path)) == ({}, {})
    # Today's default (the paper's test-time scaling) is another function: refused, naming the
    # value the record is read as.
    allowed, refused = workdir.config_changes(alexnet.get_config(), str(tmp_path))
    assert refused == {"model.dropout_scaling": ("inverted", "test_time")} and allowed == {}


def test_a_cifar_run_recorded_before_alexnet_switches_existed_takes_their_unused_values(tmp_path):
    """The CIFAR nets lack AlexNet's switches (config_checks.ALEXNET_ONLY): a record from before
    one existed is read with the value that means "not used" there, the only one check_config
    accepts (model.dropout_scaling: 'test_time', not ADDED_FIELDS' 'inverted' for AlexNet)."""
    from configs import default

    old = json.loads(default.get_config().to_json_best_effort())
    for key in set(migrations.ADDED_FIELDS) - {"test_split"}:  # the default has a test split
        *sections, field = key.split(".")
        parent = old
        for section in sections:
            parent = parent[section]
        del parent[field]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert workdir.config_changes(default.get_config(), str(tmp_path)) == ({}, {})
    recorded = workdir.recorded_config(str(tmp_path))
    assert recorded["model.dropout_scaling"] == "test_time"  # ALEXNET_ONLY's unused value
    assert recorded["model.lrn_kind"] == "cross_map" and recorded["model.init_std"] == []
    assert migrations.added_field_value("model.dropout_scaling", {"model.name": "alexnet"}) == (
        "inverted"
    )
    # A real change is still refused.
    changed = default.get_config()
    changed.model.lrn_kind = "within_map"
    assert workdir.config_changes(changed, str(tmp_path))[1] == {
        "model.lrn_kind": ("cross_map", "within_map")
    }


def test_the_config_record_carries_its_format_and_the_code_version(tmp_path):
    import alexnet_jax
    from configs import default

    config = default.get_config()
    assert workdir.write_record(config, str(tmp_path), {}) == []  # a new run: nothing to say
    data, record = workdir.read_record(str(tmp_path))
    assert record["format"] == workdir.RECORD_FORMAT
    assert record["written_by"]["package"] == alexnet_jax.__version__
    assert workdir.flat_config(data) == workdir.flat_config(config)  # the record is no field
    assert workdir.config_changes(config, str(tmp_path)) == ({}, {})
    # A record of format 1 (no key, fields missing) is migrated with one notice line.
    old = json.loads(config.to_json_best_effort())
    del old["model"]["lrn_kind"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    notices = workdir.write_record(config, str(tmp_path), {})
    assert len(notices) == 1 and "model.lrn_kind='cross_map'" in notices[0]
    assert "alexnet_jax 0.1.0 or earlier" in notices[0]
    change = json.loads((tmp_path / "config_changes.jsonl").read_text().splitlines()[-1])
    assert change["migrated_fields"] == {"model.lrn_kind": "cross_map"}
    assert change["record"]["to"].startswith(f"alexnet_jax {alexnet_jax.__version__}")
    # A record of a newer format than this code reads is refused in one line.
    newer = {workdir.RECORD_KEY: {"format": workdir.RECORD_FORMAT + 1}, **old}
    (tmp_path / "config.json").write_text(json.dumps(newer))
    with pytest.raises(workdir.WorkdirError, match="reads formats up to"):
        workdir.config_changes(config, str(tmp_path))


def test_the_package_version_is_pyproject_s():
    import tomllib

    import alexnet_jax

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["version"] == alexnet_jax.__version__


def test_garbage_records_and_locks_are_one_line_or_an_unknown_holder(tmp_path):
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # nested too deep
    with pytest.raises(workdir.WorkdirError, match="cannot be read"):
        workdir.read_record(str(tmp_path))
    (tmp_path / "config.json").write_text('{"__record__": {"format": 2, "written_by": [1]}}')
    _, record = workdir.read_record(str(tmp_path))
    assert workdir.describe_version(record) == "an unknown version (its record says '[1]')"
    for garbage in ("[1]", '"x"', "3"):
        (tmp_path / workdir.LOCK_NAME).write_text(garbage)
        with pytest.raises(workdir.WorkdirError, match="is in use by another run: pid None"):
            workdir.Lock(str(tmp_path)).__enter__()
