"""alexnet_jax/checkpoint.py on its own: save/restore, the fallback from unreadable
checkpoints, the disk-space check (end-to-end cases are in test_faults.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import checkpoint, integrity

# A failed restore leaves Orbax's other reads to end in an event loop that is gone; the library
# drops those reports (orbax_quiet.install), pytest's own hook sees them first.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(value: float):
    """Random values (constant ones would compress to nothing), offset by `value`."""
    w = jax.random.normal(jax.random.key(0), (512, 512)) + value
    return {"w": w, "step": jnp.int32(value)}


def _saved(tmp_path, steps=(1, 2, 3)):
    said = []
    ck = checkpoint.Checkpointer(str(tmp_path), keep=5, say=said.append)
    for s in steps:
        ck.save(s, _state(s), {"lr": 0.1 * s}, {"iterator": {"next_batch": s}, "window": []})
    ck.wait()
    return ck, said


def _truncate(path):
    largest = max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)


def test_restore_latest_gives_the_newest_state(tmp_path):
    ck, _ = _saved(tmp_path)
    step, state, schedule, data = ck.restore_latest(checkpoint.abstract_like(_state(0)))
    assert step == 3 and schedule == {"lr": pytest.approx(0.3)}
    assert data == {"iterator": {"next_batch": 3}, "window": []}
    np.testing.assert_array_equal(state["w"], np.asarray(_state(3)["w"]))
    ck.close()


def test_unreadable_newest_is_moved_aside_and_the_previous_used(tmp_path):
    ck, said = _saved(tmp_path)
    _truncate(tmp_path / "checkpoints" / "3")
    step, state, _, _ = ck.restore_latest(checkpoint.abstract_like(_state(0)))
    assert step == 2
    np.testing.assert_array_equal(state["w"], np.asarray(_state(2)["w"]))
    assert (tmp_path / "checkpoints" / "3.corrupt").is_dir()
    assert len(said) == 1 and said[0].startswith("checkpoint of step 3 cannot be read (")
    assert ck.all_steps() == [1, 2] and ck.set_aside() == ["3.corrupt"]
    ck.close()


def test_nothing_readable_refuses(tmp_path):
    ck, said = _saved(tmp_path, steps=(1, 2))
    for s in (1, 2):
        _truncate(tmp_path / "checkpoints" / str(s))
    with pytest.raises(checkpoint.NoReadableCheckpointError, match="to start this run afresh"):
        ck.restore_latest(checkpoint.abstract_like(_state(0)))
    assert len(said) == 2
    ck.close()


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path))
    assert ck.restore_latest(checkpoint.abstract_like(_state(0))) is None
    ck.close()


def test_save_that_will_not_fit_stops_with_the_sizes_and_what_is_intact(tmp_path, monkeypatch):
    ck, _ = _saved(tmp_path, steps=(1,))
    ck.expect_size(_state(0))
    needed = 512 * 512 * 4 + 4 + (1 << 20)
    monkeypatch.setattr(checkpoint.Checkpointer, "free_bytes", lambda self: needed - 1)
    said = []
    ck._say = said.append
    ck.warn_if_next_will_not_fit(2)
    ck.warn_if_next_will_not_fit(2)  # once per upcoming save
    assert len(said) == 1 and "the next checkpoint (step 2) needs about 2.0 MiB" in said[0]
    with pytest.raises(checkpoint.DiskFullError) as e:
        ck.save(2, _state(2), {}, {})
    text = str(e.value)
    assert text.startswith("disk full: the checkpoint of step 2 needs about 2.0 MiB")
    assert "the checkpoint of step 1 is intact" in text and "exit status 74" in text
    assert ck.all_steps() == [1]
    ck.close()


def test_disk_full_is_recognised_through_the_cause_chain():
    import errno

    inner = OSError(errno.ENOSPC, "No space left on device")
    outer = ValueError("RESOURCE_EXHAUSTED: Error writing ...")
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = inner
    assert checkpoint._is_disk_full(outer) and checkpoint._is_disk_full(wrapped)
    assert not checkpoint._is_disk_full(ValueError("OUT_OF_RANGE: byte range"))


def test_gist_prefers_the_status_line_and_is_short():
    cause = ValueError('OUT_OF_RANGE: Error reading "params.w/0"')
    error = Exception("Encountered error ... See full TensorStore details: " + "x" * 5000)
    error.__cause__ = cause
    assert checkpoint._gist(error) == 'OUT_OF_RANGE: Error reading "params.w/0"'
    assert len(checkpoint._gist(Exception("y" * 1000))) == 240


def test_abstract_like_keeps_shapes_dtypes_and_shardings():
    x = jax.device_put(jnp.ones((2, 3)))
    a = checkpoint.abstract_like({"x": x})["x"]
    assert a.shape == (2, 3) and a.dtype == jnp.float32 and a.sharding == x.sharding


_PYERR_PRINT = """
import ctypes, sys, threading
from alexnet_jax import orbax_quiet

