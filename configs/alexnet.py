"""The paper's ImageNet run (Krizhevsky, Sutskever, Hinton, NIPS 2012, §5).

Launch (ImageNet 2012 prepared by TFDS, see README):
  python -m alexnet_jax.main --config=configs/alexnet.py --workdir=/tmp/alexnet \
      --config.data_dir=$HOME/tensorflow_datasets

Layer table and parameter count:
  python -m alexnet_jax.summary --config=configs/alexnet.py
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
    """The network of §3.5 with every switch at the paper's setting."""
    m = ml_collections.ConfigDict()
    m.name = "alexnet"  # 'alexnet' | 'cifar_fig1' (§3.1 Figure 1) | 'cifar_lrn' (§3.3).
    m.towers = 2  # 2: the two-GPU net (§3.2); 1: the one-GPU comparison net.
    # towers=1 only: 'half' (paper footnote 2) | 'full' (ungrouped) | 'owt' (torchvision's widths).
    m.one_tower_kernels = "half"
    m.activation = "relu"  # Any jax.nn activation by name; 'tanh' for Figure 1.
    m.lrn = True  # Local response normalization after conv1 and conv2 (§3.3).
    m.lrn_kind = "cross_map"  # 'cross_map' (§3.3, across channels) | 'within_map' (spatial).
    m.lrn_size = 5  # n: maps in the window (odd); within_map: the n x n spatial window.
    m.lrn_alpha = 1e-4  # alpha, read in lrn_alpha_convention.
    # 'per_term': alpha multiplies the plain sum of squares (§3.3) | 'divided_by_n': divided by
    # the window's terms first (n across maps, n^2 within), as in cuda-convnet, Caffe, PyTorch.
    m.lrn_alpha_convention = "per_term"
    m.lrn_beta = 0.75  # beta.
    m.lrn_k = 2.0  # k.
    m.lrn_before_relu = ()  # Layers normalized before their ReLU (2012 code: ('conv1',)).
    m.lrn_across_towers = False  # One LRN window over both towers' maps (Caffe) | per tower.
    # Layers whose LRN is followed by a within-map normalization (2012 code: ('conv2',)), and its
    # constants (alpha in lrn_alpha_convention; the default is the 2012 code's per-term 4e-5).
    m.within_map_after = ()
    m.within_map_size = 5  # The size x size spatial window.
    m.within_map_alpha = 4e-5  # alpha.
    m.within_map_beta = 0.75  # beta.
    m.within_map_k = 1.0  # k (cuda-convnet's rnorm: 1).
    m.pool_window = 3  # 3: overlapping pooling (§3.4); 2: non-overlapping. Stride 2 either way.
    # Middle conv layers left out (§7), of conv2..conv5: the next layer reads their input with
    # its own kernel count; their pooling stays (docs/model.md).
    m.remove_conv = ()
    # Kernels of a sixth conv layer over pool5 (Table 2's "1 CNN*"; 3x3, pad 1), 0 = none.
    m.extra_conv = 0
    m.extra_conv_sees = "own"  # Its input: 'own' tower's maps (like conv4, conv5) | 'both'.
    m.dropout_rate = 0.5  # On the outputs of fc6 and fc7 (§4.2); 0 disables.
    # 'test_time': outputs x (1 - rate) at test (§4.2, the 2012 code) | 'inverted': kept units
    # / (1 - rate) in training (PyTorch, Flax).
    m.dropout_scaling = "test_time"
    m.dropout_on = "outputs"  # 'outputs' of fc6, fc7 (§4.2) | 'inputs' (torchvision; 1 tower).
    # -1: cuda-convnet2's rounding (224 -> 55 with 3 zeros past the bottom/right) | N zeros on
    # every side of conv1's input (torchvision: 2).
    m.conv1_padding = -1
    m.num_classes = 1000  # Outputs of fc8.
    m.init = "paper"  # 'paper' (§5) | 'caffe' (bias 0.1, fc6/7 std 0.005) | 'lecun'.
    m.init_std = ()  # (layer, std) pairs replacing init's weight std (2012 code: conv3-5 0.03).
    m.grouped_conv = False  # Own-tower convs as one grouped conv (True) or one per tower.
    # 'auto': the CPU-tuned convolutions and pooling (alexnet_jax/ops.py) on the CPU, XLA's own
    # elsewhere | 'cpu' | 'xla'. Same numbers either way; only speed differs.
    m.kernels = "auto"
    m.compute_dtype = "float32"  # 'float32' (paper) | 'bfloat16' products, float32 sums.
    return m


