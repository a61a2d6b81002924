"""Fine-tuning a trained AlexNet on your own images: a starting point (docs/transfer.md).

  python -m alexnet_jax.main --config=configs/finetune.py:torchvision --workdir=/tmp/ft \
      --config.init_from.source=alexnet-owt-7be5be79.pth \
      --config.dataset=folder:$HOME/my_images --config.model.num_classes=5

The text after `:` names the network the source holds, and with it the preprocessing the source
was trained with (a network sees inputs as its training prepared them):

  paper        (the default) a run of configs/alexnet.py: its two-tower network; the mean image
               is computed from your training split unless augment.mean_file is set.
  caffe        bvlc_alexnet.npy (configs/caffe_bvlc_alexnet.py): Caffe's network, 227 inputs
               warped from 256x256, Caffe's ImageNet channel means.
  torchvision  torchvision's alexnet state dict (configs/torchvision_alexnet.py): one tower of
               its widths, torchvision's normalisation.

What changes from training from scratch, after Caffe's fine-tuning example
(examples/finetune_flickr_style: base_lr 0.001, fc8 renamed so it starts afresh with lr_mult
10, step drops by 10):

* init_from.exclude = ('fc8',): the classifier starts from the config's initialisation, with
  model.num_classes outputs; every other layer starts from the source, bit for bit.
* optimizer.learning_rate 0.001 (a tenth of §5's 0.01) and fc8 at 10x through
  optimizer.layer_lr_multipliers (its weights and biases; Caffe's bias lr_mult 20 is 2x its
  weights', which optimizer.bias_learning_rate can set). Freeze a layer with a multiplier of 0,
  e.g. (('conv1', 0.0), ('conv2', 0.0), ('fc8', 10.0)).
* A short step schedule: 30 epochs, the rate divided by 10 at epochs 10 and 20.
* The dataset is a folder of class sub-folders (train/ and val/ inside it, or a held-out share
  of each class, folder_val_fraction); evaluation and checkpoints every 100 steps.

init_from.source and the dataset have no default: a fine-tuning run without them would
silently be a run from scratch on nothing, so both are refused until given.
"""

import ml_collections

from configs import alexnet, caffe_bvlc_alexnet, torchvision_alexnet

BASES = {
    "paper": alexnet.get_config,
    "caffe": caffe_bvlc_alexnet.get_config,
    "torchvision": torchvision_alexnet.get_config,
}


def get_config(base: str = "paper") -> ml_collections.ConfigDict:
    """`base`: the network of the source, 'paper', 'caffe' or 'torchvision' (see above)."""
    base = base or "paper"
    if base not in BASES:
        raise ValueError(
            f"configs/finetune.py:{base}: the text after ':' is the source's network, one of "
            f"{tuple(BASES)}."
        )
    config = BASES[base]()
    config.dataset = "folder:"  # Give it: --config.dataset=folder:<root of class sub-folders>.
    config.train_split = "train"
    config.eval_split = "validation"  # root/val (or root/validation), else a held-out share.
    config.model.num_classes = 0  # Give it: the number of class sub-folders.

    config.init_from.source = ""  # Give it: a run's workdir, a .npy or a .pth/.npz.
    config.init_from.exclude = ("fc8",)  # A new classifier for the new classes.

    o = config.optimizer
    o.learning_rate = 0.001  # A tenth of the paper's 0.01: the features are trained already.
    o.layer_lr_multipliers = (("fc8", 10.0),)  # The new layer learns 10x faster.
    o.schedule = "step"
    config.num_epochs = 30
    o.step_epochs = (10, 20)
    o.step_factor = 0.1

    config.log_every_steps = 20
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 100
    return config
