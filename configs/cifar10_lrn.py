"""The LRN experiment of §3.3 on CIFAR-10: cuda-convnet's layers-conv-local-11pct net (conv-LRN-
pool twice, two locally connected layers, fc10) with 24x24 random crops and flips, as the layer
file's run was trained ("with image translations and horizontal reflections"). The paper: 13%
test error without LRN, 11% with it.

  python -m alexnet_jax.main --config=configs/cifar10_lrn.py --workdir=/tmp/lrn_on
  python -m alexnet_jax.main --config=configs/cifar10_lrn.py --workdir=/tmp/lrn_off \
      --config.model.lrn=False

Needs CIFAR-10 prepared by TFDS (see README). Data, splits and cadences are those of
configs/cifar10_fig1.py.
"""

import ml_collections

from configs import alexnet, cifar10_fig1


def get_config() -> ml_collections.ConfigDict:
    config = cifar10_fig1.get_config()
    config.image_size = 24  # cuda-convnet's --crop-border=4.
    config.num_epochs = 100
    config.model.name = "cifar_lrn"
    # Cross-map LRN with the paper's constants (§3.3), not the Figure 1 net's within-map ones.
    paper = alexnet.get_model_config()
    for field in ("lrn_kind", "lrn_size", "lrn_alpha", "lrn_beta", "lrn_k"):
        config.model[field] = paper[field]

    config.augment.random_crop = True  # Crops and flips only, as in the layer file's run.
    config.augment.flip = True
    config.eval_ten_crop = True
    config.optimizer.weight_decay = 0.004  # The layer-params file's wc on local3/4 and fc10.
    config.optimizer.schedule = "plateau"
    return config
