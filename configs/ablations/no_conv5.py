"""Ablation: conv5 removed (§7).

Paper, §7: "removing any of the middle layers results in a loss of about 2% for the top-1
performance of the network." The next layer reads conv5's input (docs/model.md says how, case
by case). Everything else is the paper's configs/alexnet.py.

  python -m alexnet_jax.summary --config=configs/ablations/no_conv5.py
  python -m alexnet_jax.main --config=configs/ablations/no_conv5.py \
      --workdir=/tmp/ablation_no_conv5
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.model.remove_conv = ("conv5",)
    return config
