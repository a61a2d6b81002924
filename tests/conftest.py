"""Test setup: four simulated CPU devices, so the tower split and data parallelism are tested;
one persistent XLA compilation cache for the session; one trained run of the offline default
shared by the tests that read one (`trained_run`).

XLA reads the flags once, when jax is first imported, so they are set here, before any test
module imports jax. The environment reaches the training runs that tests start as
subprocesses too: most of them compile the same few programs (configs/default.py's step), which
the cache then compiles once per session instead of once per run. The cache lives in a
temporary directory removed when the session ends (`ALEXNET_JAX_TEST_CACHE=off` disables it).
"""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if os.environ.get("ALEXNET_JAX_TEST_CACHE", "on") != "off" and not os.environ.get(
    "JAX_COMPILATION_CACHE_DIR"
):
    _cache = tempfile.mkdtemp(prefix="alexnet_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    # Every program, however quick to compile: the tests' small ones are the many.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """configs/default.py trained in this process for 20 steps, seed 0, evaluated and
    checkpointed at step 20 (`tests.helpers.trained_run_config`), once per session: the workdir
    of the trained run that the tests reading one share. A test that changes a run copies it
    (shutil.copytree) first."""
    # Imported here, not above: XLA reads XLA_FLAGS when jax is first imported, after the lines
    # above have set them.
    from alexnet_jax import train
    from tests.helpers import trained_run_config

    workdir = tmp_path_factory.mktemp("trained_run") / "run"
    train.train_and_evaluate(trained_run_config(), str(workdir))
    return workdir
