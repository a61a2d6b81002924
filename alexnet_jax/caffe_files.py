"""Caffe's files, read without Caffe and without running anything from them.

* **bvlc_alexnet.npy**, the caffe-tensorflow converter's pickled dict `{layer: [weights,
  biases]}` (`read_caffe_npy`; weights.py turns it into this project's parameters). A pickle
  can name any function to be called as it loads, so only numpy arrays, dtypes and plain
  containers are loaded, by a restricted pure-Python unpickler that refuses anything else
  before it runs (docs/untrusted_files.md).
* **imagenet_mean.binaryproto**, Caffe's mean image as a `BlobProto` (`read_binaryproto`;
  `augment.load_mean_file` reads it for `augment.mean_file`), parsed from the protobuf wire
  format: neither Caffe nor a protobuf module is needed, and no length field allocates more
  than the file holds.

Every problem is one `CaffeFileError` line naming the file.
"""

from __future__ import annotations

import _compat_pickle
import math
import os
import pickle
from typing import Any

import numpy as np

from alexnet_jax.errors import first_line


class CaffeFileError(ValueError):
    """A file that is not the Caffe file it should be (the message says why, in one line)."""


# --- The caffe-tensorflow .npy, unpickled without running anything from the file -----------
#
# np.save of the converter's dict writes a .npy header for a 0-d object array and then the
# pickle of that array. np.load(allow_pickle=True) would run whatever callable the pickle names
# (an os.system is as easy to write as an array). The pickle of a dict of float32 arrays names
# three globals and nothing else, observed in files written by numpy 2.4 (protocol 4) and, as
# the converter wrote them, by numpy 1.x under Python 2 (protocol 2, numpy.core.multiarray,
# Python 2 str for keys and data, hence latin-1): numpy's `_reconstruct(ndarray, (0,), b'b')`
# makes an empty array that BUILD (ndarray.__setstate__) fills, and `dtype('f4', False, True)`
# a dtype that BUILD (dtype.__setstate__) gives its byte order. Dicts, lists and tuples are
# opcodes. The pure-Python unpickler is used because only it lets each REDUCE and BUILD be
# checked: numpy's __setstate__ accepts states numpy never writes, e.g. an object dtype with
# its flags cleared, after which an array's raw bytes would be taken as object pointers.

_NDARRAY = object()  # what `numpy.ndarray` unpickles to: only an argument of _reconstruct


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's `_reconstruct` for the one call ndarray.__reduce__ writes."""
    if (
        subtype is not _NDARRAY
        or type(shape) is not tuple
        or shape != (0,)
        or dtype not in ("b", b"b")
    ):
        raise pickle.UnpicklingError("numpy's _reconstruct is called as no array pickle calls it")
    return np.empty((0,), np.int8)