def get_augment_config() -> ml_collections.ConfigDict:
    """The paper's augmentation settings (§2, §4.1); ablation configs switch single fields."""
    cfg = ml_collections.ConfigDict()
    cfg.mean = "image"  # 'image' per-pixel mean image (§2) | 'channel' | 'fixed' | 'none'.
    cfg.mean_rgb = (0.0, 0.0, 0.0)  # 'fixed': the RGB values subtracted, 0..255 units.
    # 'image'/'channel': the mean image read from this file (.npy, or Caffe's .binaryproto)
    # instead of computed from the training split; '' computes it (§2).
    cfg.mean_file = ""
    cfg.mean_file_layout = "caffe"  # 'caffe': (3, H, W) B, G, R | 'hwc_rgb': (H, W, 3) R, G, B.
    cfg.std_rgb = (1.0, 1.0, 1.0)  # Per-channel divisor after the mean (torchvision's std x 255).
    cfg.random_crop = True  # Random patches of the S x S image (§4.1); False = centre patch.
    cfg.flip = True  # Left-right mirror with probability 1/2 (§4.1).
    cfg.pca_color = True  # PCA colour noise, one RGB shift per image (§4.1).
    cfg.pca_std = 0.1  # Standard deviation of the alphas (§4.1).
    # Epoch from which each augmentation stops (-1: the whole run); the 2012 code's run #145
    # switched colour noise off at epoch 67. After it: centre patch, no flip, no colour noise.
    cfg.random_crop_end_epoch = -1.0
    cfg.flip_end_epoch = -1.0
    cfg.pca_color_end_epoch = -1.0
    return cfg


