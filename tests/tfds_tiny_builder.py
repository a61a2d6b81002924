"""A tiny TFDS image-classification dataset for tests/test_input_pipeline.py.

Builder classes must live in an importable module (not `__main__`). Building needs TensorFlow;
reading it back through `tfds.data_source` (ArrayRecord) does not.

Example i of a split is a solid-colour PNG of size (10 + i) x (7 + 2 i) whose red value is
10 i and whose label is i % 3, so a reader can check every pixel and label it gets back.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = {"train": 12, "test": 5}
NUM_CLASSES = 3


def example(i: int) -> dict:
    """Example i of any split: a solid (10 i, 200, 50) image and label i % 3."""
    image = np.zeros((10 + i, 7 + 2 * i, 3), np.uint8)
    image[:] = (10 * i, 200, 50)
    return {"image": image, "label": i % NUM_CLASSES}


class AlexnetJaxTestImages(tfds.core.GeneratorBasedBuilder):
    """Registered as 'alexnet_jax_test_images'."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        # The classic DatasetInfo: `dataset_info_from_configs` would look for metadata files in
        # a package directory, which a module in tests/ does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(n) for split, n in NUM_EXAMPLES.items()}

    def _generate_examples(self, n: int):
        for i in range(n):
            yield i, example(i)


def build(data_dir: str) -> None:
    """Builds the dataset into data_dir as ArrayRecord."""
    AlexnetJaxTestImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
