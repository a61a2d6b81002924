"""Tests for alexnet_jax.sources and alexnet_jax.input_pipeline (paper §2; host side of §4.1).

Worker-process tests use the real Grain multiprocessing path (spawned processes), so they are
kept few: one checks that workers change nothing and that a restored iterator continues
exactly, with workers and without.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import augment, images, input_pipeline, prepare, sources
from alexnet_jax.images import SKIP_REASONS
from configs import alexnet as alexnet_config

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)


def _config(**overrides):
    config = alexnet_config.get_config()
    config.update(dict(resize_size=16, batch_size=8, num_workers=0, prefetch_batches=2))
    config.update(overrides)
    return config


class IndexedSource(sources.Source):
    """Example i: label i and an image filled with i % 256, so batches can be traced."""

    def __init__(self, n: int, size: int = 4, bad: tuple[int, ...] = ()):
        self.name, self.split, self.size, self.num_classes = "indexed", "train", size, n
        self._n, self._bad = n, set(bad)

    def __len__(self):
        return self._n

    def __getitem__(self, index):
        index = int(index)
        if index in self._bad:
            raise images.BadExample("undecodable", f"indexed[{index}]")
        return {"image": np.full((self.size, self.size, 3), index % 256, np.uint8), "label": index}


def _take(it, n):
    return [next(it) for _ in range(n)]


def _labels(batches):
    return np.stack([b["label"] for b in batches])


# ----------------------------------------------------------------------------------------------
# Sources.


def test_digits_splits_shapes_and_labels():
    train = input_pipeline.create_source(_config(dataset="digits"), "train")
    test = input_pipeline.create_source(_config(dataset="digits"), "test")
    assert (len(train), len(test), train.num_classes, train.name) == (1437, 360, 10, "digits")
    example = train[0]
    assert example["image"].shape == (16, 16, 3) and example["image"].dtype == np.uint8
    assert isinstance(example["label"], int)
    # Grayscale made RGB: the three channels are equal; 0..16 was scaled to 0..255.
    np.testing.assert_array_equal(example["image"][..., 0], example["image"][..., 2])
    assert example["image"].max() > 200
    # Stratified: each class holds about 360/1797 of its examples in the test split.
    test_counts = np.bincount([test[i]["label"] for i in range(len(test))], minlength=10)
    train_counts = np.bincount([train[i]["label"] for i in range(len(train))], minlength=10)
    expected = (test_counts + train_counts) * 360 / 1797
    assert np.all(np.abs(test_counts - expected) <= 1), test_counts
    # Disjoint and fixed: the test images are not among the train images.
    train_images = {train[i]["image"].tobytes() for i in range(len(train))}
    assert sum(test[i]["image"].tobytes() in train_images for i in range(len(test))) < 5
    big = input_pipeline.create_source(_config(dataset="digits", resize_size=256), "test")
    assert big[3]["image"].shape == (256, 256, 3) and big[3]["label"] == test[3]["label"]


def test_synthetic_any_size_and_deterministic():
    config = _config(dataset="synthetic", resize_size=20, synthetic_examples=7)
    config.synthetic_classes = 3
    a, b = (
        input_pipeline.create_source(config, "train"),
        input_pipeline.create_source(config, "train"),
    )
    other = input_pipeline.create_source(config, "validation")
    assert len(a) == 7 and a.num_classes == 3
    assert a[5]["image"].shape == (20, 20, 3) and a[5]["image"].dtype == np.uint8
    np.testing.assert_array_equal(a[5]["image"], b[5]["image"])
    assert not np.array_equal(a[5]["image"], other[5]["image"])
    assert {a[i]["label"] for i in range(7)} <= {0, 1, 2}
    with pytest.raises(IndexError):
        a[7]


def test_resize_square_is_shorter_side_then_centre_crop():
    # A 40x20 image, black except the columns 6..33: the central 20x20 square (columns
    # 10..29) and the few pixels the filter reads around it are white, so the S x S result must
    # be all white: the sides were cut off, not squeezed in (§2).
    x = np.zeros((20, 40, 3), np.uint8)
    x[:, 6:34] = 255
    out = images.resize_square(Image.fromarray(x), 8)
    assert out.shape == (8, 8, 3)
    assert out.min() == 255
    # Small images are upscaled.
    assert images.resize_square(Image.fromarray(x[:3, :5]), 8).shape == (8, 8, 3)


def _jpeg_bytes(image: np.ndarray, **kwargs) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Two classes; class 'a' holds every kind of awkward file, class 'b' plain ones."""
    root = tmp_path_factory.mktemp("messy")
    a, b = root / "a", root / "b"
    a.mkdir(), b.mkdir()
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    (a / "good.jpg").write_bytes(_jpeg_bytes(noisy))
    Image.fromarray(np.full((30, 20), 77, np.uint8), "L").save(a / "gray.png")
    Image.new("CMYK", (20, 30), (0, 255, 255, 0)).save(a / "cmyk.jpg", quality=95)  # Red.
    Image.new("RGBA", (20, 30), (0, 0, 0, 0)).save(a / "transparent.png")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(a / "gray16.png")
    Image.fromarray(noisy[:3, :5]).save(a / "tiny.png")  # Smaller than any crop.
    (a / "corrupt.jpg").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    (a / "truncated.jpg").write_bytes(_jpeg_bytes(noisy)[:600])
    os.symlink(root / "missing.jpg", a / "dangling.jpg")
    (a / "notes.txt").write_text("not an image")
    for i in range(3):
        Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(b / f"{i}.png")
    return str(root)


