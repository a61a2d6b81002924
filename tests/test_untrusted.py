"""Files a user may get from elsewhere, made hostile or damaged: each is parsed without running
anything from it, and refused with one line that names the file (docs/untrusted_files.md).

A hostile pickle here calls `os.system`, `subprocess.call`, `subprocess.Popen`, `exec` or
`eval` to create a marker file; the marker must not exist afterwards. The pickles that use
only numpy's own globals but states numpy never writes are built the same way, by objects
whose `__reduce__` returns what a hostile file would hold.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy._core.multiarray import _reconstruct
from numpy.lib import format as npy_format

from alexnet_jax import (
    augment,
    caffe_files,
    images,
    input_pipeline,
    metrics,
    prepared_files,
    sources,
    weights,
    workdir,
)
from configs import caffe_bvlc_alexnet
from configs import default as default_config

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("os.system", "subprocess.call", "subprocess.Popen", "builtins.exec", "builtins.eval")


class Payload:
    """Unpickles by calling `kind` to create the file `marker`."""

    def __init__(self, kind: str, marker: Path):
        self.kind, self.marker = kind, str(marker)

    def __reduce__(self):
        code = f"open({self.marker!r}, 'w').close()"
        return {
            "os.system": (os.system, (f"touch {self.marker}",)),
            "subprocess.call": (subprocess.call, (["touch", self.marker],)),
            "subprocess.Popen": (subprocess.Popen, (["touch", self.marker],)),
            "builtins.exec": (exec, (code,)),
            "builtins.eval": (eval, (code,)),
        }[self.kind]


def global_name(kind: str) -> str:
    """The name a refusal gives `kind`: os.system is posix.system (a Python 2 name, such as
    __builtin__.exec in a protocol 2 pickle, is given as Python 3 reads it)."""
    return kind.replace("os.", "posix.")


class Reduce:
    """Unpickles as `func(*args)`, then BUILD `state` if given: any call a file may hold."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2 did: its str (text and bytes alike) as BINSTRING / SHORT_BINSTRING,
    which Python 3 reads back as str with encoding='latin1'."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def object_npy(path: Path, obj, protocol: int = 4, writer: str = "numpy 2") -> Path:
    """An .npy of a 0-d object array holding `obj`, as np.save writes it: the header, then the
    pickle of the array. `writer` 'numpy 1.x, Python 3' names numpy.core.multiarray, 'numpy
    1.x, Python 2' also writes Python 2 strings (the caffe-tensorflow converter's file)."""
    array = np.empty((), object)
    array[()] = obj
    if writer == "numpy 1.x, Python 2":
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(array)
        data = buf.getvalue()
    else:
        data = pickle.dumps(array, protocol=protocol)
    if writer != "numpy 2":
        assert protocol < 4  # GLOBAL is text below protocol 4: the module can be renamed
        data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    return raw_npy(path, data)


def raw_npy(path: Path, data: bytes) -> Path:
    """An .npy whose header says 0-d object array, followed by `data` as its pickle."""
    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(data)
    return path


def huge_npy(path: Path) -> Path:
    """A .npy whose header claims a 4 TiB float32 array, followed by 100 bytes."""
    with open(path, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (2**40,)}
        npy_format.write_array_header_1_0(f, header)
        f.write(bytes(100))
    return path


def one_line(error: BaseException, *parts: str) -> str:
    text = str(error)
    assert "\n" not in text and all(p in text for p in parts), text
    return text


def load_caffe(path: Path):
    config = caffe_bvlc_alexnet.get_config()
    return weights.load_weights(str(path), "caffe_npy", config.model, config.image_size)


# --- Caffe .npy: the restricted unpickler ----------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("where", ["in the dict", "top level"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_caffe_npy_naming_any_other_global_is_refused_before_it_runs(
    tmp_path, kind, where, protocol
):
    marker = tmp_path / "marker"
    payload = Payload(kind, marker)
    path = tmp_path / "bvlc_alexnet.npy"
    if where == "in the dict":  # protocol 2 as Python 2 wrote it (Python 3 adds _codecs.encode)
        writer = "numpy 1.x, Python 2" if protocol == 2 else "numpy 2"
        object_npy(path, {"conv1": [payload, np.zeros(96, np.float32)]}, protocol, writer)
    else:
        raw_npy(path, pickle.dumps(payload, protocol=protocol))
    with pytest.raises(weights.WeightsError) as e:
        load_caffe(path)
    name = global_name(kind)
    one_line(e.value, str(path), f"refused: the pickle names the global {name!r}")
    assert not marker.exists()


