"""The paper's figures and tables, its ablations (§3-§4, §7, Table 2), and the transfer and
linear-probe demonstrations: `python -m experiments.paper.<script>` (experiments/README.md)."""
