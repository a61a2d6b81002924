"""The one-time S x S copy of a dataset (paper §2), so that training decodes small JPEGs.

  python -m alexnet_jax.prepare --config=configs/alexnet.py --out=$HOME/imagenet256
  python -m alexnet_jax.main --config=configs/alexnet.py \
      --config.dataset=prepared:$HOME/imagenet256 --workdir=...

Every image of the config's dataset is decoded, converted, resized and cropped once, as the
input pipeline would (`config.resize_size`, `config.resize_mode`), and stored as a JPEG in
ArrayRecord shards that `sources.PreparedSource` reads (`prepared:<dir>`); unreadable images
are skipped and counted. The training split's mean image and PCA (`input_pipeline.
load_data_stats`) are computed from the copy and stored beside it. Decoding runs on
`config.num_workers` processes through the same Grain pipeline as training.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import grain
from absl import logging
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from alexnet_jax import input_pipeline, prepared_files, sources
from alexnet_jax.datasets import create_source
from alexnet_jax.images import SKIP_REASONS, encode_jpeg
from alexnet_jax.splits import SlicedSource, parse_split, split_file_stem

_CHUNK = 64


class _EncodeRecord:
    """Grain map: example -> prepared record bytes; a skip reason passes through."""

    def __init__(self, quality: int):
        self._quality = quality

    def __call__(self, example: dict[str, Any] | str) -> bytes | str:
        if isinstance(example, str):
            return example
        jpeg = encode_jpeg(example["image"], self._quality)
        return prepared_files.prepared_record(jpeg, example["label"])


def prepare_dataset(
    config: Any,
    out_dir: str,
    splits: Sequence[str] | None = None,
    *,
    quality: int = 95,
    examples_per_shard: int = 10_000,
) -> dict[str, Any]:
    """Writes the S x S copy of `config.dataset` as a `prepared:<out_dir>` dataset.

    Each image is decoded, converted, resized and cropped once (§2) and stored as a JPEG
    (4:4:4, `quality`) in ArrayRecord shards; unreadable images are skipped and counted. Then
    the training split's mean image and PCA are computed from the copy and stored with it.
    Train afterwards with `--config.dataset=prepared:<out_dir>`.

    Args:
      config: the config whose dataset, resize_size, num_workers... are used.
      out_dir: destination directory (splits already there are kept unless rewritten).
      splits: splits to write (default: the whole splits that config.train_split,
        eval_split and test_split read, e.g. 'train' for 'train[:80%]'; slices are applied
        when the prepared copy is read, so they select the same examples unless some were
        skipped as unreadable).
      quality: JPEG quality.
      examples_per_shard: ArrayRecord file size in examples.

    Returns:
      The metadata written to out_dir/metadata.json.
    """
    wanted = [config.train_split, config.eval_split] + [config.test_split] * bool(config.test_split)
    splits = list(dict.fromkeys(splits or [parse_split(s)[0] for s in wanted]))
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, prepared_files.PREPARED_METADATA)
    meta: dict[str, Any] = {"splits": {}}
    if os.path.exists(meta_path):
        meta = prepared_files.read_prepared_metadata(out_dir)
    made = prepared_files.prepared_resize_mode(meta)
    kept = sorted(set(meta["splits"]) - set(splits))
    if kept and made != config.resize_mode:
        raise ValueError(
            f"{out_dir} holds {kept} prepared with resize_mode={made!r}; adding splits made "
            f"with resize_mode={config.resize_mode!r} would mix the two: use another --out."
        )
    for split in splits:
        source = create_source(config, split)
        num_shards = max(1, math.ceil(len(source) / examples_per_shard))
        stem = split_file_stem(split)
        files = [f"{stem}.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        written = 0
        ds = grain.MapDataset.source(input_pipeline.GuardedSource(source, config.strict_data))
        # Chunks of 64 records cross from the workers at once (one record at a time, the
        # hand-over cost more than decoding a 640x427 JPEG).
        ds = ds.map(_EncodeRecord(quality)).batch(_CHUNK, batch_fn=list)
        it = input_pipeline.start_iterator(ds, config)
        writer = None
        try:
            with tqdm(total=len(source), desc=f"prepare {split}") as progress:
                for chunk_index, chunk in enumerate(it):
                    for offset, record in enumerate(chunk):
                        index = chunk_index * _CHUNK + offset
                        if index % examples_per_shard == 0:
                            if writer is not None:
                                writer.close()
                            shard = os.path.join(out_dir, files[index // examples_per_shard])
                            writer = ArrayRecordWriter(shard, "group_size:1")
                        if isinstance(record, str):
                            skipped[record] += 1
                        else:
                            writer.write(record)
                            written += 1
                    progress.update(len(chunk))
        finally:
            if writer is not None:
                writer.close()
            it.close()
        meta["splits"][split] = {"files": files, "num_examples": written, "skipped": skipped}
        meta.update(
            format="alexnet_jax prepared v1: ArrayRecord, record = int64 LE label + JPEG",
            source=config.dataset,
            size=int(config.resize_size),
            resize_mode=config.resize_mode,
            num_classes=source.num_classes,
            class_names=list(source.class_names) if source.class_names else None,
        )
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(meta_path + ".tmp", meta_path)
        logging.info("Wrote %d examples of %s to %s (skipped %s)", written, split, out_dir, skipped)
    train_base = parse_split(config.train_split)[0]
    if train_base in splits:
        prepared = sources.PreparedSource(
            out_dir, train_base, int(config.resize_size), config.resize_mode
        )
        if train_base != config.train_split:
            prepared = SlicedSource(prepared, config.train_split)
        input_pipeline.load_data_stats(config, prepared)
    return meta


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    _OUT = flags.DEFINE_string("out", None, "Destination directory.")
    _SPLITS = flags.DEFINE_list("splits", None, "Splits (default: those the config reads).")
    _QUALITY = flags.DEFINE_integer("quality", 95, "JPEG quality.")

    def main(argv: Sequence[str]) -> None:
        del argv
        prepare_dataset(_CONFIG.value, _OUT.value, _SPLITS.value, quality=_QUALITY.value)
        print(f"Prepared. Train with --config.dataset=prepared:{_OUT.value}")

    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
