"""Ablation: tanh instead of ReLU.

Paper, §3.1: ReLU nets reach a given training error several times faster.
Everything else is the paper's configs/alexnet.py.

  python -m alexnet_jax.main --config=configs/ablations/tanh.py \
      --workdir=/tmp/ablation_tanh
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.model.activation = "tanh"
    return config
