"""Image-classification sources behind one random-access interface (paper §2).

Every source is a sequence of examples `{'image': uint8 (S, S, 3), 'label': int}` with
attributes `name`, `split`, `num_classes` and `size` (= S). Each image is already in the form
the paper trains on (§2): rescaled so that its shorter side is S (256 for ImageNet) and
centre-cropped to S x S. Images smaller than S are upscaled by the same rule, so an image
smaller than the network's crop never reaches the device.

`create_source(config, split)` picks the source from `config.dataset`:

  tfds:<name>      a TFDS dataset prepared as ArrayRecord, read with `tfds.data_source`
                   (no TensorFlow at training time), e.g. tfds:imagenet2012, tfds:cifar10.
  folder:<path>    one sub-folder per class of image files (JPEG, PNG, ...).
  prepared:<dir>   the S x S JPEG copy that `python -m alexnet_jax.prepare`
                   writes (ArrayRecord), so training decodes small images.
  digits           scikit-learn's 1,797 bundled 8x8 handwritten digits: real data, nothing
                   to download; the offline default for quick runs and tests.
  synthetic        random images, any size and class count, for benchmarks.

Every source takes a split name, optionally sliced as in TFDS: 'train[:80%]', 'train[80%:]',
'train[:40000]', 'train[-10%:]'. A slice is a range of the split's example indices (percent
boundaries round to the closest index, TFDS's default rule), so 'train[:80%]' and
'train[80%:]' partition 'train' exactly, for every source and on every machine. This is how a
validation split is held out of the training data (`SlicedSource`).

Bad input (§2 assumes clean RGB JPEGs; real folders are not). Grayscale, palette, CMYK,
16-bit and RGBA/LA images are converted to RGB (alpha composited over white: the colour under
a transparent pixel is undefined, often black). A file that cannot be read or decoded, or is
truncated, makes `source[i]` raise `BadExample` with the path and a reason from
`SKIP_REASONS`; the Grain pipeline in `input_pipeline.py` skips and counts those unless the
config asks for strict mode.

This module imports neither JAX nor TensorFlow: Grain worker processes unpickle these
classes, and should start fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

# Why an example was skipped; the order is the order of the counts in a batch.
SKIP_REASONS = ("unreadable", "undecodable", "truncated")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The formats of those extensions, the only ones an image's bytes are decoded as. Pillow
# otherwise guesses the format from the content, and its EPS decoder runs Ghostscript (an
# interpreter of the file's PostScript) on a .jpg that holds PostScript.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# Bilinear with Pillow's antialiasing (its filter support widens when shrinking), the resize
# torchvision's ImageNet recipes use. The paper does not name its filter.
RESAMPLE = Image.Resampling.BILINEAR

# File layout of `prepared:` datasets (written by prepare.prepare_dataset).
PREPARED_METADATA = "metadata.json"
# One record = the label as little-endian int64, then the JPEG bytes of the S x S image.
_RECORD_HEADER = struct.Struct("<q")

# The digits split (1,437 train / 360 test, stratified by class, fixed seed).
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


class BadExample(ValueError):
    """An example that cannot be turned into an image; carries why and where.

    Attributes:
      reason: one of SKIP_REASONS.
      where: the file path or `dataset[split][index]` of the example.
    """

    def __init__(self, reason: str, where: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        self.reason, self.where = reason, where
        super().__init__(f"{reason} image {where}" + (f": {detail}" if detail else ""))


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset is not on disk in a readable form; the message says how to prepare it."""


# ----------------------------------------------------------------------------------------------
# Decoding and the §2 resize.


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB where that is sound.

    Args:
      image: a loaded Pillow image.

    Returns:
      An RGB image of the same size.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        # 16-bit (and 32-bit int) grayscale: Pillow's own conversion clips at 255 instead of
        # scaling, which would turn most of the image white.
        x = np.asarray(image, dtype=np.float64)
        x = x / 257.0 if mode.startswith("I") else x
        gray = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    # L, 1, P, CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, LAB, HSV.
    return image.convert("RGB")


