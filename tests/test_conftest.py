"""tests/conftest.py's session setup: the shared XLA compilation cache and its switch."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import os, tests.conftest; print(os.environ.get('JAX_COMPILATION_CACHE_DIR'))"


def _probe(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "ALEXNET_JAX_"))}
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, env={**clean, **env}, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_the_session_cache_is_a_temporary_directory_removed_at_exit_and_can_be_switched_off():
    if os.environ.get("ALEXNET_JAX_TEST_CACHE") != "off":
        assert os.environ.get("JAX_COMPILATION_CACHE_DIR")  # this session has one
    cache = _probe()
    assert Path(cache).name.startswith("alexnet_jax_test_xla_cache_")
    assert not Path(cache).exists()  # removed when the process ended
    assert _probe(ALEXNET_JAX_TEST_CACHE="off") == "None"
    assert _probe(JAX_COMPILATION_CACHE_DIR="/tmp/mine") == "/tmp/mine"  # a user's own is kept