def get_config() -> ml_collections.ConfigDict:
    """The paper's recipe; every other config starts from this one."""
    config = ml_collections.ConfigDict()
    config.dataset = (
        "tfds:imagenet2012"  # 'tfds:<name>' | 'folder:<path>' | 'digits' | 'synthetic'.
    )
    config.data_dir = ""  # TFDS data directory ('' = TFDS default, ~/tensorflow_datasets).
    # Splits; a slice such as 'train[:80%]' / 'train[80%:]' holds a validation set out of train.
    config.train_split = "train"  # Split trained on.
    # Evaluated every eval_every_steps; the plateau schedule reads it (§5: "validation error").
    # ILSVRC-2012 validation, also what Table 2 reports (the test labels are not public).
    config.eval_split = "validation"
    config.test_split = ""  # Evaluated once, at the end, as test_* ('' = none); never chosen on.
    config.image_size = 224  # Network input (§4.1); 227 = Caffe's size. Same 55x55 conv1 maps.
    config.batch_size = 128  # Global batch over all devices (§5).
    config.num_epochs = 90  # About 90 passes over the training set (§5).
    config.num_train_steps = -1  # -1: from num_epochs.
    config.seed = 0  # Parameters, data order and augmentation all derive from it.

    # Host-side input (alexnet_jax/input_pipeline.py).
    config.resize_size = 256  # Shorter side resized to this, then centre-cropped square (§2).
    # 'shorter_side' (§2) | 'warp': the whole image resampled to resize_size x resize_size,
    # aspect ratio lost, as Caffe's convert_imageset made its ImageNet data.
    config.resize_mode = "shorter_side"
    config.num_workers = 2  # Grain worker processes decoding images (0 = in the main process).
    config.prefetch_batches = 2  # Batches each worker prepares ahead.
    config.strict_data = False  # True: stop at the first unreadable image instead of skipping.
    config.cache_dir = ""  # Mean image / PCA statistics cache ('' = ~/.cache/alexnet_jax).
    config.folder_val_fraction = 0.1  # folder: datasets: share of each class held out.
    config.synthetic_examples = 1024  # synthetic: examples per split.
    config.synthetic_classes = 1000  # synthetic: classes.

    config.model = get_model_config()

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 0.01  # Initial rate, all layers (§5).
    config.optimizer.momentum = 0.9  # §5.
    config.optimizer.weight_decay = 5e-4  # §5.
    config.optimizer.update_rule = "paper"  # 'paper': lr inside the momentum (§5) | 'optax'.
    config.optimizer.schedule = "plateau"  # 'plateau' (§5) | 'step' | 'constant' | 'cosine'.
    config.optimizer.weight_decay_on = "all"  # 'all' (§5) | 'weights': biases undecayed (Caffe).
    config.optimizer.plateau_factor = 0.1  # Rate multiplied by this at each drop (§5: "by 10").
    # Evaluations in a row without a new best before a drop. eval_every_steps is ~1 epoch at
    # batch 128, so 2 is ~two epochs: one noisy evaluation alone does not cut the rate.
    config.optimizer.plateau_patience = 2
    config.optimizer.plateau_max_drops = 3  # §5: "reduced three times prior to termination".
    config.optimizer.plateau_min_delta = 0.0  # A new best must beat the old by more than this.
    # 'step': drops at these epochs; three in ~90 epochs like §5 (the 30/60/80 ImageNet recipe).
    config.optimizer.step_epochs = (30, 60, 80)
    config.optimizer.step_factor = 0.1  # 'step': rate multiplied by this at each boundary.
    # 'manual': (epoch, rate) pairs, the rate from that epoch on (the 2012 code's hand-set rates).
    config.optimizer.manual_schedule = ()
    # -1: biases follow the weights' rate and schedule (§5). >= 0: their own rate (the 2012
    # code's epsB=0.02), constant unless bias_manual_schedule lists (epoch, rate) changes.
    config.optimizer.bias_learning_rate = -1.0
    config.optimizer.bias_manual_schedule = ()
    # (layer, multiplier) or (layer, ((epoch, multiplier), ...)) pairs scaling a layer's rates,
    # 1 until the first listed epoch; 'conv1' or 'conv1/kernel', 'conv1/bias'. 0 freezes it.
    config.optimizer.layer_lr_multipliers = ()

    config.augment = get_augment_config()  # §2, §4.1; each field an ablation.

    # Start from another network's parameters instead of §5's initialisation (fine-tuning;
    # alexnet_jax/transfer.py, docs/transfer.md). Read once, when the run starts at step 0.
    config.init_from = ml_collections.ConfigDict()
    # '' = the paper's initialisation | a run's workdir | a caffe-tensorflow bvlc_alexnet.npy |
    # a torchvision alexnet state dict (.pth, or .npz of its arrays).
    config.init_from.source = ""
    # '' = from the source: a folder 'run', .npy 'caffe_npy', .pth/.npz 'torchvision'.
    config.init_from.format = ""
    config.init_from.step = -1  # A run's checkpoint step; -1 = its latest.
    # Layers that keep this config's initialisation (not imported), e.g. ('fc8',) for a new
    # model.num_classes. Freeze or speed up layers with optimizer.layer_lr_multipliers.
    config.init_from.exclude = ()

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # Data-parallel replicas; -1 = all devices the tower axis leaves.
    config.mesh.tower = 0  # Devices per replica's towers: 0 = two when possible, 1 = side by side.
    # Gradient sum over the replicas: 'ordered' adds them in replica order (the same bits for any
    # number of processes), 'psum' leaves the order to the collective library.
    config.mesh.grad_sum = "ordered"

    config.eval_ten_crop = True  # Also evaluate the 10-patch softmax average (§4.1).
    config.keep_checkpoints = 3  # Latest checkpoints kept in workdir/checkpoints.
    config.progress_bar = True  # tqdm bar with ETA on the console (process 0).
    config.log_every_steps = 100  # Training metrics cadence.
    config.eval_every_steps = 10_000  # Validation cadence (the plateau schedule reads it).
    config.checkpoint_every_steps = 5_000  # Checkpoint cadence.
    return config