RESIZE_MODES = ("shorter_side", "warp")


def check_resize_mode(mode: str) -> None:
    """Raises a ValueError naming the modes for a `config.resize_mode` that is not one."""
    if mode not in RESIZE_MODES:
        raise ValueError(
            f"resize_mode={mode!r} is not one of {RESIZE_MODES}: 'shorter_side' (§2: shorter "
            "side to resize_size, centre square) or 'warp' (the whole image to resize_size x "
            "resize_size, as Caffe's data)."
        )


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


def resize_square(image: Image.Image, size: int, mode: str = "shorter_side") -> np.ndarray:
    """Makes the S x S image of §2 (or Caffe's warp).

    'shorter_side' (§2) rescales the shorter side to `size` and takes the central square: the
    central square of the original is resampled straight to size x size, which is the same
    mapping as resizing the whole image and cropping, without resampling the discarded sides.
    'warp' resamples the whole image to size x size whatever its aspect ratio, as Caffe's
    `convert_imageset --resize_height --resize_width` made the ILSVRC-2012 data that its
    bvlc_alexnet model card was measured on. Small images are upscaled by the same rule.

    Args:
      image: an RGB or L Pillow image.
      size: S, the output side.
      mode: 'shorter_side' or 'warp' (`config.resize_mode`).

    Returns:
      uint8 array (size, size, channels of `image`).
    """
    check_resize_mode(mode)
    width, height = image.size
    if (width, height) != (size, size):
        if mode == "warp":
            image = image.resize((size, size), RESAMPLE)
        else:
            side = min(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            box = (left, top, left + side, top + side)
            image = image.resize((size, size), RESAMPLE, box=box)
    return np.asarray(image, dtype=np.uint8)


def decode_square(data: bytes, size: int, where: str, mode: str = "shorter_side") -> np.ndarray:
    """Decodes an encoded image (JPEG, PNG, ...) into the §2 S x S RGB uint8 array.

    JPEGs are decoded at reduced scale by libjpeg's DCT scaling (`draft`) when the image is at
    least twice S on both sides, which makes large photos several times cheaper to decode;
    the result is still at least S on the shorter side before the resize.

    Args:
      data: the encoded file.
      size: S.
      where: path or key, for error messages.
      mode: `resize_square`'s mode.

    Returns:
      uint8 array (size, size, 3).

    Raises:
      BadExample: 'truncated' or 'undecodable'.
    """
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            image.draft(None, (size, size))
            image.load()
            return resize_square(to_rgb(image), size, mode)
    except OSError as e:  # Pillow reports truncated data as OSError.
        message = str(e)
        if "truncated" in message.lower() or "broken data stream" in message:
            raise BadExample("truncated", where, message) from e
        raise BadExample("undecodable", where, message) from e
    except (UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadExample("undecodable", where, str(e)) from e


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG-encodes an RGB uint8 image without chroma subsampling (4:4:4)."""
    out = io.BytesIO()
    Image.fromarray(image, "RGB").save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()


def _check_index(index: int, length: int) -> int:
    index = int(index)
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a source of {length} examples")
    return index


# ----------------------------------------------------------------------------------------------
# Sources.


class Source:
    """Random access to `{'image': uint8 (S, S, 3), 'label': int}` (the Grain data source).

    Attributes:
      name: the `config.dataset` string this source came from.
      split: the split it reads.
      num_classes: labels are 0..num_classes - 1.
      size: S, the side of every image.
      resize_mode: how an image became S x S (`resize_square`).
      class_names: the class names, or None where the dataset has none.
      stats_dir: where `input_pipeline.load_data_stats` caches statistics for this source,
        or None for the configured cache directory.
    """

    name: str
    split: str
    num_classes: int
    size: int
    resize_mode: str = "shorter_side"
    class_names: Sequence[str] | None = None
    stats_dir: str | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Returns example `index`.

        Raises:
          IndexError: outside 0..len - 1.
          BadExample: the example cannot be decoded (reason and path in the exception).
        """
        raise NotImplementedError

    def example_name(self, index: int) -> str:
        """What the dataset calls example `index`, for a list of extracted examples: here
        '<split>#<index>'; a folder's path relative to its root, a TFDS record's file name."""
        return f"{self.split}#{_check_index(index, len(self))}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"examples={len(self)}, classes={self.num_classes}, size={self.size})"
        )


