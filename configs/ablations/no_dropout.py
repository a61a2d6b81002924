"""Ablation: no dropout.

Paper, §4.2: without dropout the net overfits substantially; dropout roughly
doubles the iterations to converge.
Everything else is the paper's configs/alexnet.py.

  python -m alexnet_jax.main --config=configs/ablations/no_dropout.py \
      --workdir=/tmp/ablation_no_dropout
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.model.dropout_rate = 0.0
    return config
