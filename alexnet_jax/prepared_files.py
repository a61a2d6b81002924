"""The files of a prepared dataset (`prepared:<dir>`): the S x S JPEG copy of paper §2.

`python -m alexnet_jax.prepare` writes them (prepare.py) and `sources.PreparedSource` reads
them. In the folder: `metadata.json`, per split the names of its ArrayRecord shard files and
counts, and the dataset's `num_classes`, `class_names`, `size` and `resize_mode`; and the
shards, whose every record is the label as little-endian int64 followed by the JPEG bytes of
the S x S image. The metadata is read as data and its structure checked before any file it
names is opened (docs/untrusted_files.md).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

# File layout of `prepared:` datasets (written by prepare.prepare_dataset).
PREPARED_METADATA = "metadata.json"
# One record = the label as little-endian int64, then the JPEG bytes of the S x S image.
_RECORD_HEADER = struct.Struct("<q")


def read_prepared_metadata(directory: str) -> dict[str, Any]:
    """The metadata.json of a prepared dataset, checked: a dict of splits whose files are names
    inside `directory`.

    Raises:
      ValueError: not JSON, or not that structure (the message names the file).
    """
    path = os.path.join(directory, PREPARED_METADATA)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        meta = f"not JSON ({type(e).__name__}: {e})"
    problem = meta if isinstance(meta, str) else _metadata_problem(meta)
    if problem:
        raise ValueError(
            f"{path} is not the metadata of a prepared dataset: {problem}; prepare the data "
            "again (python -m alexnet_jax.prepare)."
        )
    return meta


def _metadata_problem(meta: Any) -> str:
    """What is wrong with a prepared dataset's metadata ('' when nothing)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("splits"), dict):
        return "no dict of 'splits'"
    for split, entry in meta["splits"].items():
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            return f"split {split!r} lists no file names"
        outside = [f for f in files if os.path.basename(f) != f or f in ("", ".", "..")]
        if outside:  # a path would read files from elsewhere
            return f"split {split!r} names files outside its folder: {outside[:3]}"
    if type(meta.get("num_classes")) is not int:
        return f"num_classes is {meta.get('num_classes')!r:.60}, not a whole number"
    return ""


def prepared_resize_mode(meta: dict[str, Any]) -> str:
    """The resize mode a prepared dataset's metadata records (before the field: §2's)."""
    return meta.get("resize_mode", "shorter_side")


def prepared_record(image_jpeg: bytes, label: int) -> bytes:
    """One record of a `prepared:` dataset."""
    return _RECORD_HEADER.pack(label) + image_jpeg


def parse_prepared_record(record: bytes) -> tuple[int, bytes]:
    """(label, JPEG bytes) of one record of a `prepared:` dataset (`prepared_record`'s inverse).

    Raises:
      struct.error: a record shorter than its label.
    """
    (label,) = _RECORD_HEADER.unpack_from(record)
    return label, record[_RECORD_HEADER.size :]