class DigitsSource(Source):
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 grayscale images, 10 classes.

    They ship inside the scikit-learn package, so this source needs no download and no
    TensorFlow. Splits: 'train' (1,437) and 'test' (360), a stratified split with a fixed seed
    (`sklearn.model_selection.train_test_split`, seed 0), the same on every machine; 'train'
    is in the original dataset's order, so a slice such as 'train[80%:]' (287 images) is a
    validation set of other writers than 'train[:80%]' (1,150). There is no 'validation'
    split: it would have to be the test set or a silent choice. Pixels 0..16 are scaled to
    0..255, made RGB and resized to S.
    """

    def __init__(self, split: str, size: int):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        indices = np.arange(len(digits.target))
        train, test = train_test_split(
            indices,
            test_size=DIGITS_TEST_SIZE,
            stratify=digits.target,
            random_state=DIGITS_SPLIT_SEED,
        )
        splits = {"train": train, "test": test}
        if split not in splits:
            raise ValueError(
                f"digits has splits 'train' and 'test', got {split!r}; hold a validation split "
                "out of the training data with a slice, e.g. 'train[80%:]' (and train on "
                "'train[:80%]')."
            )
        chosen = np.sort(splits[split])
        self.name, self.split, self.size, self.num_classes = "digits", split, size, 10
        self.class_names = [str(d) for d in range(10)]
        self._images = np.rint(digits.images[chosen] * (255.0 / 16.0)).astype(np.uint8)
        self._labels = digits.target[chosen].astype(np.int64)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self))
        gray = resize_square(Image.fromarray(self._images[index], "L"), self.size)
        image = np.repeat(gray[:, :, None], 3, axis=2)
        return {"image": image, "label": int(self._labels[index])}


class SyntheticSource(Source):
    """Uniform random pixels and labels, a pure function of (split, index): for benchmarks."""

    def __init__(self, split: str, size: int, num_examples: int, num_classes: int):
        if num_examples <= 0 or num_classes <= 0:
            raise ValueError("synthetic_examples and synthetic_classes must be positive")
        self.name, self.split, self.size = "synthetic", split, size
        self.num_classes, self._length = num_classes, num_examples
        self._split_key = zlib.crc32(split.encode())

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self))
        rng = np.random.default_rng((self._split_key, index))
        image = rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
        return {"image": image, "label": int(rng.integers(self.num_classes))}


def _hash_fraction(key: str) -> float:
    """A uniform number in [0, 1) from a string, identical on every machine and run."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "little") / 2.0**64


def _list_images(directory: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(root, f))
    return found


def _class_dirs(directory: str) -> list[str]:
    return sorted(
        d
        for d in os.listdir(directory)
        if not d.startswith(".") and os.path.isdir(os.path.join(directory, d))
    )


