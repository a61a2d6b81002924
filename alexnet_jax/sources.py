"""Image-classification sources behind one random-access interface (paper §2).

Every source is a sequence of examples `{'image': uint8 (S, S, 3), 'label': int}` with
attributes `name`, `split`, `num_classes` and `size` (= S), each image already the S x S
square of §2 (images.py). One class per kind of dataset (`datasets.create_source` picks one
from `config.dataset`): TFDS ArrayRecord (`TfdsSource`), a folder of class folders
(`FolderSource`), the prepared S x S copy (`PreparedSource`, files in prepared_files.py),
scikit-learn's digits (`DigitsSource`) and random images (`SyntheticSource`). A slice of a
split ('train[:80%]') is a `splits.SlicedSource` over the whole split's source.

An example that cannot be read or decoded makes `source[i]` raise `images.BadExample`; a
dataset that is not on disk makes the constructor raise `DatasetNotPreparedError`, whose
message gives the command that prepares it.

This module imports neither JAX nor TensorFlow: Grain worker processes unpickle these
classes, and should start fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from alexnet_jax.images import IMAGE_EXTENSIONS, BadExample, decode_square, resize_square
from alexnet_jax.prepared_files import (
    PREPARED_METADATA,
    parse_prepared_record,
    prepared_resize_mode,
    read_prepared_metadata,
)

# The digits split, 1,437 train / 360 test: the test images of scikit-learn's
# train_test_split(range(1797), test_size=DIGITS_TEST_SIZE, stratify=target,
# random_state=DIGITS_SPLIT_SEED) (scikit-learn 1.9.1), as a mask over the 1,797 images
# (np.packbits, in hex). Written down, the split cannot change with scikit-learn's version, and
# reading the digits imports no scikit-learn (2 s of every run's start); tests/test_sources.py
# recomputes it.
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_MASK = (
    "000004883524104000064100934205001a00080100240028062c12001000940a009019120420f8a0028110a000"
    "080a8820441524494240a00a0000004004d80000818020004805c400104008a0100005404800301000020ec409"
    "000224840083a8013c20a6980a0000000b08400804a0184802024041c1008004404684376a8102160044800040"
    "42a0a4180a5000840b8561c608108008004c80c02004068e00010882008100380803c008190000100e01008410"
    "a0210033282904c044c080680e0102830082008822a6402c24042108a860809081a00c02820242120138a41500"
)


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset is not on disk in a readable form; the message says how to prepare it."""


def check_index(index: int, length: int) -> int:
    """`index` as an int, or an IndexError when it is outside 0..length - 1."""
    index = int(index)
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a source of {length} examples")
    return index


class Source:
    """Random access to `{'image': uint8 (S, S, 3), 'label': int}` (the Grain data source).

    Attributes:
      name: the `config.dataset` string this source came from.
      split: the split it reads.
      num_classes: labels are 0..num_classes - 1.
      size: S, the side of every image.
      resize_mode: how an image became S x S (`images.resize_square`).
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
        return f"{self.split}#{check_index(index, len(self))}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"examples={len(self)}, classes={self.num_classes}, size={self.size})"
        )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as `sklearn.datasets.load_digits()` gives them: (1797, 8, 8) float
    pixels 0..16 and (1797,) int labels, read from the file the package ships, without
    importing it."""
    spec = importlib.util.find_spec("sklearn")
    folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else ""
    path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
    if not os.path.isfile(path):
        raise DatasetNotPreparedError(
            f"dataset 'digits' needs scikit-learn's bundled digits ({path or 'sklearn'} not "
            "found): pip install -r requirements.txt"
        )
    try:
        with warnings.catch_warnings():  # an empty file: the shape check below says so
            warnings.simplefilter("ignore", UserWarning)
            data = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(
            f"{path} cannot be read as scikit-learn's digits ({type(e).__name__}: {e}); "
            "reinstall scikit-learn: pip install --force-reinstall -r requirements.txt"
        ) from None
    if data.shape != (1797, 65):
        raise ValueError(
            f"{path} holds {data.shape}, not the 1,797 digits of 64 pixels and a label that "
            "DIGITS_TEST_MASK splits: install the scikit-learn of requirements.txt."
        )
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


class DigitsSource(Source):
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 grayscale images, 10 classes.

    They ship inside the scikit-learn package, so this source needs no download and no
    TensorFlow. Splits: 'train' (1,437) and 'test' (360), a stratified split with a fixed seed
    (`sklearn.model_selection.train_test_split`, seed 0, written down as `DIGITS_TEST_MASK`),
    the same on every machine and scikit-learn version; 'train' is in the original dataset's
    order, so a slice such as 'train[80%:]' (287 images) is a validation set of other writers
    than 'train[:80%]' (1,150). There is no 'validation' split: it would have to be the test set
    or a silent choice. Pixels 0..16 are scaled to 0..255, made RGB and resized to S.
    """

    def __init__(self, split: str, size: int):
        images, target = digits_arrays()
        test = np.unpackbits(np.frombuffer(bytes.fromhex(DIGITS_TEST_MASK), np.uint8))
        test = test[: len(target)].astype(bool)
        train, test = np.flatnonzero(~test), np.flatnonzero(test)
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
        self._images = np.rint(images[chosen] * (255.0 / 16.0)).astype(np.uint8)
        self._labels = target[chosen].astype(np.int64)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = check_index(index, len(self))
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
        index = check_index(index, len(self))
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
        path = self._paths[check_index(index, len(self))]
        return os.path.relpath(path, self._root).replace(os.sep, "/")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = check_index(index, len(self))
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
        index = check_index(index, len(self))
        where = f"{self.name}[{self.split}][{index}]"
        try:
            record = self._data[index]
        except Exception as e:  # A damaged ArrayRecord file or record.
            raise BadExample("unreadable", where, str(e)) from e
        image = decode_square(record[self._image_key], self.size, where, self.resize_mode)
        return {"image": image, "label": int(record[self._label_key])}


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
        index = check_index(index, len(self))
        where = f"{self.name}[{self.split}][{index}]"
        try:
            label, jpeg = parse_prepared_record(self._data[index])
        except Exception as e:
            raise BadExample("unreadable", where, str(e)) from e
        image = decode_square(jpeg, self.size, where, self.resize_mode)
        return {"image": image, "label": int(label)}
