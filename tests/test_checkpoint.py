"""alexnet_jax/checkpoint.py on its own: save/restore, the fallback from unreadable
checkpoints, the disk-space check (end-to-end cases are in test_faults.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import checkpoint

# A failed restore leaves Orbax's other reads to end in an event loop that is gone; the library
# drops those reports (checkpoint._quiet_abandoned_reads), pytest's own hook sees them first.
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
from alexnet_jax import checkpoint

def pyerr_print(message):
    # What TensorStore does on its own threads when a Python callback raises.
    # (PyRun_SimpleString reports the exception with PyErr_Print and returns -1).
    code = f"raise RuntimeError({message!r})".encode()
    assert ctypes.pythonapi.PyRun_SimpleString(ctypes.c_char_p(code)) == -1

checkpoint._quiet_abandoned_reads()
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