class FolderSource(Source):
    """One sub-folder per class (`root/<class>/**/<image>`), classes in sorted name order.

    Splits. If `root/train` and `root/val` (or `root/validation`) exist, each is such a folder
    tree and the split names pick one ('validation' and 'val' both work; 'test' reads
    `root/test` if present); class indices come from `root/train`. Otherwise every image goes
    to 'validation' when a hash of its path relative to `root` falls below `val_fraction`,
    else to 'train': the assignment of a file never changes when other files are added.
    """

    def __init__(
        self, root: str, split: str, size: int, val_fraction: float,
        resize_mode: str = "shorter_side",
    ):  # fmt: skip
        root = os.path.expanduser(root)
        if not os.path.isdir(root):
            raise DatasetNotPreparedError(
                f"folder dataset {root!r} does not exist; check the path in "
                "--config.dataset=folder:<path> (one sub-folder of images per class)"
            )
        self.name, self.split, self.size = f"folder:{root}", split, size
        self.resize_mode = resize_mode
        self._root = root
        split_dirs = {
            "train": "train",
            "val": "val" if os.path.isdir(os.path.join(root, "val")) else "validation",
            "test": "test",
        }
        split_dirs["validation"] = split_dirs["val"]
        presplit = os.path.isdir(os.path.join(root, "train")) and os.path.isdir(
            os.path.join(root, split_dirs["val"])
        )
        class_root = os.path.join(root, "train") if presplit else root
        self.class_names = _class_dirs(class_root)
        if not self.class_names:
            raise DatasetNotPreparedError(
                f"{class_root!r} has no class sub-folders; a folder dataset holds one "
                "sub-folder of images per class"
            )
        if len(self.class_names) < 2:
            raise DatasetNotPreparedError(
                f"folder dataset {root!r} needs at least 2 classes, found 1: "
                f"{self.class_names[0]!r} (one sub-folder of images per class)"
            )
        self.num_classes = len(self.class_names)
        if split not in split_dirs or (split == "test" and not presplit):
            raise ValueError(
                f"folder dataset {root!r} has splits 'train' and 'validation'"
                + (" (and 'test' if that folder exists)" if presplit else "")
                + f", not {split!r}"
            )

        split_root = os.path.join(root, split_dirs[split]) if presplit else root
        if presplit and not os.path.isdir(split_root):
            raise ValueError(f"folder dataset {root!r} has no {split_dirs[split]!r} folder")
        if presplit:
            unknown = set(_class_dirs(split_root)) - set(self.class_names)
            if unknown:
                raise ValueError(f"{split_root!r} has classes not in train: {sorted(unknown)}")
        self._paths, labels = [], []
        for label, name in enumerate(self.class_names):
            for path in _list_images(os.path.join(split_root, name)):
                if not presplit:
                    rel = os.path.relpath(path, root).replace(os.sep, "/")
                    is_val = _hash_fraction(rel) < val_fraction
                    if is_val != (split in ("val", "validation")):
                        continue
                self._paths.append(path)
                labels.append(label)
        self._labels = np.asarray(labels, np.int64)
        if not self._paths:
            raise DatasetNotPreparedError(
                f"no images for split {split!r} in {split_root!r} "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
            )

    def __len__(self) -> int:
        return len(self._paths)

    def example_name(self, index: int) -> str:
        """The image's path relative to the dataset's root, '/'-separated."""
        path = self._paths[_check_index(index, len(self))]
        return os.path.relpath(path, self._root).replace(os.sep, "/")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self))
        path = self._paths[index]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BadExample("unreadable", path, str(e)) from e
        image = decode_square(data, self.size, path, self.resize_mode)
        return {"image": image, "label": int(self._labels[index])}


def _tfds_data_dir(data_dir: str) -> str:
    return (
        data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    )


def _tfds_build_command(name: str, data_dir: str, manual_dir: str | None) -> str:
    """The one command that builds a TFDS dataset as ArrayRecord.

    The Python API rather than the `tfds build` CLI: in tensorflow-datasets 4.9.10 the CLI
    does not start without apache-beam installed, the builders themselves need no Beam.
    """
    config = f"download_config=tfds.download.DownloadConfig(manual_dir={manual_dir!r})"
    return (
        'python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder({name!r}, data_dir={data_dir!r}, file_format='array_record')"
        f'.download_and_prepare({config if manual_dir else ""})"'
    )


def _tfds_prepare_help(name: str, data_dir: str, builder: Any) -> str:
    manual = os.path.join(data_dir, "downloads", "manual")
    manual_dir = None
    steps = []
    if name.split("/")[0].split(":")[0] == "imagenet2012":
        steps.append(
            "Register at https://image-net.org/download-images and download "
            "ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar (6.3 GB)."
        )
        steps.append(f"Put both tar files, unopened, in {manual}/")
        manual_dir = manual
    elif builder is not None and getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        steps.append(
            f"This dataset needs a manual download into {manual}/:\n      "
            + " ".join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())
        )
        manual_dir = manual
    steps.append("pip install tensorflow-cpu  (TensorFlow is needed to build, not to train)")
    steps.append(_tfds_build_command(name, data_dir, manual_dir))
    return "\n".join(f"  {i}. {s}" for i, s in enumerate(steps, 1))


