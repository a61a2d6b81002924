"""The offline default: the paper's §3.3 CIFAR-10 net (cuda-convnet's layers-conv-local-11pct)
trained on scikit-learn's bundled handwritten digits — real data, nothing to download. A few
minutes on a 2-core CPU; validates on 20% of the training images held out (by index) every 3
epochs and ends by printing its test error, measured once.

  python -m alexnet_jax.main --config=configs/default.py --workdir=/tmp/alexnet_jax_default

Everything not set here is the paper's recipe of configs/alexnet.py (SGD with momentum 0.9 and
the learning rate inside the momentum, weight decay 5e-4, mean-image subtraction, random crops,
PCA colour noise). Digits are not mirror-symmetric, so the flips of §4.1 are off.
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.dataset = "digits"  # 1,797 8x8 digits shipped with scikit-learn; 'train'/'test'.
    # Validation held out of 'train' by index: the last 20% (287 of 1,437 images; 1,150 remain
    # to train on). The 360 test images are evaluated once, at the end.
    config.train_split = "train[:80%]"
    config.eval_split = "train[80%:]"
    config.test_split = "test"
    config.resize_size = 36  # 8x8 digits upscaled to 36x36 ...
    config.image_size = 32  # ... and 32x32 patches taken from them (the CIFAR nets' input).
    config.batch_size = 32
    config.num_epochs = 15
    config.num_workers = 0  # Tiny images: decoding in the main process is fastest.

    config.model.name = "cifar_lrn"
    config.model.towers = 1
    config.model.dropout_rate = 0.0  # The cuda-convnet CIFAR nets have no dropout.
    config.model.num_classes = 10
    config.model.init = "lecun"  # Scaled to the layer; the layer file's initW needs its lr.

    config.augment.flip = False  # A mirrored digit is another symbol ...
    config.eval_ten_crop = False  # ... and half of the 10 test patches are mirrored.
    config.optimizer.schedule = "constant"

    config.log_every_steps = 20
    config.eval_every_steps = 105  # Every 3 epochs (35 steps of 32 each).
    config.checkpoint_every_steps = 105
    return config