def _plain_dtype(dtype: Any) -> bool:
    """Whether `dtype` is a number or object dtype exactly as np.dtype(its str) makes it."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufcO":
        return False
    fresh = np.dtype(dtype.str)
    same = (dtype.flags, dtype.itemsize, dtype.names, dtype.subdtype)
    return same == (fresh.flags, fresh.itemsize, None, None)


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """np.dtype(spec) for a number or object type, as a copy (what numpy's pickles ask for), so
    that BUILD can give it its byte order."""
    del align, copy
    dtype = np.dtype(spec, copy=True) if type(spec) is str else None
    if not _plain_dtype(dtype):
        raise pickle.UnpicklingError(f"the dtype {spec!r:.40} is not a number or object type")
    return dtype


def _state_ok(inst: Any, state: Any) -> bool:
    """Whether BUILD's `state` is one numpy writes for `inst` (an array or a dtype)."""
    if type(state) is not tuple:
        return False
    if type(inst) is np.ndarray:  # (1, shape, dtype, Fortran order, bytes or latin-1 str / list)
        if len(state) != 5 or type(state[1]) is not tuple or not _plain_dtype(state[2]):
            return False
        version, shape, dtype, _, data = state
        if type(version) is not int or version != 1:
            return False
        if not all(type(n) is int and n >= 0 for n in shape):
            return False
        # numpy checks the length of bytes, not of an object array's list: a short list
        # makes it read past the list's end (a crash in numpy 2.4).
        if dtype.kind == "O":
            return type(data) is list and len(data) == math.prod(shape)
        return type(data) in (bytes, str) and len(data) == math.prod(shape) * dtype.itemsize
    if isinstance(inst, np.dtype):  # (3, byte order, None, None, None, -1, -1, its own flags)
        if len(state) != 8 or any(type(v) is not int for v in state[:1] + state[5:]):
            return False
        fixed = state[:1] + state[5:] == (3, -1, -1, inst.flags)
        return fixed and state[1] in ("<", ">", "|", "=") and state[2:5] == (None,) * 3
    return False


def _refuse(opcode: str) -> Any:
    def load(self: pickle._Unpickler) -> None:
        raise pickle.UnpicklingError(f"the pickle uses {opcode}, which numpy never writes")

    return load


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that a bvlc_alexnet.npy never needs (`name`)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _ArrayUnpickler(pickle._Unpickler):
    """Unpickles numpy arrays, dtypes and plain containers, and refuses anything else before
    it is called: other globals, calls other than the two above, states numpy never writes,
    and the opcodes that build other objects."""

    GLOBALS = {
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1.x, the converter's
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
    }
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python 2's names in Python 3's, as pickle.Unpickler reads them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in self.GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return self.GLOBALS[module, name]

    def load_reduce(self) -> None:
        args, func = self.stack.pop(), self.stack[-1]
        if (func is not _reconstruct and func is not _dtype) or type(args) is not tuple:
            raise pickle.UnpicklingError("the pickle calls something other than numpy's")
        self.stack[-1] = func(*args)

    def load_build(self) -> None:
        state, inst = self.stack.pop(), self.stack[-1]
        if not _state_ok(inst, state):
            kind = type(inst).__name__
            raise pickle.UnpicklingError(f"the pickle sets a state numpy never writes on {kind}")
        inst.__setstate__(state)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    for _opcode in ("INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "PERSID", "BINPERSID", "EXT1", "EXT2",
                    "EXT4"):  # fmt: skip
        dispatch[getattr(pickle, _opcode)[0]] = _refuse(_opcode)
    del _opcode


class _Bounded:
    """A file's reads, each refused before it allocates when it asks for more than is left
    (the pure-Python unpickler reads a length field's bytes in one call, unchecked)."""

    def __init__(self, f: Any, left: int):
        self._f, self._left = f, left

    def read(self, n: int) -> bytes:
        if n > self._left:
            raise pickle.UnpicklingError(f"it claims {n} bytes where {self._left} are left")
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._f.readline()
        self._left -= len(line)
        return line


def refusal(path: str, name: str, what: str, loads: str) -> str:
    """The one line for a pickle that names a global `what` never needs, refused before it ran
    (weights.py says the same of a torchvision .pth)."""
    return (
        f"{path}: refused: the pickle names the global {name!r}, which {what} never needs "
        f"(only {loads} are loaded; nothing from the file is executed)."
    )


def read_caffe_npy(path: str) -> dict:
    """The dict of a caffe-tensorflow .npy, read with `_ArrayUnpickler` (nothing runs).

    Raises:
      CaffeFileError: one line: not such a file, damaged, or a pickle naming anything else.
    """
    fmt = "caffe-tensorflow .npy (a pickled dict of {layer: [weights, biases]})"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"it is .npy format version {version}, not 1.0 or 2.0")
            read = np.lib.format.read_array_header_1_0
            if version == (2, 0):
                read = np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            if not dtype.hasobject:
                raise CaffeFileError(
                    f"{path} holds a {dtype} array of shape {shape}, not a dict of {{layer: "
                    "[weights, biases]}} (the caffe-tensorflow bvlc_alexnet.npy format)."
                )
            left = os.fstat(f.fileno()).st_size - f.tell()
            data = _ArrayUnpickler(_Bounded(f, left), encoding="latin1").load()
    except CaffeFileError:
        raise
    except _RefusedGlobal as e:
        loads = "numpy arrays, dtypes and plain containers"
        raise CaffeFileError(refusal(path, e.name, "a bvlc_alexnet.npy", loads)) from None
    except Exception as e:  # any damage: the unpickler raises what the bytes lead it to
        raise CaffeFileError(
            f"{path} cannot be read as a {fmt}: {first_line(e)}. Is the file complete?"
        ) from None
    if isinstance(data, np.ndarray) and data.dtype == object and data.size == 1:
        data = data.item()
    if not isinstance(data, dict):
        raise CaffeFileError(
            f"{path} holds a {type(data).__name__}, not a dict of {{layer: [weights, biases]}} "
            "(the caffe-tensorflow bvlc_alexnet.npy format)."
        )
    return data


# --- Caffe's BlobProto (.binaryproto), from the protobuf wire format --------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("ends inside a varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes):
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes for
    length-delimited and fixed-width fields."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, at = data[at : at + width], at + width
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at : at + length], at + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if at > len(data):
            raise ValueError("is truncated")
        yield number, wire, value


def read_binaryproto(path: str) -> np.ndarray:
    """The array of a Caffe `BlobProto` file (e.g. imagenet_mean.binaryproto), float32 in its
    (num, channels, height, width) or `shape` order. Parsed from the wire format, so neither
    Caffe nor its generated protobuf module is needed.

    Raises:
      CaffeFileError: not a BlobProto with data (one line naming the file).
    """
    with open(path, "rb") as f:
        data = f.read()
    legacy, dims, values = {}, [], []
    try:
        for number, wire, value in _fields(data):
            if number in (1, 2, 3, 4) and wire == 0:  # num, channels, height, width
                legacy[number] = value
            elif number == 5 and wire in (2, 5):  # data: packed floats, or one float
                values.append(np.frombuffer(value, "<f4"))
            elif number == 8 and wire == 2:  # double_data, packed
                values.append(np.frombuffer(value, "<f8").astype(np.float32))
            elif number == 7 and wire == 2:  # shape: BlobShape { repeated int64 dim = 1 }
                for n, w, d in _fields(value):
                    if n == 1 and w == 0:
                        dims.append(d)
                    elif n == 1 and w == 2:
                        at = 0
                        while at < len(d):
                            dim, at = _varint(d, at)
                            dims.append(dim)
    except ValueError as e:
        raise CaffeFileError(f"{path} is not a Caffe BlobProto file: it {e}") from None
    flat = np.concatenate(values) if values else np.zeros(0, np.float32)
    shape = dims or [legacy.get(i, 1) for i in (1, 2, 3, 4)]
    if not flat.size or math.prod(shape) != flat.size:  # exact: a file's dims may overflow int64
        raise CaffeFileError(
            f"{path} is not a Caffe BlobProto file with data: {flat.size} values for the "
            f"shape {tuple(shape)}."
        )
    try:
        return flat.reshape(shape)
    except ValueError as e:  # more dimensions than numpy has
        raise CaffeFileError(
            f"{path} is not a Caffe BlobProto file: {len(shape)} dims ({e})."
        ) from None