class TfdsSource(Source):
    """A TFDS image-classification dataset in ArrayRecord files, via `tfds.data_source`.

    The image feature is read undecoded (`tfds.decode.SkipDecoding`) and decoded here, so
    TFDS images get the same bad-input handling, conversion and resize as files in folders,
    and TensorFlow is never imported. The image and label features are the dataset's
    `supervised_keys`, else its only Image and ClassLabel features.
    """

    def __init__(
        self, name: str, split: str, size: int, data_dir: str, resize_mode: str = "shorter_side"
    ):
        import tensorflow_datasets as tfds

        root = _tfds_data_dir(data_dir)
        self.name, self.split, self.size = f"tfds:{name}", split, size
        self.resize_mode = resize_mode
        try:
            builder = tfds.builder(name, data_dir=root)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DatasetNotPreparedError(
                f"TFDS has no dataset {name!r} and none is prepared in {root}. To prepare a "
                f"registered dataset:\n{_tfds_prepare_help(name, root, None)}"
            ) from e
        if not builder.is_prepared():
            raise DatasetNotPreparedError(
                f"TFDS dataset {name!r} is not prepared in {root}. Prepare it once with:\n"
                + _tfds_prepare_help(name, root, builder)
            )
        info = builder.info
        if "array_record" not in {f.value for f in info.available_file_formats()}:
            raise DatasetNotPreparedError(
                f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
                f"{info.file_format.value}; random access needs ArrayRecord. Either move that "
                f"directory away and build again:\n  {_tfds_build_command(name, root, None)}\n"
                "(add download_config=tfds.download.DownloadConfig(manual_dir=...) for "
                "manually downloaded data), or convert it in place (needs tensorflow-cpu and "
                f"apache-beam):\n  tfds convert_format --dataset_version_dir={builder.data_dir} "
                "--out_file_format=array_record"
            )
        if split not in info.splits:
            raise ValueError(f"{name} has splits {sorted(info.splits)}, not {split!r}")
        image_key, label_key = self._feature_keys(info, tfds)
        self.num_classes = info.features[label_key].num_classes
        self.class_names = list(info.features[label_key].names)
        self._image_key, self._label_key = image_key, label_key
        # ImageNet's records carry the original file name (n01440764_10026.JPEG).
        self._file_key = "file_name" if "file_name" in info.features else None
        self._data = tfds.data_source(
            name,
            split=split,
            data_dir=root,
            download=False,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )

    @staticmethod
    def _feature_keys(info: Any, tfds: Any) -> tuple[str, str]:
        if info.supervised_keys and len(info.supervised_keys) == 2:
            image_key, label_key = info.supervised_keys
            if isinstance(image_key, str) and isinstance(label_key, str):
                return image_key, label_key
        features = info.features
        images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
        labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
        if len(images) != 1 or len(labels) != 1:
            raise ValueError(
                f"{info.name} is not a plain image-classification dataset: image features "
                f"{images}, class-label features {labels}"
            )
        return images[0], labels[0]

    def __len__(self) -> int:
        return len(self._data)

    def example_name(self, index: int) -> str:
        """'<split>#<index>', followed by ' (<file name>)' when the records carry one."""
        name = super().example_name(index)
        if self._file_key is None:
            return name
        try:
            file_name = self._data[int(index)][self._file_key]
        except Exception:  # A damaged record: its reading reports it; the index names it.
            return name
        if isinstance(file_name, bytes):
            file_name = file_name.decode("utf-8", "replace")
        return f"{name} ({file_name})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self))
        where = f"{self.name}[{self.split}][{index}]"
        try:
            record = self._data[index]
        except Exception as e:  # A damaged ArrayRecord file or record.
            raise BadExample("unreadable", where, str(e)) from e
        image = decode_square(record[self._image_key], self.size, where, self.resize_mode)
        return {"image": image, "label": int(record[self._label_key])}


