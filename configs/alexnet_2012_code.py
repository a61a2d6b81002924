"""AlexNet as Krizhevsky's released 2012 code ran it: run #145, the paper's single network.

Run #145 (layers/layers-145.cfg, layers/layer-params-145.cfg of the released source,
yrmo/AlexNet-Source-Code) is the run whose notes record 40.66% top-1 / 18.21% top-5 on
ILSVRC-2012 validation after epoch 91 (layer-params-145.cfg:181-182), the paper's 40.7 / 18.2.
Everything not listed below is configs/alexnet.py (the paper's text). The differences, each with
its source line (experiments/paper/paper_vs_code.md has the whole table):

Network
* LRN constants as the files give them: `scale=0.0001`, `pow=0.75`, `minDiv=2`
  (layer-params-145.cfg:137-155), size 5 (layers-145.cfg:35-45, 95-105), with layer.py dividing
  the scale by the size (layer.py:1183): `lrn_alpha_convention='divided_by_n'`, so 2e-5 per
  squared term where the paper's text reads 1e-4.
* conv1 is normalized before its ReLU: conv1a has no `neuron=` line (layers-145.cfg:9-20),
  rnorm1a reads conv1a (:35-39) and pool1a applies the ReLU (`neuron=relu`, :47-54):
  `lrn_before_relu=('conv1',)`.
* conv2's cross-map LRN is followed by a within-map normalization, cnorm2 (`type=rnorm`,
  `inputs=rnorm2a`, size 5: layers-145.cfg:107-117; pool2a reads cnorm2a, :119-125), with
  `scale=0.001`, `pow=0.75` and no minDiv (layer-params-145.cfg:157-163), the scale divided by
  size^2 (layer.py:1183): `within_map_after=('conv2',)`, alpha 1e-3 read as 4e-5 per term,
  k = 1.
* Weights N(0, 0.01) except conv3, conv4, conv5 at N(0, 0.03) (`initW=0.03`, layers-145.cfg:143,
  157, 172, 186, 200, 214): `init_std`. Biases as the paper: 1 in conv2, conv4, conv5 and the fc
  layers but fc8 (`initB=1`), 0 elsewhere (no initB).

Optimizer (cuda-convnet's update: inc = mom * inc + eps * (grad - wc * w), w += inc, the rate
inside the momentum as `update_rule='paper'`; weights.cu:152, 192-193)
* Biases at their own rate, `epsB=0.02`, never lowered (layer-params-145.cfg:19, 27, ...; the
  notes only ever change epsw), and without weight decay (biases are built with wc 0:
  layer.cu:565): `bias_learning_rate=0.02`, `weight_decay_on='weights'`.
* The weights' rate set by hand: 0.01 (the start, as #153 "like #145", layer-params-153.cfg),
  0.001 at epoch 25, 1e-4 at 51, 1e-5 at 79 (layer-params-145.cfg:169, 174, 180):
  `schedule='manual'`.
* conv1: its weights' rate 1e-5 from epoch 67 (a tenth of the others' 1e-4, :177) and 0 from
  epoch 72 (:179); its bias rate is 0.0 in the final file (:3, :11) but no note says when it
  changed: this config freezes the bias with the weights at epoch 72.
* Colour noise (`--color-noise 0.1`) set to 0 at epoch 67 (:178): `pca_color_end_epoch=67`.
* Stopped at epoch 91 (:181): `num_epochs=91`.

Dropout needs no change: the paper (§4.2) and the code (`hs` layers, `keep=0.5`,
layers-145.cfg:256-264; src/layer.cu:1126-1134) both multiply the outputs by 0.5 at test time,
`model.dropout_scaling='test_time'`, the default.

What this config cannot express
* The continuation (layer-params-145.cfg:192-203: the rate pushed back up to 0.001 at epoch 91
  with colour noise back on, then 1e-4 at 107, 1e-5 and no colour noise at 124, killed at 135,
  multiview 40.25 / 17.99) needs a rate that rises again and an augmentation that restarts:
  run it as a second run that resumes this one's checkpoint with another config.

Not differences (the same function)
* fc8 is one layer on GPU 0 reading both towers (layers-145.cfg:294-299) where this network
  has a half per tower: the same function (each half reads both towers' fc7 outputs), the same
  N(0, 0.01) initialisation, the same parameter count.
* The ReLU of conv5 is applied by pool3 (layers-145.cfg:220-227) where this network applies it
  before pool5: the same function, since max pooling and ReLU commute.

  python -m alexnet_jax.summary --config=configs/alexnet_2012_code.py
  python -m alexnet_jax.main --config=configs/alexnet_2012_code.py --workdir=/tmp/alexnet_2012 \
      --config.data_dir=$HOME/tensorflow_datasets
"""

import ml_collections

from configs import alexnet


def get_config() -> ml_collections.ConfigDict:
    config = alexnet.get_config()
    m = config.model
    m.lrn_alpha_convention = "divided_by_n"  # layer.py: scale / size
    m.lrn_alpha = 1e-4  # rnorm1/rnorm2 scale
    m.lrn_k = 2.0  # minDiv
    m.lrn_beta = 0.75  # pow
    m.lrn_before_relu = ("conv1",)
    m.within_map_after = ("conv2",)  # cnorm2
    m.within_map_size = 5
    m.within_map_alpha = 1e-3  # cnorm2 scale (/ size^2 in layer.py)
    m.within_map_beta = 0.75
    m.within_map_k = 1.0
    m.init_std = (("conv3", 0.03), ("conv4", 0.03), ("conv5", 0.03))

    o = config.optimizer
    o.learning_rate = 0.01
    o.schedule = "manual"
    o.manual_schedule = ((25, 1e-3), (51, 1e-4), (79, 1e-5))
    o.bias_learning_rate = 0.02
    o.weight_decay_on = "weights"
    # conv1's weights at a tenth of the others' rate from epoch 67, conv1 frozen from 72.
    o.layer_lr_multipliers = (("conv1/kernel", ((67, 0.1),)), ("conv1", ((72, 0.0),)))

    config.augment.pca_color_end_epoch = 67
    config.num_epochs = 91
    return config
