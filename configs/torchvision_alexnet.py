"""torchvision's alexnet, to evaluate its published weights (`alexnet-owt-7be5be79.pth`).

  python -m alexnet_jax.evaluate --config=configs/torchvision_alexnet.py \
      --weights=alexnet-owt-7be5be79.pth --weights_format=torchvision \
      --config.data_dir=$HOME/tensorflow_datasets

torchvision's model is the one-tower net of Krizhevsky's "One weird trick for parallelizing
convolutional neural networks" (2014), not the paper's network. It differs as follows, each a
switch here:

* 64-192-384-256-256 kernels (`one_tower_kernels='owt'`, 61,100,840 parameters).
* conv1 with 2 zeros on every side (`conv1_padding=2`; 224 -> 55x55, as the paper's rounding).
* No LRN (`lrn=False`).
* Dropout on the inputs of fc6 and fc7 (`dropout_on='inputs'`), inverted
  (`dropout_scaling='inverted'`).
* Inputs on a 0-1 scale normalized with fixed ImageNet statistics: mean (0.485, 0.456, 0.406),
  std (0.229, 0.224, 0.225). Here pixels are 0..255, so both are times 255
  (`augment.mean='fixed'`, `mean_rgb`, `std_rgb`). 224 crops come from 256 (the same as
  torchvision's Resize(256) + CenterCrop(224) for the centre patch).

Its adaptive average pool to 6x6 is the identity for the 224-255 inputs this network takes:
pool5 is 6x6 there already. Its model card gives 56.522% / 79.066% top-1 / top-5 accuracy.
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    m = config.model
    m.towers = 1
    m.one_tower_kernels = "owt"
    m.conv1_padding = 2
    m.lrn = False
    m.dropout_on = "inputs"
    m.dropout_scaling = "inverted"
    m.init = "lecun"
    config.augment.mean = "fixed"
    config.augment.mean_rgb = (0.485 * 255, 0.456 * 255, 0.406 * 255)
    config.augment.std_rgb = (0.229 * 255, 0.224 * 255, 0.225 * 255)
    config.mesh.tower = 1
    return config
