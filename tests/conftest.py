"""Test setup: four simulated CPU devices, so the tower split and data parallelism are tested.

XLA reads the flag once, when jax is first imported, so it is set here, before any test module
imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