def pyerr_print(message):
    # What TensorStore does on its own threads when a Python callback raises.
    # (PyRun_SimpleString reports the exception with PyErr_Print and returns -1).
    code = f"raise RuntimeError({message!r})".encode()
    assert ctypes.pythonapi.PyRun_SimpleString(ctypes.c_char_p(code)) == -1

orbax_quiet.install()
for message in ("Event loop is closed", "another error off the main thread"):
    t = threading.Thread(target=pyerr_print, args=(message,))
    t.start()
    t.join()
pyerr_print("Event loop is closed")  # on the main thread: a real error, still reported
print("done", file=sys.stderr)
"""


def test_closed_loop_reports_from_library_threads_are_dropped_and_nothing_else():
    """A late callback of an abandoned read, reported through sys.excepthook by TensorStore's
    PyErr_Print, once printed a traceback beside a run's one-line error (CI, stop 21)."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _PYERR_PRINT], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    reported = [ln for ln in run.stderr.splitlines() if ln.startswith("RuntimeError")]
    assert reported == [
        "RuntimeError: another error off the main thread",
        "RuntimeError: Event loop is closed",
    ], run.stderr
    assert run.stderr.splitlines()[-1] == "done"


# --- what a checkpoint proves: checksums, versions, migrations, another tree ------------------


def _overwrite(path, offset: int, n: int = 4096, seed: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.random.RandomState(seed).bytes(n))


def _largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _listing(directory) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _reference_sums(x: np.ndarray) -> tuple[int, int]:
    """integrity._sums written again in NumPy's wrapping uint32 arithmetic, for float32."""

    def fmix(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))

    w = np.ascontiguousarray(x, np.float32).view(np.uint32).reshape(-1)
    i = np.arange(w.size, dtype=np.uint32)
    with np.errstate(over="ignore"):
        a = fmix(w ^ fmix(i * np.uint32(2) + np.uint32(1))).sum(dtype=np.uint32)
        b = fmix(w * np.uint32(0x9E3779B1) + fmix(i ^ np.uint32(0x5BD1E995))).sum(dtype=np.uint32)
    return int(a), int(b)