def converter_dict(seed: int = 0) -> dict:
    """bvlc_alexnet.npy's layers, small: both layouts of a layer the converters write."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(weights._LAYERS):
        w = rng.normal(size=(3, 3, 2, 4) if i < 5 else (6, 4)).astype(np.float32)
        b = rng.normal(size=4).astype(np.float32)
        out[name] = [w, b] if i % 2 else {"weights": w, "biases": b}
    return out


@pytest.mark.parametrize(
    "writer, protocol",
    [("numpy 2", 4), ("numpy 1.x, Python 3", 3), ("numpy 1.x, Python 2", 2)],
)
def test_a_genuine_converter_file_loads_bit_identically(tmp_path, writer, protocol):
    want = converter_dict()
    path = object_npy(tmp_path / "bvlc_alexnet.npy", want, protocol, writer)
    got = caffe_files.read_caffe_npy(str(path))
    # numpy's own loader (safe here: the test wrote the file) reads the same.
    trusted = np.load(path, allow_pickle=True, encoding="latin1").item()
    assert list(got) == list(want) == list(trusted)
    for name, entry in want.items():
        for key in [0, 1] if isinstance(entry, list) else ["weights", "biases"]:
            a, b, c = entry[key], got[name][key], trusted[name][key]
            assert type(b) is np.ndarray and a.dtype == b.dtype == c.dtype
            assert a.shape == b.shape and a.tobytes() == b.tobytes() == c.tobytes()


@pytest.mark.slow  # two full-size files (244 MB each), one pickled in pure Python
def test_a_full_python_2_converter_file_gives_the_same_parameters(tmp_path):
    from tests.test_weights import caffe_reference, write_converter_npy

    today = tmp_path / "today.npy"
    write_converter_npy(today, caffe_reference())  # np.save under numpy 2, protocol 4
    data = np.load(today, allow_pickle=True).item()
    old = object_npy(tmp_path / "py2.npy", data, 2, "numpy 1.x, Python 2")
    a, b = load_caffe(today), load_caffe(old)
    for name in weights._LAYERS:
        for part in ("kernel", "bias"):
            assert a[name][part].tobytes() == b[name][part].tobytes()


def _refused_state(tmp_path, obj) -> str:
    with pytest.raises(weights.WeightsError) as e:
        load_caffe(object_npy(tmp_path / "bvlc_alexnet.npy", {"conv1": [obj, obj]}))
    return one_line(e.value, "bvlc_alexnet.npy cannot be read")


def test_numpy_globals_with_states_numpy_never_writes_are_refused(tmp_path):
    array = (np.ndarray, (0,), b"b")
    # An object dtype with its flags cleared: the array's 8 raw bytes would be a pointer.
    no_flags = Reduce(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))
    text = _refused_state(
        tmp_path, Reduce(_reconstruct, array, (1, (1,), no_flags, False, b"A" * 8))
    )
    assert "a state numpy never writes on ObjectDType" in text
    # An object array with a shorter list than its shape (numpy 2.4 reads past the list).
    short = (1, (1000,), np.dtype("O"), False, [1])
    text = _refused_state(tmp_path, Reduce(_reconstruct, array, short))
    assert "a state numpy never writes on ndarray" in text
    # A structured dtype, whose fields a state could point at object pointers.
    fields = (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 27)
    text = _refused_state(tmp_path, Reduce(np.dtype, ("V8", False, True), fields))
    assert "the dtype 'V8' is not a number or object type" in text
    # _reconstruct of a huge shape, or of another type than numpy's.
    text = _refused_state(tmp_path, Reduce(_reconstruct, (np.ndarray, (2**40,), b"b")))
    assert "_reconstruct is called as no array pickle calls it" in text


@pytest.mark.parametrize(
    "data, says",
    [
        (b"\x80\x02cnumpy\ndtype\n)\x81.", "the pickle uses NEWOBJ"),  # cls.__new__(cls)
        (b"\x80\x02(cnumpy\ndtype\nS'f4'\no.", "the pickle uses OBJ"),
        (b"\x80\x02\x82\x01.", "the pickle uses EXT1"),  # the copyreg extension registry
        (b"\x80\x02P0\n.", "the pickle uses PERSID"),
        # BINBYTES8 claiming 4 EiB: refused before anything that size is allocated.
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"xx.", "claims 4611686018427387904 bytes"),
        (b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b".", "claims 1099511627776 bytes"),
    ],
)
def test_opcodes_and_lengths_numpy_never_writes_are_refused(tmp_path, data, says):
    tracemalloc.start()
    try:
        with pytest.raises(weights.WeightsError) as e:
            load_caffe(raw_npy(tmp_path / "bvlc_alexnet.npy", data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line(e.value, "bvlc_alexnet.npy cannot be read", says)
    assert peak < 1 << 20


def test_damaged_and_plain_npy_files_are_one_line(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros(3, np.float32))
    with pytest.raises(weights.WeightsError) as e:
        load_caffe(tmp_path / "plain.npy")
    one_line(e.value, "plain.npy holds a float32 array of shape (3,), not a dict")
    good = object_npy(tmp_path / "good.npy", converter_dict())
    for size in (3, 20, 200, good.stat().st_size - 1):  # cut in the magic, header, pickle
        cut = tmp_path / f"cut{size}.npy"
        cut.write_bytes(good.read_bytes()[:size])
        with pytest.raises(weights.WeightsError) as e:
            load_caffe(cut)
        one_line(e.value, f"cut{size}.npy cannot be read")
    # Layers that are not arrays of numbers (a pickle may hold any container).
    bad = {**converter_dict(), "conv1": [{"a": 1}, [1, [2]]]}
    with pytest.raises(weights.WeightsError) as e:
        load_caffe(object_npy(tmp_path / "dicts.npy", bad))
    one_line(e.value, "layer 'conv1' weights are a dict, not an array of numbers")


def _evaluate_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "alexnet_jax.evaluate", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_the_evaluate_command_refuses_a_hostile_caffe_npy_in_one_line(tmp_path):
    marker = tmp_path / "marker"
    path = object_npy(tmp_path / "bvlc_alexnet.npy", {"conv1": Payload("os.system", marker)})
    out = tmp_path / "out"
    done = _evaluate_cli(
        "--config=configs/caffe_bvlc_alexnet.py", f"--weights={path}",
        "--weights_format=caffe_npy", f"--out={out}", "--config.dataset=synthetic",
        "--config.synthetic_examples=8", "--config.eval_split=validation",
        "--config.batch_size=4", "--config.num_workers=0",
    )  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "refused: the pickle names the global 'posix.system'" in errors[0]
    assert "Traceback" not in done.stderr and not out.exists() and not marker.exists()


# --- torchvision weights: .npz (np.load, no pickle) and .pth (torch.load weights_only) --------


def test_a_torchvision_npz_with_an_object_array_is_refused(tmp_path):
    marker = tmp_path / "marker"
    payload = np.array([Payload("os.system", marker)], object)
    np.savez(tmp_path / "object.npz", **{"features.0.weight": payload})
    huge = huge_npy(tmp_path / "huge.npy").read_bytes()
    (tmp_path / "huge.npz").write_bytes(_zip_of("features.0.weight.npy", huge))
    config = caffe_bvlc_alexnet.get_config()
    for name, says in (("object.npz", "allow_pickle=False"), ("huge.npz", "Unable to allocate")):
        with pytest.raises(weights.WeightsError) as e:
            weights.load_weights(str(tmp_path / name), "torchvision", config.model, 224)
        one_line(e.value, f"{name} cannot be read as an .npz", says)
    assert not marker.exists()


def _zip_of(name: str, data: bytes) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess.Popen"])
def test_a_pth_with_a_global_outside_torchs_allowlist_is_refused(tmp_path, kind):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "marker"
    path = tmp_path / "alexnet.pth"
    torch.save({"features.0.weight": Payload(kind, marker)}, path)
    config = caffe_bvlc_alexnet.get_config()
    with pytest.raises(weights.WeightsError) as e:
        weights.load_weights(str(path), "torchvision", config.model, 224)
    text = one_line(e.value, str(path), "refused: the pickle names the global")
    assert "weights_only=True" in text and not marker.exists()


# --- Mean files and the statistics cache -----------------------------------------------------


def test_a_mean_npy_with_an_object_array_is_refused(tmp_path):
    marker = tmp_path / "marker"
    np.save(tmp_path / "mean.npy", np.array([Payload("os.system", marker)], object))
    huge_npy(tmp_path / "huge.npy")
    for name in ("mean.npy", "huge.npy"):
        with pytest.raises(ValueError) as e:
            augment.load_mean_file(str(tmp_path / name), "caffe", 256)
        one_line(e.value, f"mean_file='{tmp_path / name}' is not a .npy array")
    assert not marker.exists()


def test_hostile_binaryproto_files_are_one_line_without_a_large_allocation(tmp_path):
    rng = np.random.default_rng(0)
    files = {f"random{i}": rng.bytes(int(rng.integers(1, 4000))) for i in range(20)}
    # Field 5 (data), length-delimited, its length claiming 8 GiB.
    files["claims_8gib"] = b"\x2a" + _varint(8 << 30) + bytes(16)
    # shape {dim: 2, dim: 2**63 + 2}: in int64 their product wraps round to 4, the value count.
    shape = b"\x08\x02\x08" + _varint(2**63 + 2)
    files["overflow"] = b"\x3a" + _varint(len(shape)) + shape + b"\x2a\x10" + bytes(16)
    for name, data in files.items():
        path = tmp_path / f"{name}.binaryproto"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            with pytest.raises(ValueError) as e:
                augment.load_mean_file(str(path), "caffe", 256)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        one_line(e.value, str(path))
        assert peak < 1 << 20, (name, peak)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_a_statistics_cache_with_an_object_array_is_refused(tmp_path):
    marker = tmp_path / "marker"
    good = {"mean_image": np.zeros((4, 4, 3)), "pca_eigvals": np.ones(3), "pca_eigvecs": np.eye(3)}
    np.savez(
        tmp_path / "object.npz", **{**good, "pca_eigvals": np.array([Payload("os.system", marker)])}
    )
    np.savez(tmp_path / "shapes.npz", **{**good, "pca_eigvecs": np.eye(4)})
    np.savez(tmp_path / "missing.npz", mean_image=good["mean_image"])
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04" + bytes(100))
    for name in ("object", "shapes", "missing", "garbage"):
        with pytest.raises(ValueError) as e:
            augment.DataStats.load(tmp_path / f"{name}.npz")
        one_line(e.value, f"{name}.npz is not a statistics cache", "delete it")
    assert not marker.exists()
    np.savez(tmp_path / "good.npz", **good)
    assert augment.DataStats.load(tmp_path / "good.npz").pca_eigvecs.shape == (3, 3)


# --- JSON: prepared datasets, config records, metrics, the lock ------------------------------

# Strings that would run something if anything evaluated or unpickled them.
HOSTILE = [
    "__import__('os').system('touch {marker}')",
    "cos\nsystem\n(S'touch {marker}'\ntR.",  # a protocol 0 pickle calling os.system
    "{{!!python/object/apply:os.system ['touch {marker}']}}",  # YAML's
]


def _hostile(marker: Path) -> list[str]:
    return [s.format(marker=marker) for s in HOSTILE]


def _prepared(directory: Path, meta: dict) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    directory.mkdir()
    writer = ArrayRecordWriter(str(directory / "train.array_record-00000-of-00001"), "group_size:1")
    image = np.full((8, 8, 3), 90, np.uint8)
    writer.write(prepared_files.prepared_record(images.encode_jpeg(image, 95), 2))
    writer.close()
    (directory / prepared_files.PREPARED_METADATA).write_text(json.dumps(meta))


def test_prepared_metadata_is_data_and_a_damaged_one_is_one_line(tmp_path):
    marker = tmp_path / "marker"
    hostile = _hostile(marker)
    files = ["train.array_record-00000-of-00001"]
    meta = {
        "splits": {"train": {"files": files, "num_examples": 1}},
        "num_classes": 3,
        "class_names": hostile,
        "resize_mode": "shorter_side",
        "format": hostile[1],
    }
    _prepared(tmp_path / "ok", meta)
    source = sources.PreparedSource(str(tmp_path / "ok"), "train", 8)
    assert source.class_names == hostile and source[0]["label"] == 2
    damaged = {
        "not JSON": "{'splits': ",
        "nested too deep": "[" * 100_000,
        "a list": "[1, 2]",
        "outside its folder": json.dumps({**meta, "splits": {"train": {"files": ["../x"]}}}),
        "absolute": json.dumps({**meta, "splits": {"train": {"files": ["/etc/passwd"]}}}),
        "num_classes": json.dumps({**meta, "num_classes": hostile[0]}),
    }
    for i, text in enumerate(damaged.values()):
        _prepared(tmp_path / f"bad{i}", meta)
        (tmp_path / f"bad{i}" / prepared_files.PREPARED_METADATA).write_text(text)
        with pytest.raises(ValueError) as e:
            sources.PreparedSource(str(tmp_path / f"bad{i}"), "train", 8)
        one_line(e.value, f"bad{i}/metadata.json is not the metadata of a prepared dataset")
    assert not marker.exists()


def test_a_config_record_is_data(tmp_path):
    marker = tmp_path / "marker"
    hostile = _hostile(marker)
    config = json.loads(default_config.get_config().to_json_best_effort())
    config["dataset"], config["model"]["name"] = hostile[0], hostile[1]
    (tmp_path / "config.json").write_text(json.dumps(config))
    recorded = workdir.recorded_config(str(tmp_path))
    assert recorded["dataset"] == hostile[0] and recorded["model.name"] == hostile[1]
    for text in ("[1, 2]", "{'a': "):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(workdir.WorkdirError) as e:
            workdir.recorded_config(str(tmp_path))
        one_line(e.value, "config.json")
    assert not marker.exists()


def test_metrics_jsonl_is_data_and_a_damaged_line_is_named(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "metrics.jsonl"
    events = [{"step": s, "note": h} for s, h in enumerate(_hostile(marker), 1)]
    text = "".join(json.dumps(e) + "\n" for e in events)
    path.write_text(text + '{"step": 4, "lo')  # the last line cut off by a kill
    assert metrics.read_metrics(str(tmp_path)) == events
    metrics.MetricWriter(str(tmp_path), resume_step=2).close()  # drops steps 3 and the cut one
    assert metrics.read_metrics(str(tmp_path)) == events[:2]
    for bad in ('{"step": 1\n', "[1]\n", '{"note": 1}\n', "[" * 100_000 + "\n"):
        path.write_text(bad + text)
        with pytest.raises(ValueError) as e:
            metrics.read_metrics(str(tmp_path))
        one_line(e.value, f"{path}, line 1, is not an event")
    assert not marker.exists()


def test_a_lock_naming_hostile_strings_is_only_reported(tmp_path):
    marker = tmp_path / "marker"
    pid, host, started = _hostile(marker)
    (tmp_path / workdir.LOCK_NAME).write_text(
        json.dumps({"pid": pid, "host": host, "started": started})
    )
    with pytest.raises(workdir.WorkdirError, match="is in use by another run"):
        with workdir.Lock(str(tmp_path), say=lambda _: None):
            pass
    assert not marker.exists()


def test_a_damaged_data_iterator_state_is_one_line():
    config = default_config.get_config()
    config.update(dict(dataset="synthetic", synthetic_examples=16, resize_size=8, batch_size=4))
    config.num_workers = 0
    source = input_pipeline.create_source(config, "train")
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        for state in (
            {"next_batch": "__import__('os')", "skipped": {}},
            {"next_batch": -3, "skipped": {}},
            {"next_batch": 1, "skipped": []},
            {"next_batch": 1, "skipped": {"unreadable": 1.5}},
            [1, 2],
        ):
            with pytest.raises(ValueError) as e:
                it.set_state(state)
            one_line(e.value, "the data iterator state", "the checkpoint's data item is damaged")
        it.set_state({"next_batch": 2, "skipped": {"unreadable": 1}})
        assert it.get_state()["next_batch"] == 2 and it.skipped["unreadable"] == 1


# --- Images ---------------------------------------------------------------------------------


def test_postscript_in_an_image_file_is_not_run(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    marker = tmp_path / "marker"

    def ghostscript(*args, **kwargs):  # what Pillow's EPS decoder would start
        marker.touch()
        raise OSError("no Ghostscript in this test")

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    monkeypatch.setattr(EpsImagePlugin.subprocess, "check_call", ghostscript)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nshowpage\n"
    with pytest.raises(images.BadExample) as e:
        images.decode_square(eps, 8, "x.jpg")
    assert e.value.reason == "undecodable" and not marker.exists()


def test_an_image_claiming_ten_billion_pixels_is_skipped_before_decoding():
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    tracemalloc.start()
    try:
        with pytest.raises(images.BadExample) as e:
            images.decode_square(png, 8, "bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.reason == "undecodable" and "decompression bomb" in str(e.value).lower()
    assert peak < 1 << 20


# --- Checkpoints (Orbax) and TFDS ------------------------------------------------------------


def test_orbax_restores_without_pickle_and_json_items_are_data(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    marker = tmp_path / "marker"
    hostile = _hostile(marker)
    with ocp.CheckpointManager(tmp_path / "ck") as manager:  # the items checkpoint.py saves
        manager.save(1, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"w": np.arange(6.0)}),
            data=ocp.args.JsonSave({"iterator": {"next_batch": 1}}),
        ))  # fmt: skip
        manager.wait_until_finished()
    (tmp_path / "ck" / "1" / "data" / "metadata").write_text(json.dumps({"iterator": hostile}))

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used on Orbax's restore path")

    for name in ("load", "loads", "Unpickler", "_Unpickler"):
        monkeypatch.setattr(pickle, name, no_pickle)
    with ocp.CheckpointManager(tmp_path / "ck") as manager:
        restored = manager.restore(1, args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"w": np.zeros(6)}), data=ocp.args.JsonRestore(),
        ))  # fmt: skip
    assert restored["data"] == {"iterator": hostile}
    np.testing.assert_array_equal(restored["state"]["w"], np.arange(6.0))
    assert not marker.exists()


def test_tfds_imports_the_module_a_features_json_names(tmp_path, monkeypatch):
    """Documents a limitation (docs/untrusted_files.md): a dataset directory that TFDS reads
    from its files (a name TFDS has no builder for) names its feature classes in
    features.json, and TFDS imports their modules. The file carries no code, but the top level
    of any module importable here runs."""
    tfds = pytest.importorskip("tensorflow_datasets")
    marker = tmp_path / "marker"
    (tmp_path / "untrusted_probe_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "features.json").write_text(
        json.dumps({"type": "untrusted_probe_module.Feature", "content": {}})
    )
    with pytest.raises(ValueError, match="Unrecognized FeatureConnector"):
        tfds.features.FeatureConnector.from_config(str(tmp_path))
    assert marker.exists()
    sys.modules.pop("untrusted_probe_module", None)


def _features_folder(tmp_path: Path, file_format: str) -> Path:
    """A features folder as `alexnet_jax.features` writes it (random arrays, two layers)."""
    from alexnet_jax import feature_files

    out = tmp_path / f"features_{file_format}"
    out.mkdir()
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    labels = np.arange(6, dtype=np.int64)
    layers = [{"name": "fc7", "key": "fc7_act", "dim": 4, "shape": [4]}]
    if file_format == "npz":
        np.savez(out / feature_files.NPZ, fc7=x, labels=labels)
    else:
        (out / "fc7").mkdir()
        np.save(out / "fc7" / "part-00000.npy", x)
        np.save(out / feature_files.LABELS, labels)
        layers[0]["shards"] = [{"file": "fc7/part-00000.npy", "rows": 6}]
    (out / feature_files.RECORD).write_text(
        json.dumps({"format": file_format, "examples": 6, "layers": layers})
    )
    got, got_labels, _ = feature_files.load_features(str(out), "fc7")  # the genuine folder loads
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(got_labels, labels)
    return out


@pytest.mark.parametrize("file_format", ["shards", "npz"])
def test_a_features_folder_is_data_and_a_hostile_one_is_one_line(tmp_path, file_format):
    from alexnet_jax import feature_files

    marker = tmp_path / "marker"
    out = _features_folder(tmp_path, file_format)
    payload = np.array([Payload("os.system", marker)], object)
    if file_format == "npz":
        np.savez(out / feature_files.NPZ, fc7=payload, labels=np.arange(6))
    else:
        np.save(out / "fc7" / "part-00000.npy", payload, allow_pickle=True)
    with pytest.raises(feature_files.FeaturesError) as e:
        feature_files.load_features(str(out), "fc7")
    one_line(e.value, "cannot be read")
    assert not marker.exists()
    if file_format == "shards":
        # A shard claiming 4 TiB, a record claiming more rows than the files hold, and a
        # shard path outside the folder: refused without allocating or reading elsewhere.
        huge_npy(out / "fc7" / "part-00000.npy")
        with pytest.raises(feature_files.FeaturesError) as e:
            feature_files.load_features(str(out), "fc7")
        one_line(e.value)
        record = json.loads((out / feature_files.RECORD).read_text())
        record["layers"][0]["shards"] = [{"file": "../../etc/passwd", "rows": 6}]
        (out / feature_files.RECORD).write_text(json.dumps(record))
        with pytest.raises(feature_files.FeaturesError) as e:
            feature_files.load_features(str(out), "fc7")
        one_line(e.value, "outside the folder")
    (out / feature_files.RECORD).write_text("[" * 100_000)  # nested past the recursion limit
    with pytest.raises(feature_files.FeaturesError) as e:
        feature_files.load_features(str(out), "fc7")
    one_line(e.value)
