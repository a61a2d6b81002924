"""Caffe's bvlc_alexnet, to evaluate its published weights (`bvlc_alexnet.npy`).

  python -m alexnet_jax.evaluate --config=configs/caffe_bvlc_alexnet.py \
      --weights=bvlc_alexnet.npy --weights_format=caffe_npy \
      --config.data_dir=$HOME/tensorflow_datasets

Caffe's model (models/bvlc_alexnet/deploy.prototxt) is the paper's two-tower network, with the
towers as `group: 2` in conv2, conv4 and conv5, and conv-ReLU-LRN-pool order as in the paper.
Its other choices are switches here:

* LRN `local_size: 5`, `alpha: 0.0001`, `beta: 0.75`, k = 1 (Caffe's default). Caffe divides
  alpha by local_size (`lrn_alpha_convention='divided_by_n'`), so the term is 2e-5 per square
  against the paper's 1e-4 and k is 1 against 2. Its window runs across all 96 (256) maps,
  both groups together (`lrn_across_towers=True`).
* 227x227 inputs (`image_size=227`, no padding needed) cropped from 256x256 images that are
  warped, not cropped, to 256x256 (`resize_mode='warp'`): Caffe's `convert_imageset
  --resize_height=256 --resize_width=256` made its ILSVRC-2012 data so
  (examples/imagenet/create_imagenet.sh).
* Dropout scales the kept units in training (`dropout_scaling='inverted'`), so nothing is
  scaled at test time.
* Inputs have a per-channel mean subtracted, Caffe's B, G, R = 104, 117, 123 (from
  ilsvrc_2012_mean), given here in RGB order (`augment.mean='fixed'`). The importer reverses
  conv1's input channels, so the network takes RGB like every config here.

Caffe's own evaluation (models/bvlc_alexnet/train_val.prototxt) subtracts the mean *image*
`imagenet_mean.binaryproto`, not three numbers. Given that file (or pycaffe's
`ilsvrc_2012_mean.npy`, the same 3 x 256 x 256 B, G, R array) after the config's path, the
config subtracts it instead (`augment.mean='image'`, `mean_file`, `mean_file_layout='caffe'`):

  --config=configs/caffe_bvlc_alexnet.py:imagenet_mean.binaryproto

Its model card (57.1% / 80.2% top-1 / top-5 accuracy, centre crop) is the figure to compare
with, not a number measured here.
"""

import ml_collections

from configs import alexnet


def get_config(mean_file: str | None = None) -> ml_collections.ConfigDict:
    """Caffe's network and preprocessing; `mean_file`: Caffe's mean image instead of its
    per-channel values (the text after `:` in `--config=configs/caffe_bvlc_alexnet.py:FILE`)."""
    config = alexnet.get_config()
    m = config.model
    m.lrn_alpha_convention = "divided_by_n"
    m.lrn_alpha = 1e-4
    m.lrn_k = 1.0
    m.lrn_beta = 0.75
    m.lrn_across_towers = True
    m.dropout_scaling = "inverted"
    m.init = "caffe"  # bias 0.1 and fc6/fc7 std 0.005, for training it from scratch
    config.image_size = 227
    config.resize_size = 256
    config.resize_mode = "warp"
    config.augment.mean = "fixed"
    config.augment.mean_rgb = (123.0, 117.0, 104.0)
    if mean_file:
        config.augment.mean = "image"
        config.augment.mean_rgb = (0.0, 0.0, 0.0)
        config.augment.mean_file = mean_file
    config.optimizer.weight_decay_on = "weights"
    config.optimizer.schedule = "step"  # Caffe's solver: /10 every 100,000 iterations of 256
    return config
