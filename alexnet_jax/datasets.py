"""The datasets a config can name, and the source of each (`config.dataset`, paper §2).

`create_source(config, split)` picks the source from `config.dataset`:

  tfds:<name>      a TFDS dataset prepared as ArrayRecord, read with `tfds.data_source`
                   (no TensorFlow at training time), e.g. tfds:imagenet2012, tfds:cifar10.
  folder:<path>    one sub-folder per class of image files (JPEG, PNG, ...).
  prepared:<dir>   the S x S JPEG copy that `python -m alexnet_jax.prepare`
                   writes (ArrayRecord), so training decodes small images.
  digits           scikit-learn's 1,797 bundled 8x8 handwritten digits: real data, nothing
                   to download; the offline default for quick runs and tests.
  synthetic        random images, any size and class count, for benchmarks.

and a sliced split name ('train[:80%]', splits.py) reads that slice of the whole split.
"""

from __future__ import annotations

from typing import Any

from alexnet_jax.images import check_resize_mode
from alexnet_jax.sources import (
    DigitsSource,
    FolderSource,
    PreparedSource,
    Source,
    SyntheticSource,
    TfdsSource,
)
from alexnet_jax.splits import SlicedSource, parse_split


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
