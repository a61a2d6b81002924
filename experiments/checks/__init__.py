"""Fault and multi-host harnesses: kill/resume, multi-host equivalence, hosts lost or preempted:
`python -m experiments.checks.<script>`."""