def test_checksums_are_the_same_on_any_sharding_and_see_every_element():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    x = np.random.RandomState(0).randn(4, 6, 8).astype(np.float32)
    a, b = _reference_sums(x)  # an independent computation of the same sums
    want = f"{a:08x}-{b:08x}"
    mesh = jax.make_mesh((2, 2), ("data", "tower"))
    with jax.set_mesh(mesh):
        placed = [
            jax.device_put(x, NamedSharding(mesh, spec))
            for spec in (P(), P("tower"), P(None, "data", "tower"), P(("data", "tower")))
        ]
        for array in placed:
            assert integrity.checksums({"x": array}) == {"x": want}
    assert integrity.checksums({"x": x}) == {"x": want}  # NumPy, one device
    # One bit of any element, of any dtype, changes both sums.
    arrays = {
        "f32": x,
        "bf16": x.astype(jnp.bfloat16),
        "i32": np.arange(48, dtype=np.int32).reshape(6, 8),
        "u32": np.arange(8, dtype=np.uint32),
        "bool": np.arange(10) % 3 == 0,
        "scalar": np.float32(1.5),
    }
    base = integrity.checksums(arrays)
    for name, array in arrays.items():
        flat = np.array(array).reshape(-1)
        for position in (0, flat.size // 2, flat.size - 1):
            changed = flat.copy()
            if changed.dtype == np.bool_:
                changed[position] = ~changed[position]
            else:
                bits = changed.view(
                    np.uint8
                    if changed.dtype.itemsize == 1
                    else {2: np.uint16, 4: np.uint32}[changed.dtype.itemsize]
                )
                bits[position] ^= 1
            sums = integrity.checksums({**arrays, name: changed.reshape(np.shape(array))})
            a0, b0 = base[name].split("-")
            a1, b1 = sums[name].split("-")
            assert a0 != a1 and b0 != b1, (name, position)
    # Moving values between positions changes them too (the index is mixed in).
    assert integrity.checksums({"x": x[::-1].copy()}) != {"x": want}


def test_a_checkpoint_records_its_format_version_and_checksums(tmp_path):
    import alexnet_jax

    ck, _ = _saved(tmp_path, steps=(1,))
    meta = ck.read_meta(1)
    assert meta["format"] == checkpoint.FORMAT == 2 and meta["step"] == 1
    assert meta["written_by"]["package"] == alexnet_jax.__version__
    assert meta["checksums"]["state"] == integrity.checksums(_state(1))
    assert meta["checksums"]["schedule"] == integrity.json_checksum({"lr": 0.1})
    ck.close()


@pytest.mark.slow
def test_random_bytes_over_the_newest_checkpoint_are_found_and_the_previous_one_used(tmp_path):
    """4,096 random bytes at several offsets of the newest checkpoint's largest data file (the
    512 x 512 leaf's chunk: 0.5 is the middle of that leaf): each is found (checksums or a
    read error), the checkpoint set aside, and the previous one restored exactly."""
    found_by_checksum = 0
    for i, fraction in enumerate((0.05, 0.3, 0.5, 0.7, 0.95)):
        ck, said = _saved(tmp_path / str(i))
        newest = tmp_path / str(i) / "checkpoints" / "3"
        data = _largest_file(newest / "state")
        _overwrite(data, int(data.stat().st_size * fraction), seed=i)
        step, state, schedule, _ = ck.restore_latest(checkpoint.abstract_like(_state(0)))
        assert step == 2 and schedule == {"lr": pytest.approx(0.2)}, fraction
        np.testing.assert_array_equal(state["w"], np.asarray(_state(2)["w"]))
        assert len(said) == 1 and said[0].startswith("checkpoint of step 3 "), said
        assert "moved it to" in said[0] and ck.set_aside() == ["3.corrupt"]
        assert (newest.parent / "3.corrupt" / "state").is_dir()  # set aside, not deleted
        found_by_checksum += "is damaged: array w differs from the checksum" in said[0]
        ck.close()
    assert found_by_checksum >= 2  # bytes that decompress and decode, only checksums see


def test_a_changed_checksum_record_is_damage_named_by_array(tmp_path):
    import json

    ck, said = _saved(tmp_path, steps=(1, 2))
    meta_file = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["checksums"]["state"]["w"] = "00000000-00000000"
    meta_file.write_text(json.dumps(meta))
    step, _, _, _ = ck.restore_latest(checkpoint.abstract_like(_state(0)))
    assert step == 1
    assert said == [
        "checkpoint of step 2 is damaged: array w differs from the checksum saved with it "
        f"(bytes changed after they were written); moved it to {tmp_path}/checkpoints/"
        "2.corrupt and trying the previous one."
    ]
    ck.close()


def test_a_checkpoint_of_another_tree_is_left_where_it_is_with_the_leaves_named(tmp_path):
    ck, said = _saved(tmp_path, steps=(1, 2))
    before = _listing(tmp_path / "checkpoints")
    other = {
        "w": jax.ShapeDtypeStruct((256, 512), jnp.float32),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "b": jax.ShapeDtypeStruct((512,), jnp.float32),
    }
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
        ck.restore_latest(other)
    text = str(e.value)
    assert "the checkpoint of step 2 was written by alexnet_jax 0.2.0" in text
    assert "only in this code's tree: b" in text
    assert "other shape or dtype: w (512, 512) float32 here (256, 512) float32" in text
    assert "it is left where it is" in text and "\n" not in text
    assert _listing(tmp_path / "checkpoints") == before and said == []
    ck.close()


def test_a_checkpoint_without_meta_restores_with_a_notice(tmp_path):
    import shutil

    ck, said = _saved(tmp_path, steps=(1,))
    shutil.rmtree(tmp_path / "checkpoints" / "1" / "meta")  # as alexnet_jax 0.1.0 wrote them
    step, state, _, _ = ck.restore_latest(checkpoint.abstract_like(_state(0)))
    assert step == 1
    np.testing.assert_array_equal(state["w"], np.asarray(_state(1)["w"]))
    assert said == [
        "notice: the checkpoint of step 1 was written by alexnet_jax 0.1.0 or earlier (format "
        "1: no version recorded), before checkpoints carried checksums: its bytes cannot be "
        "verified."
    ]
    assert ck.resumed == (1, "format 1: not verifiable")
    ck.close()


def test_the_schedule_count_leaf_is_migrated_from_the_step(tmp_path):
    """An optimizer state from before the Optax schedules change (7bf32c6) has no
    hyperparams_states count: it is restored with the count equal to the step, in one line."""
    import optax

    from alexnet_jax import optim
    from configs import default

    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros((4,))}
    tx = optim.create_optimizer(default.get_config().optimizer, steps_per_epoch=10,
                                total_steps=100)  # fmt: skip
    opt_state = tx.init(params)
    for _ in range(7):
        _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    new = {"step": jnp.int32(7), "params": params, "opt_state": opt_state}
    assert isinstance(opt_state, optax.InjectStatefulHyperparamsState)
    old = {**new, "opt_state": opt_state._replace(hyperparams_states={})}
    said = []
    ck = checkpoint.Checkpointer(str(tmp_path), say=said.append)
    ck.save(7, old, {"schedule": "constant"}, {})
    ck.wait()
    step, state, _, _ = ck.restore_latest(checkpoint.abstract_like(new))
    assert step == 7
    assert jax.tree.structure(state) == jax.tree.structure(new)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)  # the count too: 7 updates, 7 counted
    assert len(said) == 1 and said[0].startswith("migrated the checkpoint of step 7 ")
    assert "opt_state/hyperparams_states/learning_rate/count" in said[0]
    ck.close()


def test_restore_params_checks_the_checksums_too(tmp_path):
    """What evaluate reads (`restore_params`) is verified like a resume."""
    import json

    ck, _ = _saved(tmp_path, steps=(1, 2))
    ck.close()
    meta_file = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["checksums"]["state"]["w"] = "00000000-00000000"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.NoReadableCheckpointError) as e:
        checkpoint.restore_params(str(tmp_path))
    assert str(e.value) == (
        f"the checkpoint {tmp_path}/checkpoints/2 is damaged: array w differs from the checksum "
        f"saved with it; evaluate another checkpoint ({tmp_path}/checkpoints/1), or resume the "
        "run, which sets it aside and continues from the previous one."
    )