BAD = {"corrupt.jpg": "undecodable", "truncated.jpg": "truncated", "dangling.jpg": "unreadable"}


def test_folder_converts_and_flags_bad_files(messy_folder):
    source = input_pipeline.create_source(
        _config(dataset=f"folder:{messy_folder}", folder_val_fraction=0.0), "train"
    )
    assert source.num_classes == 2 and source.class_names == ["a", "b"]
    assert len(source) == 9 + 3  # notes.txt is not an image file.
    by_name = {}
    for i in range(len(source)):
        name = os.path.basename(source._paths[i])
        try:
            by_name[name] = source[i]
        except images.BadExample as e:
            assert e.reason == BAD[name] and name in e.where
            by_name[name] = e.reason
    assert {n for n, v in by_name.items() if isinstance(v, str)} == set(BAD)
    for example in by_name.values():
        if not isinstance(example, str):
            assert example["image"].shape == (16, 16, 3) and example["image"].dtype == np.uint8
    assert by_name["gray.png"]["image"].min() == by_name["gray.png"]["image"].max() == 77
    assert by_name["gray16.png"]["image"].min() == 255  # 16-bit scaled, not clipped.
    np.testing.assert_allclose(by_name["cmyk.jpg"]["image"][8, 8], (255, 0, 0), atol=3)
    assert by_name["transparent.png"]["image"].min() == 255  # Composited over white.
    assert by_name["0.png"]["label"] == 1 and by_name["good.jpg"]["label"] == 0


def test_bad_files_are_skipped_counted_and_strict_raises(messy_folder):
    config = _config(dataset=f"folder:{messy_folder}", folder_val_fraction=0.0, batch_size=12)
    source = input_pipeline.create_source(config, "train")
    with input_pipeline.create_eval_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        (batch,) = list(it)
        assert it.skipped == {"unreadable": 1, "undecodable": 1, "truncated": 1}
    assert batch["mask"].sum() == 9 and not batch["image"][~batch["mask"]].any()
    # Training: one batch is exactly one epoch; bad slots are filled with good examples.
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        batch = next(it)
        assert it.skipped == {"unreadable": 1, "undecodable": 1, "truncated": 1}
        assert batch["mask"].all() and batch["image"].shape == (12, 16, 16, 3)
        state = json.loads(json.dumps(it.get_state()))
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        it.set_state(state)
        assert it.skipped["truncated"] == 1  # The counts are part of the state.
    config.strict_data = True
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        with pytest.raises(images.BadExample, match=r"\.jpg"):
            next(it)


def test_batch_of_only_bad_examples_is_masked():
    config = _config(batch_size=2)
    source = IndexedSource(4, bad=(0, 1, 2, 3))
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        batch = next(it)
    assert not batch["mask"].any() and it.skipped["undecodable"] == 2


