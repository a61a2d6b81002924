"""Ablation: a sixth conv layer over the last pooling layer (Table 2's "1 CNN*").

Paper, Table 2: "1 CNN*" (39.0 / 16.6 top-1 / top-5 on ILSVRC-2012 validation) is one CNN
"with an extra sixth convolutional layer over the last pooling layer", pre-trained on the Fall
2011 release and fine-tuned; "1 CNN" without it and without pre-training is 40.7 / 18.2. The
difference mixes the layer and the pre-training, so it is a direction here, not a target. The
layer: 3x3, stride 1, pad 1, 256 kernels split over the towers, each its own tower's maps
(docs/model.md gives the reasons). Everything else is the paper's configs/alexnet.py.

  python -m alexnet_jax.summary --config=configs/ablations/extra_conv6.py
  python -m alexnet_jax.main --config=configs/ablations/extra_conv6.py \
      --workdir=/tmp/ablation_extra_conv6
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    config.model.extra_conv = 256
    return config
