"""What a checkpoint proves: a checksum of every array, computed on the devices, and of every
JSON item, written beside them (`checkpoint.Checkpointer.save`) and checked on every restore.

The arrays' checksums (`checksums`) are two 32-bit sums of mixed (bits, index) pairs: a sum
modulo 2^32 does not depend on the order it is taken in, so any mesh and any number of
processes give the same sums, and no array is gathered on one host to compute them. A
difference on restore (`verify`) is bytes that changed after they were written.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class ChecksumError(ValueError):
    """Bytes read back that differ from what was written (the message names the array)."""


def _fmix(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection that spreads every input bit."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """Every element's bits as uint32 (a trailing axis of 2 for 64-bit types)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = np.dtype(x.dtype).itemsize
    if size in (1, 2):
        unsigned = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _sums(x: jax.Array) -> jax.Array:
    """Two 32-bit checksums of an array: sums over its elements of mixed (bits, index) pairs.

    A sum of integers modulo 2^32 does not depend on the order it is taken in, so the result
    is the same for any sharding, mesh or process count. Each term is a bijection of the
    element's bits for a fixed index, so changing one element always changes both sums; changes
    of several elements cancel in both with probability about 2^-64.
    """
    w = _words(x)
    w = w.reshape(1) if w.ndim == 0 else w
    index = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * np.uint32(stride)
        stride = (stride * w.shape[axis]) % 2**32
    a = jnp.sum(_fmix(w ^ _fmix(index * np.uint32(2) + np.uint32(1))), dtype=jnp.uint32)
    b = jnp.sum(_fmix(w * np.uint32(0x9E3779B1) + _fmix(index ^ np.uint32(0x5BD1E995))),
                dtype=jnp.uint32)  # fmt: skip
    return jnp.stack([a, b])


_all_sums = jax.jit(lambda leaves: [_sums(x) for x in leaves])


def _key_name(key: Any) -> str:
    for attribute in ("name", "key", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def leaf_paths(tree: Any) -> dict[str, Any]:
    """{'params/conv1/kernel': leaf, ...}: a pytree's leaves by path, the way Orbax stores
    them (attributes, dict keys and sequence indices alike)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


def checksums(tree: Any) -> dict[str, str]:
    """{path: 'xxxxxxxx-xxxxxxxx'}: the `_sums` of every array of a pytree (global arrays of any
    sharding, or NumPy), computed in one compiled pass."""
    leaves = leaf_paths(tree)
    sums = jax.device_get(_all_sums(list(leaves.values())))
    return {path: f"{int(s[0]):08x}-{int(s[1]):08x}" for path, s in zip(leaves, sums)}


def json_checksum(data: Any) -> str:
    """SHA-256 of a JSON item as `json.dumps(sort_keys=True)` writes it."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def verify(meta: dict, state: Any, schedule: Any, data: Any) -> None:
    """Checks a restored checkpoint against the checksums its `meta` item saved with it.

    Raises:
      ChecksumError: naming the first item or array whose checksum differs.
    """
    saved = meta.get("checksums", {})
    for name, item in (("schedule", schedule), ("data", data)):
        if name in saved and json_checksum(item) != saved[name]:
            raise ChecksumError(f"its {name} item differs from the checksum saved with it")
    ours = checksums(state)
    want = saved.get("state", {})
    if set(want) != set(ours):
        raise ChecksumError(
            f"its checksums name {len(want)} arrays and it holds {len(ours)}; the meta item "
            "does not belong to these arrays"
        )
    bad = [path for path in ours if ours[path] != want[path]]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ChecksumError(
            f"array {bad[0]}{more} differs from the checksum saved with it (bytes changed "
            "after they were written)"
        )
