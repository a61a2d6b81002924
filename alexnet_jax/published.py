"""Published AlexNet results: the paper's tables, the released 2012 code's notes, the model cards.

Citations, not measurements of this project; `alexnet_jax.evaluate`,
experiments/paper/paper_tables.py, experiments/paper/ablations.py and the sweep's report print
them beside what they measure.
"""

# (table, set, model, top-1 error %, top-5 error %), docs/paper.md (Results).
PAPER_ROWS = (
    ("Table 1", "ILSVRC-2010 test", "1 CNN, 10 patches", 37.5, 17.0),
    ("Table 1", "ILSVRC-2010 test", "1 CNN, single patch (§4.1)", 39.0, 18.3),
    ("Table 2", "ILSVRC-2012 val", "1 CNN", 40.7, 18.2),
    ("Table 2", "ILSVRC-2012 val", "5 CNNs averaged", 38.1, 16.4),
    ("Table 2", "ILSVRC-2012 val", "1 CNN* (6th conv, pre-trained on Fall 2011)", 39.0, 16.6),
    ("Table 2", "ILSVRC-2012 val", "7 CNNs*", 36.7, 15.4),
    ("reference", "ILSVRC-2012 val", "Caffe bvlc_alexnet, centre crop", 42.9, 19.8),
    ("reference", "ILSVRC-2012 val", "torchvision alexnet", 43.5, 20.9),
)
# The released 2012 code's own results (Computer History Museum release, mirrored on GitHub as
# AlexNet-Source-Code): the closing `logprob: cost, top-1, top-5` note of each run's layer
# parameter file, as fractions there, in percent here. (table, set, run, top-1 %, top-5 %).
_V12, _T10 = "ILSVRC-2012 val", "ILSVRC-2010 test"
CODE_ROWS = (
    ("2012 code", _V12, "#145, epoch 91 (layers/layer-params-145.cfg:182)", 40.66, 18.21),
    ("2012 code", _V12, "#145 continued to epoch 135, multiview (same file:203)", 40.25, 17.99),
    ("2012 code", _V12, "#147 non-overlapping pool, multiview (-147.cfg:174)", 41.06, 18.51),
    ("2012 code", _V12, "#148 no normalization, multiview (-148.cfg:148)", 42.03, 19.36),
    ("2012 code", _T10, "#145-2010, multiview (-145-2010.cfg:178)", 37.47, 17.00),
    ("2012 code", _T10, "#145-2010, centre patch (same file:180)", 39.02, 18.30),
    ("2012 code", _T10, "#145-half, one tower, multiview (-145-half.cfg:100)", 39.17, 18.23),
)

# Top-1 / top-5 error % on ILSVRC-2012 validation, centre crop, from each weights' model card.
MODEL_CARDS = {
    "caffe_npy": ("Caffe bvlc_alexnet model card (57.1% / 80.2% accuracy)", 42.9, 19.8),
    "torchvision": ("torchvision alexnet model card (56.522% / 79.066% accuracy)", 43.478, 20.934),
}

# The paper's claimed change of (top-1, top-5) error in points when a switch of §3-§4 and §7 is
# turned off, and where it says so: {configs/ablations/<name>.py: (top-1, top-5, where)}.
ABLATION_CLAIMS = {
    "no_lrn": ("+1.4", "+1.2", "§3.3"),
    "no_overlap": ("+0.4", "+0.3", "§3.4"),
    "one_tower": ("+1.7", "+1.2", "§3.2"),
    "no_pca": ("> +1", "n/a", "§4.1"),
    "no_dropout": ("'substantial overfitting'", "n/a", "§4.2"),
    "tanh": ("n/a (CIFAR-10: 6x more epochs to 25% train error)", "n/a", "§3.1"),
    "ungrouped": ("not in the paper", "", ""),
    # §7: "removing any of the middle layers results in a loss of about 2% for the top-1".
    "no_conv2": ("about +2", "n/a", "§7"),
    "no_conv3": ("about +2", "n/a", "§7"),
    "no_conv4": ("about +2", "n/a", "§7"),
    "no_conv5": ("about +2", "n/a", "§7"),
    # Table 2: 1 CNN 40.7 / 18.2 -> 1 CNN* 39.0 / 16.6, but 1 CNN* was also pre-trained on the
    # Fall 2011 release: the sign only, for a comparison without pre-training.
    "extra_conv6": ("-1.7 with pre-training (a direction only)", "-1.6", "Table 2"),
}