def test_folder_split_by_hash_is_stable(tmp_path):
    for c in ("x", "y"):
        (tmp_path / c).mkdir()
        for i in range(60):
            Image.new("RGB", (4, 4)).save(tmp_path / c / f"{i}.png")
    config = _config(dataset=f"folder:{tmp_path}", folder_val_fraction=0.25)
    train = input_pipeline.create_source(config, "train")
    val = input_pipeline.create_source(config, "validation")
    assert len(train) + len(val) == 120 and set(train._paths).isdisjoint(val._paths)
    assert 15 <= len(val) <= 45
    for i in range(60, 90):  # New files never move old ones between splits.
        Image.new("RGB", (4, 4)).save(tmp_path / "x" / f"{i}.png")
    assert set(val._paths) <= set(input_pipeline.create_source(config, "validation")._paths)


def test_folder_with_train_and_val_subfolders(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (5, 5)).save(tmp_path / split / c / f"{i}.jpg")
    config = _config(dataset=f"folder:{tmp_path}")
    assert len(input_pipeline.create_source(config, "train")) == 6
    val = input_pipeline.create_source(config, "validation")
    assert len(val) == 4 and val.class_names == ["cat", "dog"]
    with pytest.raises(ValueError, match="no 'test' folder"):
        input_pipeline.create_source(config, "test")


