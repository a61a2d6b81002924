"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) in JAX/Flax.

`__version__` is recorded in every config record and checkpoint this code writes
(`workdir.code_version`); keep it equal to pyproject.toml's version (tests/test_workdir.py).
0.1.0: records without a version (format 1); 0.2.0: versioned records, checksummed checkpoints.
"""

__version__ = "0.2.0"
