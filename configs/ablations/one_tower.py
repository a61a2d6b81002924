"""Ablation: the one-GPU net, half the kernels in conv1-conv4.

Paper, §3.2: the two-tower net lowers top-1/top-5 error by 1.7%/1.2%.
Everything else is the paper's configs/alexnet.py.

  python -m alexnet_jax.main --config=configs/ablations/one_tower.py \
      --workdir=/tmp/ablation_one_tower
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.model.towers = 1
    return config