def test_unknown_or_missing_datasets_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="tfds:<name>"):
        input_pipeline.create_source(_config(dataset="imagenet"), "train")
    with pytest.raises(sources.DatasetNotPreparedError, match="does not exist"):
        input_pipeline.create_source(_config(dataset=f"folder:{tmp_path}/nope"), "train")
    config = _config(dataset="tfds:imagenet2012", data_dir=str(tmp_path))
    with pytest.raises(sources.DatasetNotPreparedError) as e:
        input_pipeline.create_source(config, "train")
    message = str(e.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert f"{tmp_path}/downloads/manual" in message
    build = (
        f"tfds.builder('imagenet2012', data_dir='{tmp_path}', file_format='array_record')"
        f".download_and_prepare(download_config=tfds.download.DownloadConfig("
        f"manual_dir='{tmp_path}/downloads/manual'))"
    )
    assert build in message


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """The tiny TFDS dataset, built by a real TFDS builder in a subprocess (needs TensorFlow)."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip(
            "building a TFDS dataset needs TensorFlow: pip install -r requirements-test.txt"
        )
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    code = f"import tfds_tiny_builder; tfds_tiny_builder.build({data_dir!r})"
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=TESTS_DIR,
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    return data_dir


@pytest.mark.slow
def test_tfds_source_reads_array_record_without_tensorflow(tfds_dir):
    tf_before = "tensorflow" in sys.modules
    config = _config(dataset="tfds:alexnet_jax_test_images", data_dir=tfds_dir, resize_size=12)
    train = input_pipeline.create_source(config, "train")
    test = input_pipeline.create_source(config, "test")
    assert (len(train), len(test), train.num_classes) == (12, 5, 3)
    got = set()
    for i in range(len(train)):
        example = train[i]
        image = example["image"]
        assert image.shape == (12, 12, 3) and image.dtype == np.uint8
        red = int(image[0, 0, 0])
        assert (image == image[0, 0]).all() and tuple(image[0, 0, 1:]) == (200, 50)
        assert example["label"] == (red // 10) % 3
        got.add(red // 10)
    assert got == set(range(12))  # Every example came back once (TFDS shuffles the order).
    with input_pipeline.create_train_iterator(
        config, train, process_index=0, process_count=1
    ) as it:
        batch = next(it)
    assert batch["image"].shape == (8, 12, 12, 3) and batch["label"].dtype == np.int32
    if not tf_before:
        assert "tensorflow" not in sys.modules


# ----------------------------------------------------------------------------------------------
# Grain iterators.


def test_order_is_a_new_permutation_every_epoch_and_follows_the_seed():
    source = IndexedSource(24)
    config = _config(batch_size=8, seed=3)
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        order = _labels(_take(it, 6)).reshape(2, 24)
    assert sorted(order[0]) == sorted(order[1]) == list(range(24))
    assert not np.array_equal(order[0], order[1])
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        np.testing.assert_array_equal(_labels(_take(it, 6)).reshape(2, 24), order)
    config.seed = 4
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        assert not np.array_equal(_labels(_take(it, 3)).reshape(24), order[0])


def test_processes_share_each_global_batch():
    """P processes with b = B / P each see, at every step, the examples of the one-process B."""
    source = IndexedSource(40)
    config = _config(batch_size=8)
    with input_pipeline.create_train_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        whole = _labels(_take(it, 7))
    parts = []
    for p in range(4):
        with input_pipeline.create_train_iterator(
            config, source, process_index=p, process_count=4
        ) as it:
            batches = _take(it, 7)
            assert batches[0]["image"].shape == (2, 4, 4, 3)
            parts.append(_labels(batches))
    for step in range(7):
        assert sorted(np.concatenate([part[step] for part in parts])) == sorted(whole[step])
    with pytest.raises(ValueError, match="divide evenly"):
        input_pipeline.create_train_iterator(config, source, process_index=0, process_count=3)


def test_eval_pass_is_ordered_padded_and_split_over_processes():
    source = IndexedSource(21, bad=(5,))
    config = _config(batch_size=8)
    with input_pipeline.create_eval_iterator(
        config, source, process_index=0, process_count=1
    ) as it:
        batches = list(it)
    assert len(batches) == 3 == input_pipeline.num_eval_batches(config, source, 1)
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[mask], [i for i in range(21) if i != 5])
    assert mask.sum() == 20 and it.skipped["undecodable"] == 1
    seen = []
    for p in range(2):
        with input_pipeline.create_eval_iterator(
            config, source, process_index=p, process_count=2
        ) as it:
            batches = list(it)
        assert len(batches) == 3 and batches[0]["image"].shape == (4, 4, 4, 3)
        seen += [int(x) for b in batches for x in b["label"][b["mask"]]]
    assert sorted(seen) == [i for i in range(21) if i != 5]


@pytest.mark.slow
def test_workers_change_nothing_and_restore_continues_exactly():
    """num_workers=2 (spawned processes) gives the batches of num_workers=0, and an iterator
    restored from a JSON round trip of get_state() continues with exactly the next batch, also
    when the restored run uses a different number of workers."""
    config = _config(dataset="digits", batch_size=16, seed=1)
    source = input_pipeline.create_source(config, "train")

    def run(workers, state=None):
        """8 batches, or 4 after restoring `state`; and the state after the 4th batch."""
        config.num_workers = workers
        with input_pipeline.create_train_iterator(
            config, source, process_index=0, process_count=1
        ) as it:
            if state is not None:
                it.set_state(state)
                return _take(it, 4), None
            batches = _take(it, 4)
            saved = json.loads(json.dumps(it.get_state()))
            return batches + _take(it, 4), saved  # Reads on past the saved point, as runs do.

    def assert_same(got, want):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g["image"], w["image"])
            np.testing.assert_array_equal(g["label"], w["label"])
            assert g["image"].dtype == np.uint8 and g["label"].dtype == np.int32

    reference, state_0 = run(0)
    with_workers, state_2 = run(2)
    assert_same(with_workers, reference)
    assert state_0 == state_2 == {"next_batch": 4, "skipped": dict.fromkeys(SKIP_REASONS, 0)}
    assert_same(run(0, state_0)[0], reference[4:])
    assert_same(run(2, state_0)[0], reference[4:])  # Saved without workers, resumed with.


@pytest.mark.slow
def test_digits_need_no_tensorflow():
    """A fresh interpreter where TensorFlow cannot be found iterates digits batches."""
    code = """
import importlib.machinery, sys

class NoTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            return None
        return super().find_spec(name, path, target)

sys.meta_path[:] = [NoTensorFlow if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
try:
    import tensorflow
    raise SystemExit("tensorflow was importable")
except ModuleNotFoundError:
    pass
from configs.alexnet import get_config
from alexnet_jax import input_pipeline
config = get_config()
config.dataset, config.resize_size, config.batch_size, config.num_workers = "digits", 16, 4, 0
source = input_pipeline.create_source(config, "train")
with input_pipeline.create_train_iterator(config, source, process_index=0, process_count=1) as it:
    shapes = [next(it)["image"].shape for _ in range(3)]
assert shapes == [(4, 16, 16, 3)] * 3, shapes
assert "tensorflow" not in sys.modules
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_training_process_is_killed():
    """SIGKILL (preemption, OOM killer) leaves the Grain workers no chance to be stopped; they
    notice that their parent is gone and exit instead of waiting forever."""
    code = """
import time
from configs.alexnet import get_config
from alexnet_jax import input_pipeline
if __name__ == "__main__":
    config = get_config()
    config.dataset, config.resize_size, config.batch_size, config.num_workers = "digits", 8, 4, 2
    source = input_pipeline.create_source(config, "train")
    it = input_pipeline.create_train_iterator(config, source, process_index=0, process_count=1)
    next(it)
    print("ready", flush=True)
    time.sleep(120)
"""
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_DIR, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        workers = [p for p in _children(child.pid) if "spawn_main" in _cmdline(p)]
        assert len(workers) == 2
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 20  # they look once a second; a loaded CI machine is slow
    while time.monotonic() < deadline and [p for p in workers if _alive(p)]:
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)]


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited orphan that its new parent, the
    container's pid 1, may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------
