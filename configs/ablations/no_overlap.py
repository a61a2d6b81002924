"""Ablation: non-overlapping pooling, window 2 stride 2.

Paper, §3.4: overlapping pooling lowers top-1/top-5 error by 0.4%/0.3%.
Everything else is the paper's configs/alexnet.py.

  python -m alexnet_jax.main --config=configs/ablations/no_overlap.py \
      --workdir=/tmp/ablation_no_overlap
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.model.pool_window = 2
    return config
