"""Speed and memory measurements: the comparison with PyTorch (benchmark.py, torch_reference.py),
the GPU report and every other benchmark: `python -m experiments.bench.<script>`."""