# Statistics and the prepared copy.


def test_data_stats_computed_once_and_cached(tmp_path, monkeypatch):
    config = _config(dataset="digits", cache_dir=str(tmp_path), batch_size=100)
    source = input_pipeline.create_source(config, "test")
    stats = input_pipeline.load_data_stats(config, source)
    path = input_pipeline.stats_cache_path(config, source)
    assert os.path.exists(path) and "digits-test-16px-360" in path
    expected = augment.compute_data_stats(source[i]["image"] for i in range(len(source)))
    np.testing.assert_allclose(stats.mean_image, expected.mean_image, rtol=1e-6)
    np.testing.assert_allclose(stats.pca_eigvals, expected.pca_eigvals, rtol=1e-5)

    def no_second_pass(*args, **kwargs):
        raise AssertionError("statistics were recomputed")

    monkeypatch.setattr(input_pipeline, "create_eval_iterator", no_second_pass)
    cached = input_pipeline.load_data_stats(config, source)
    np.testing.assert_array_equal(cached.mean_image, stats.mean_image)


def test_prepare_writes_a_readable_copy_with_its_stats(tmp_path):
    config = _config(dataset="digits", cache_dir=str(tmp_path / "cache"), batch_size=64)
    out = str(tmp_path / "prepared")
    meta = prepare.prepare_dataset(config, out, ["train", "test"], examples_per_shard=1000)
    assert (
        meta["splits"]["train"]["num_examples"] == 1437
        and len(meta["splits"]["train"]["files"]) == 2
    )
    assert meta["num_classes"] == 10 and meta["size"] == 16
    original = input_pipeline.create_source(config, "test")
    prepared_config = _config(dataset=f"prepared:{out}")
    copy = input_pipeline.create_source(prepared_config, "test")
    assert len(copy) == 360 and copy.num_classes == 10
    for i in (0, 100, 359):
        assert copy[i]["label"] == original[i]["label"]
        diff = np.abs(copy[i]["image"].astype(int) - original[i]["image"].astype(int))
        assert diff.mean() < 2.0  # JPEG quality 95, 4:4:4.
    train_copy = input_pipeline.create_source(prepared_config, "train")
    stats_path = input_pipeline.stats_cache_path(prepared_config, train_copy)
    assert os.path.dirname(stats_path) == out and os.path.exists(stats_path)  # With the data.


# ----------------------------------------------------------------------------------------------
# resize_mode='warp' (Caffe's convert_imageset) against §2's shorter side + centre square.


