"""Ablation: no PCA colour augmentation.

Paper, §4.1: PCA colour noise lowers top-1 error by over 1%.
Everything else is the paper's configs/alexnet.py.

  python -m alexnet_jax.main --config=configs/ablations/no_pca.py \
      --workdir=/tmp/ablation_no_pca
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.augment.pca_color = False
    return config
