"""Figure 1 (§3.1): the four-layer CIFAR-10 net (cuda-convnet's layers-18pct) with ReLUs; the
tanh run is the same file with --config.model.activation=tanh. No regularization of any kind
(no weight decay, no dropout, no augmentation), as in the paper; the learning rate of each
activation is chosen separately (experiments/paper/relu_vs_tanh.py sweeps it).

  python -m alexnet_jax.main --config=configs/cifar10_fig1.py --workdir=/tmp/fig1_relu
  python -m alexnet_jax.main --config=configs/cifar10_fig1.py --workdir=/tmp/fig1_tanh \
      --config.model.activation=tanh

Needs CIFAR-10 prepared by TFDS (see README).
"""

import ml_collections

from alexnet_jax import lrn
from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.dataset = "tfds:cifar10"
    # cuda-convnet's CIFAR recipe: train on data batches 1-4, validate on batch 5 (10,000 of the
    # 50,000); here by index, the last 10,000 of TFDS's 'train'. Test once, at the end.
    config.train_split = "train[:40000]"
    config.eval_split = "train[40000:]"
    config.test_split = "test"
    config.resize_size = 32  # CIFAR-10 images as they are.
    config.image_size = 32
    config.batch_size = 128
    config.num_epochs = 40

    config.model.name = "cifar_fig1"
    config.model.towers = 1
    config.model.dropout_rate = 0.0
    config.model.num_classes = 10
    config.model.init = "paper"  # The layer file's initW.
    # layers-18pct normalizes within each map (rnorm1 after pool1, rnorm2 after pool2): a 3x3
    # spatial window, layer-params file scale=0.00005 (divided by size^2 = 9 in cuda-convnet's
    # layer.py), pow 0.75, and the kernels' fixed constant 1 (alexnet_jax/lrn.py cites them).
    config.model.lrn_kind = "within_map"
    config.model.lrn_size = 3
    config.model.lrn_alpha = lrn.from_convnet_scale(5e-5, 3, "rnorm")  # 5.56e-6
    config.model.lrn_beta = 0.75
    config.model.lrn_k = 1.0

    config.augment.random_crop = False  # No augmentation: nothing but the mean image.
    config.augment.flip = False
    config.augment.pca_color = False
    config.eval_ten_crop = False  # 32x32 crops of 32x32 images are all the same patch.

    config.optimizer.weight_decay = 0.0  # "No regularization of any kind."
    config.optimizer.schedule = "constant"
    config.optimizer.learning_rate = 0.01

    config.log_every_steps = 50
    config.eval_every_steps = 312  # Every epoch (40,000 / 128).
    config.checkpoint_every_steps = 312
    return config
