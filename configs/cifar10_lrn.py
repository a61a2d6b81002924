"""The LRN experiment of §3.3 on CIFAR-10: cuda-convnet's layers-conv-local-11pct net (conv-LRN-
pool twice, two locally connected layers, fc10) with 24x24 random crops and flips, as the layer
file's run was trained ("with image translations and horizontal reflections"). The paper: 13%
test error without LRN, 11% with it.

  python -m alexnet_jax.main --config=configs/cifar10_lrn.py --workdir=/tmp/lrn_on
  python -m alexnet_jax.main --config=configs/cifar10_lrn.py --workdir=/tmp/lrn_off \
      --config.model.lrn=False

Needs CIFAR-10 prepared by TFDS (see README).
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.dataset = "tfds:cifar10"
    config.train_split = "train"
    config.eval_split = "test"
    config.resize_size = 32
    config.image_size = 24  # cuda-convnet's --crop-border=4.
    config.batch_size = 128
    config.num_epochs = 100

    config.model.name = "cifar_lrn"
    config.model.towers = 1
    config.model.dropout_rate = 0.0
    config.model.num_classes = 10
    config.model.init = "paper"

    config.augment.pca_color = False  # Crops and flips only, as in the layer file's run.
    config.optimizer.learning_rate = 0.01
    config.optimizer.weight_decay = 0.004  # The layer-params file's wc on local3/4 and fc10.

    config.log_every_steps = 50
    config.eval_every_steps = 390
    config.checkpoint_every_steps = 390
    return config
