"""Ablation: no local response normalization.

Paper, §3.3: LRN lowers top-1/top-5 error by 1.4%/1.2%.
Everything else is the paper's configs/alexnet.py.

  python -m alexnet_jax.main --config=configs/ablations/no_lrn.py \
      --workdir=/tmp/ablation_no_lrn
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.model.lrn = False
    return config