def _thirds_image(tmp_path) -> str:
    """Two classes of one 90x30 image: red, green, blue thirds from left to right (PNG)."""
    x = np.zeros((30, 90, 3), np.uint8)
    x[:, :30, 0], x[:, 30:60, 1], x[:, 60:, 2] = 255, 255, 255
    for name in ("a", "b"):  # a folder dataset has at least 2 classes; example 0 is a's
        (tmp_path / "thirds" / name).mkdir(parents=True)
        Image.fromarray(x).save(tmp_path / "thirds" / name / "wide.png")
    return str(tmp_path / "thirds")


def test_warp_keeps_the_whole_image_and_shorter_side_its_centre(tmp_path):
    root = _thirds_image(tmp_path)
    got = {}
    for mode in ("shorter_side", "warp"):
        config = _config(dataset=f"folder:{root}", resize_size=12, resize_mode=mode)
        config.folder_val_fraction = 0.0
        source = input_pipeline.create_source(config, "train")
        assert source.resize_mode == mode
        got[mode] = source[0]["image"].astype(int)
    # §2: the central 30x30 square is the green third (its edge columns blend with the
    # neighbours inside the filter's support, as resizing the whole image would).
    centre = got["shorter_side"][:, 1:-1]
    assert (centre == (0, 255, 0)).all()
    # Warped: each third is 4 of the 12 columns; the outer columns are pure red and pure blue.
    warp = got["warp"]
    assert (warp[:, :3] == (255, 0, 0)).all() and (warp[:, -3:] == (0, 0, 255)).all()
    assert (warp[:, 5:7] == (0, 255, 0)).all()


def test_resize_mode_is_validated_recorded_when_prepared_and_keys_the_stats(tmp_path):
    root = _thirds_image(tmp_path)
    with pytest.raises(ValueError, match="resize_mode='stretch'.*'shorter_side', 'warp'"):
        input_pipeline.create_source(_config(dataset="digits", resize_mode="stretch"), "train")
    config = _config(dataset=f"folder:{root}", resize_mode="warp", cache_dir=str(tmp_path / "c"))
    config.folder_val_fraction = 0.0
    out = str(tmp_path / "prepared")
    meta = prepare.prepare_dataset(config, out, ["train"])
    assert meta["resize_mode"] == "warp"
    warped = input_pipeline.create_source(config, "train")[0]["image"].astype(int)
    prepared = _config(dataset=f"prepared:{out}", resize_mode="warp")
    copy = input_pipeline.create_source(prepared, "train")
    assert np.abs(copy[0]["image"].astype(int) - warped).mean() < 3.0  # JPEG of the warped image
    with pytest.raises(ValueError, match="prepared with resize_mode='warp'.*resize_mode=warp"):
        input_pipeline.create_source(_config(dataset=f"prepared:{out}"), "train")
    plain = _config(dataset=f"folder:{root}", folder_val_fraction=0.0)
    with pytest.raises(ValueError, match="would mix the two"):
        prepare.prepare_dataset(plain, out, ["validation"])
    # The warped images' mean is another mean: its own cache file.
    warp_path = input_pipeline.stats_cache_path(
        config, input_pipeline.create_source(config, "train")
    )
    plain_path = input_pipeline.stats_cache_path(
        config, input_pipeline.create_source(plain, "train")
    )
    assert warp_path == plain_path.replace("px-", "px-warp-") and warp_path != plain_path


@pytest.mark.slow
def test_the_prepare_command_writes_a_copy_and_the_old_flag_names_it(tmp_path):
    """`python -m alexnet_jax.prepare` as docs/data.md gives it, on digits (its test split), and
    the command it replaced stopping with one line that names the new one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": root}
    out = tmp_path / "digits256"
    done = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.prepare", "--config=configs/default.py",
         f"--out={out}", "--splits=test"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"--config.dataset=prepared:{out}" in done.stdout
    copy = sources.PreparedSource(str(out), "test", 36)
    assert len(copy) == 360 and copy[0]["image"].shape == (36, 36, 3)
    old = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.input_pipeline", "--config=configs/default.py",
         "--prepare", f"--out={tmp_path / 'old'}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert old.returncode != 0 and not (tmp_path / "old").exists()
    assert old.stderr.strip().splitlines() == [
        "error: --prepare moved: python -m alexnet_jax.prepare --config=... --out=DIR"
    ]