def split_file_stem(split: str) -> str:
    """A file-name-safe form of a split name ('train[:90%]' -> 'train__90__')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in split)


class PreparedSource(Source):
    """The S x S JPEG copy written by `prepare.prepare_dataset`: ArrayRecord shards + metadata.

    Images were resized and cropped once (§2), so reading decodes a small JPEG; if the stored
    side differs from the configured S they are resized again by the same rule.
    """

    def __init__(self, directory: str, split: str, size: int, resize_mode: str = "shorter_side"):
        from array_record.python import array_record_data_source

        directory = os.path.expanduser(directory)
        if not os.path.exists(os.path.join(directory, PREPARED_METADATA)):
            raise DatasetNotPreparedError(
                f"{directory!r} is not a prepared dataset (no {PREPARED_METADATA}); write one "
                "with: python -m alexnet_jax.prepare --config=<config> "
                f"--out={directory}"
            )
        meta = read_prepared_metadata(directory)
        if split not in meta["splits"]:
            raise ValueError(f"{directory} has splits {sorted(meta['splits'])}, not {split!r}")
        made = prepared_resize_mode(meta)
        if made != resize_mode:
            raise ValueError(
                f"{directory} was prepared with resize_mode={made!r}, the config has "
                f"resize_mode={resize_mode!r}: its stored squares cannot be made the other way; "
                f"set --config.resize_mode={made} or prepare the data again with "
                f"resize_mode={resize_mode!r} into another --out."
            )
        self.name, self.split, self.size = f"prepared:{directory}", split, size
        self.resize_mode = resize_mode
        self.num_classes = int(meta["num_classes"])
        self.class_names = meta.get("class_names")
        self.stats_dir = directory  # Statistics are cached with the data.
        files = [os.path.join(directory, f) for f in meta["splits"][split]["files"]]
        self._data = array_record_data_source.ArrayRecordDataSource(files)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self))
        where = f"{self.name}[{self.split}][{index}]"
        try:
            record = self._data[index]
            (label,) = _RECORD_HEADER.unpack_from(record)
        except Exception as e:
            raise BadExample("unreadable", where, str(e)) from e
        image = decode_square(record[_RECORD_HEADER.size :], self.size, where, self.resize_mode)
        return {"image": image, "label": int(label)}


def prepared_record(image_jpeg: bytes, label: int) -> bytes:
    """One record of a `prepared:` dataset."""
    return _RECORD_HEADER.pack(label) + image_jpeg


# 'name[start:stop]' with integer or percent bounds, either may be empty or negative.
_SLICE = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\]$")


def parse_split(split: str) -> tuple[str, str | None, str | None]:
    """('train', '80%', None) for 'train[80%:]'; (split, None, None) for a plain name.

    Raises:
      ValueError: a split with brackets that is not one 'name[start:stop]' slice.
    """
    if "[" not in split and "]" not in split:
        return split, None, None
    m = _SLICE.match(split.replace(" ", ""))
    if not m:
        raise ValueError(
            f"split {split!r} is not a split name or one slice of it; write e.g. 'train', "
            "'train[:80%]', 'train[80%:]' or 'train[:40000]'."
        )
    return m["base"], m["start"], m["stop"]


def _bound(text: str | None, n: int, default: int) -> int:
    if text is None:
        return default
    if text.endswith("%"):
        # TFDS's default rounding of percent slices ('closest').
        value = int(round(int(text[:-1]) * n / 100.0))
    else:
        value = int(text)
    if value < 0:
        value += n
    return min(max(value, 0), n)


def slice_range(split: str, n: int) -> range:
    """The indices of a split of `n` examples that `split` (e.g. 'train[80%:]') selects."""
    _, start, stop = parse_split(split)
    return range(_bound(start, n, 0), _bound(stop, n, n))


class SlicedSource(Source):
    """A contiguous range of another source's examples: 'train[:80%]', 'train[80%:]', ...

    Attributes:
      base: the source of the whole split.
      indices: the range of `base` indices this slice reads.
    """

    def __init__(self, base: Source, split: str):
        self.base = base
        self.indices = slice_range(split, len(base))
        if not len(self.indices):
            raise ValueError(
                f"split {split!r} of {base.name} is empty ({len(base)} examples in "
                f"{base.split!r}); widen the slice."
            )
        self.name, self.split, self.size = base.name, split, base.size
        self.resize_mode = base.resize_mode
        self.num_classes, self.class_names = base.num_classes, base.class_names
        self.stats_dir = base.stats_dir

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.base[self.indices[_check_index(index, len(self))]]

    def example_name(self, index: int) -> str:
        """The base split's name of the example ('train#1150' for 'train[80%:]'[0])."""
        return self.base.example_name(self.indices[_check_index(index, len(self))])


