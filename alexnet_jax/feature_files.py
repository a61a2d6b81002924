"""The folder `python -m alexnet_jax.features` writes, and its reading (docs/transfer.md).

Files in the folder: per layer, `<layer>/part-00000.npy`, ... (float32 rows (n, D), D the
flattened size of one example's activation, `--shard_rows` rows a file, ~256 MiB by default),
`labels.npy` (int64), `examples.txt` (one line per example, the source's name for it,
`Source.example_name`, with backslashes and line breaks escaped) and `features.json`, the
record of what was computed from what, written last. When everything is smaller than 64 MiB
(or `--format=npz`) the features and labels are one `features.npz` instead. Everything is
written into a temporary sibling folder that is renamed to the destination at the end, so a
failed run leaves nothing; an existing non-empty destination is refused unless `overwrite`.

Memory is bounded by a batch: each batch's rows are appended to the open shards as they come
(the .npy header has a fixed size and gets the row count when the shard is closed), and the
.npz is assembled from the shards by copying bytes (experiments/bench/features_memory.py measures
it flat in the number of images). Reading maps every shard and checks it
against the record before anything is allocated; nothing in the folder is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from collections.abc import Iterable
from typing import Any

import numpy as np

from alexnet_jax.errors import first_line

FILE_FORMATS = ("auto", "shards", "npz")
RECORD = "features.json"
LABELS = "labels.npy"
EXAMPLES = "examples.txt"
NPZ = "features.npz"
SHARD_BYTES = 256 << 20  # the default shard: about this many bytes of float32 rows
NPZ_BELOW = 64 << 20  # format 'auto' writes one .npz when all the features are below this
RECORD_VERSION = 1


class FeaturesError(ValueError):
    """Features that cannot be extracted or read as asked (the message says why)."""


# --- Writing --------------------------------------------------------------------------------

# Every .npy written here has a header of this many bytes, so that the row count can be written
# into it when the file is closed, after the rows (a longer count would not fit a tighter one).
_HEADER_BYTES = 128


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    """A version 1.0 .npy header of exactly `_HEADER_BYTES` bytes."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    text = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    assert len(text) == _HEADER_BYTES - 10, text
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class _NpyWriter:
    """Rows appended to one .npy file as they come; the header gets the count at `close`."""

    def __init__(self, path: str, row_shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.row_shape, self.dtype = path, tuple(row_shape), np.dtype(dtype)
        self.rows = 0
        self._f = open(path, "wb")
        self._f.write(_npy_header((0, *self.row_shape), self.dtype.str))

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        assert rows.shape[1:] == self.row_shape, (rows.shape, self.row_shape)
        self._f.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self._f.seek(0)
        self._f.write(_npy_header((self.rows, *self.row_shape), self.dtype.str))
        self._f.close()


class _ShardWriter:
    """One layer's rows (n, D) float32 as `part-00000.npy`, ... of at most `shard_rows` rows."""

    def __init__(self, root: str, name: str, dim: int, shard_rows: int):
        self.root, self.name, self.dim, self.shard_rows = root, name, dim, shard_rows
        os.makedirs(os.path.join(root, name))
        self.shards: list[dict[str, Any]] = []
        self._open: _NpyWriter | None = None

    def write(self, rows: np.ndarray) -> None:
        while len(rows):
            if self._open is None:
                file = f"{self.name}/part-{len(self.shards):05d}.npy"
                self._open = _NpyWriter(os.path.join(self.root, file), (self.dim,), np.float32)
                self.shards.append({"file": file, "rows": 0})
            room = self.shard_rows - self._open.rows
            self._open.write(rows[:room])
            rows = rows[room:]
            self.shards[-1]["rows"] = self._open.rows
            if self._open.rows == self.shard_rows:
                self._open.close()
                self._open = None

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


def _copy_npy_data(path: str, out: Any) -> None:
    """Copies the rows of a .npy written by `_NpyWriter` (everything after its header)."""
    with open(path, "rb") as f:
        f.seek(_HEADER_BYTES)
        shutil.copyfileobj(f, out, 16 << 20)


def _write_npz(tmp: str, layers: list[dict[str, Any]], rows: int) -> None:
    """features.npz (a key per layer and 'labels', stored like np.savez) from the shards and
    labels.npy, copied by bytes (memory: one copy buffer), which are then removed."""
    with zipfile.ZipFile(os.path.join(tmp, NPZ), "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for layer in layers:
            with z.open(f"{layer['name']}.npy", "w", force_zip64=True) as f:
                f.write(_npy_header((rows, layer["dim"]), "<f4"))
                for shard in layer.pop("shards"):
                    _copy_npy_data(os.path.join(tmp, shard["file"]), f)
            shutil.rmtree(os.path.join(tmp, layer["name"]))
            layer["file"] = NPZ
        with z.open("labels.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((rows,), "<i8"))
            _copy_npy_data(os.path.join(tmp, LABELS), f)
    os.remove(os.path.join(tmp, LABELS))


def _example_line(name: str) -> str:
    """One line of examples.txt: backslashes and line breaks in a name escaped."""
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r") + "\n"


def check_out(out: str, overwrite: bool) -> None:
    """Refuses a destination that is a file, or a non-empty folder unless `overwrite`."""
    if os.path.isfile(out):
        raise FeaturesError(f"--out={out} is a file; give a folder.")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FeaturesError(
            f"--out={out} exists and is not empty; pass --overwrite to replace it, or another "
            "--out."
        )


def _move_into_place(tmp: str, out: str) -> None:
    """Renames the finished temporary folder to `out` (an old `out` is replaced)."""
    old = None
    if os.path.isdir(out):
        old = f"{tmp}.old"
        os.rename(out, old)
    os.rename(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


class FolderWriter:
    """A features folder being written, batch by batch, in a temporary sibling of `out`.

    Use as a context: on an exception the temporary folder is removed. `finish` closes the
    files and lays them out (shards or one .npz), `commit` writes the record and renames the
    folder to `out`.

    Args:
      out: the destination, an absolute path `check_out` accepted.
      layers: `features.resolve_layers`' entries (name, dim, ...); `finish` adds each one's
        files to them.
      shard_rows: rows per .npy shard (0: ~256 MiB a shard).
    """

    def __init__(self, out: str, layers: list[dict[str, Any]], shard_rows: int = 0):
        self.out, self.layers = out, layers
        os.makedirs(os.path.dirname(out), exist_ok=True)
        self.tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        try:
            self._shards = {
                layer["name"]: _ShardWriter(self.tmp, layer["name"], layer["dim"],
                                            shard_rows or max(1, SHARD_BYTES // (4 * layer["dim"])))
                for layer in layers
            }  # fmt: skip
            self._labels = _NpyWriter(os.path.join(self.tmp, LABELS), (), np.int64)
            self._names = open(os.path.join(self.tmp, EXAMPLES), "w", encoding="utf-8")
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def __enter__(self) -> FolderWriter:
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is not None:  # whatever stopped it: nothing is left behind
            self._names.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, features: dict[str, np.ndarray], labels: np.ndarray, names: Iterable[str]):
        """Appends one batch: {layer: float32 (n, D)}, int64 labels (n,), the n examples' names."""
        for name, shards in self._shards.items():
            shards.write(features[name])
        self._labels.write(labels)
        self._names.writelines(_example_line(name) for name in names)

    def finish(self, file_format: str) -> dict[str, Any]:
        """Closes the files and stores them as `file_format` ('auto': one .npz below 64 MiB);
        returns the record's fields for the files: format, examples, labels, examples_file,
        bytes. The layers get their dtype and shards (or file)."""
        self._names.close()
        for shards in self._shards.values():
            shards.close()
        self._labels.close()
        count = self._labels.rows
        for layer in self.layers:
            layer["dtype"] = "float32"
            layer["shards"] = self._shards[layer["name"]].shards
        total = 4 * count * sum(layer["dim"] for layer in self.layers)
        stored = "npz" if file_format == "npz" or (file_format == "auto" and total < NPZ_BELOW) \
            else "shards"  # fmt: skip
        if stored == "npz":
            _write_npz(self.tmp, self.layers, count)
        return {
            "format": stored,
            "examples": count,
            "labels": {"file": NPZ if stored == "npz" else LABELS, "dtype": "int64"},
            "examples_file": EXAMPLES,
            "bytes": total,
        }

    def commit(self, record: dict[str, Any], overwrite: bool) -> None:
        """Writes `record` as features.json, last, and renames the folder to `out`."""
        path = os.path.join(self.tmp, RECORD)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(path + ".tmp", path)
        check_out(self.out, overwrite)  # nobody wrote there meanwhile
        _move_into_place(self.tmp, self.out)


# --- Reading --------------------------------------------------------------------------------


def read_record(out: str) -> dict[str, Any]:
    """The features.json of a features folder, or one FeaturesError."""
    path = os.path.join(out, RECORD)
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise FeaturesError(
            f"{out} has no {RECORD}: not a features folder (python -m alexnet_jax.features "
            "writes one), or its extraction did not finish."
        ) from None
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise FeaturesError(f"{path} cannot be read ({first_line(e)}); extract again.") from None
    if not isinstance(record, dict) or not isinstance(record.get("layers"), list):
        raise FeaturesError(f"{path} is not a features record (no list of layers).")
    return record


def _load_array(path: str, shape: tuple[int, ...], dtype: str, z: Any = None, key: str = ""):
    """An array of a features folder, checked against the record's shape and dtype."""
    where = f"{path}:{key}" if key else path
    try:
        if z is not None:
            array = z[key]
        else:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError:
        raise FeaturesError(f"{where} is missing; extract the features again.") from None
    except Exception as e:  # truncated, not an .npy, a bad zip: whatever numpy met
        raise FeaturesError(
            f"{where} cannot be read ({first_line(e)}): damaged; extract the features again."
        ) from None
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise FeaturesError(
            f"{where} holds {array.dtype} {array.shape}, its record says {dtype} {tuple(shape)}: "
            "damaged or from another extraction; extract the features again."
        )
    return array


def load_features(out: str, layer: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(float32 features (N, D), int64 labels (N,), the record) of one layer of a features
    folder, shards or .npz, every file checked against the record.

    Raises:
      FeaturesError: one line, for a missing or damaged file or an unknown layer.
    """
    record = read_record(out)
    layers = {entry.get("name"): entry for entry in record["layers"]}
    if layer not in layers:
        raise FeaturesError(f"{out} has no layer {layer!r}; it has {', '.join(map(str, layers))}.")
    entry, n = layers[layer], record.get("examples")
    try:
        dim = int(entry["dim"])
        if record["format"] == "npz":
            path = os.path.join(out, NPZ)
            try:
                z = np.load(path, allow_pickle=False)
            except FileNotFoundError:
                raise FeaturesError(f"{path} is missing; extract the features again.") from None
            except Exception as e:
                raise FeaturesError(
                    f"{path} cannot be read ({first_line(e)}): damaged; extract again."
                ) from None
            with z:
                x = np.array(_load_array(path, (n, dim), "float32", z, layer))
                labels = np.array(_load_array(path, (n,), "int64", z, "labels"))
            return x, labels, record
        # Every shard is mapped (its header checked against the record, its size against the
        # file) before anything is allocated: a record claiming more rows than the files hold
        # is refused, not allocated.
        parts = []
        for shard in entry["shards"]:
            name = str(shard["file"])
            if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
                raise FeaturesError(f"{out}/{RECORD} names a shard outside the folder: {name!r}.")
            parts.append(_load_array(os.path.join(out, name), (int(shard["rows"]), dim), "float32"))
        row = sum(len(part) for part in parts)
        if row != n:
            raise FeaturesError(
                f"{out}: the shards of {layer} hold {row} rows, the record says {n}; extract again."
            )
        x = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        labels = np.array(_load_array(os.path.join(out, LABELS), (n,), "int64"))
    except (KeyError, TypeError) as e:
        raise FeaturesError(f"{out}/{RECORD} is not a features record ({e!r} missing).") from None
    return x, labels, record
