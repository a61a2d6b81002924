"""Ablation: one tower with the two-tower widths (no grouping).

Not a paper ablation: Caffe's ungrouped variant, 62,378,344 parameters.
Everything else is the paper's configs/alexnet.py.

  python -m alexnet_jax.main --config=configs/ablations/ungrouped.py \
      --workdir=/tmp/ablation_ungrouped
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.model.towers = 1
    config.model.one_tower_kernels = "full"
    return config