def shared_examples(a: Source, b: Source) -> int:
    """How many examples two sources of one dataset have in common (0 for different splits).

    Sources of different base splits ('train' vs 'test') share nothing; slices of one split
    share the overlap of their index ranges.
    """
    if a.name != b.name:
        return 0
    base_a, base_b = parse_split(a.split)[0], parse_split(b.split)[0]
    if base_a != base_b:
        return 0
    ra = a.indices if isinstance(a, SlicedSource) else range(len(a))
    rb = b.indices if isinstance(b, SlicedSource) else range(len(b))
    return max(0, min(ra.stop, rb.stop) - max(ra.start, rb.start))


def create_source(config: Any, split: str) -> Source:
    """The source that `config.dataset` names, for one split (a name or a slice of one).

    Args:
      config: the experiment config (dataset, data_dir, resize_size, folder_val_fraction,
        synthetic_examples, synthetic_classes).
      split: e.g. config.train_split or config.eval_split; 'name[start:stop]' reads a
        `SlicedSource` of split 'name'.

    Returns:
      A `Source`.

    Raises:
      DatasetNotPreparedError: the data is not on disk; the message gives the command that
        prepares it.
      ValueError: an unknown dataset or split, or an empty slice.
    """
    base, start, stop = parse_split(split)
    source = _create_base_source(config, base)
    if start is None and stop is None and base == split:
        return source
    return SlicedSource(source, split)


DATASET_KINDS = ("tfds", "folder", "prepared")  # 'kind:argument' datasets
PLAIN_DATASETS = ("digits", "synthetic")  # datasets named without an argument


def parse_dataset(dataset: str) -> tuple[str, str]:
    """Splits `config.dataset` into (kind, argument): 'tfds:imagenet2012' -> ('tfds',
    'imagenet2012'), 'digits' -> ('digits', '').

    Raises:
      ValueError: not one of the forms below, with the forms in the message.
    """
    kind, _, arg = dataset.partition(":")
    if (kind in PLAIN_DATASETS and not arg and ":" not in dataset) or (
        kind in DATASET_KINDS and arg
    ):
        return kind, arg
    raise ValueError(
        f"dataset={dataset!r} is not a dataset name: use 'tfds:<name>' (e.g. "
        "tfds:imagenet2012), 'folder:<path>', 'prepared:<dir>', 'digits' or 'synthetic'."
    )


def _create_base_source(config: Any, split: str) -> Source:
    """The source of one whole (unsliced) split; see `create_source`."""
    size, mode = int(config.resize_size), config.resize_mode
    check_resize_mode(mode)
    kind, arg = parse_dataset(config.dataset)
    if kind == "digits":  # 8x8 squares: both modes make the same image
        return DigitsSource(split, size)
    if kind == "synthetic":  # generated at S x S
        return SyntheticSource(split, size, config.synthetic_examples, config.synthetic_classes)
    if kind == "folder":
        return FolderSource(arg, split, size, config.folder_val_fraction, mode)
    if kind == "prepared":
        return PreparedSource(arg, split, size, mode)
    return TfdsSource(arg, split, size, config.data_dir, mode)


_LOGGED: set[str] = set()


def log_bad_example(error: BadExample) -> None:
    """Logs a skipped example once per process, not once per epoch."""
    if error.where not in _LOGGED:
        _LOGGED.add(error.where)
        logging.warning("Skipping %s", error)
