"""Starts N training processes on this machine, as N hosts would run them (loopback).

  python -m alexnet_jax.launch --processes=2 --cpu_devices=2 -- \\
      --config=configs/default.py --workdir=/tmp/two_hosts

Each process runs `python -m alexnet_jax.main --distributed <args after -->` with
JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i, the same
three variables a multi-host launch sets on each host (README, "Several hosts").
`--cpu_devices=K` gives every process K simulated CPU devices (no accelerator needed); without
it the processes see this machine's devices (`--local_device_ids` then says which each uses).
Output lines are prefixed with `[i]`. The launcher exits with 0 when every process did, else
with the first non-zero status; SIGTERM or Ctrl-C is passed on to every process (a preemption:
they agree on a step, save a checkpoint there and exit 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(
    index: int, count: int, port: int, cpu_devices: int | None, base: dict | None = None
) -> dict:
    """The environment of process `index` of `count`."""
    env = dict(os.environ if base is None else base)
    env.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(count),
        JAX_PROCESS_ID=str(index),
    )
    if cpu_devices:
        env["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        env["XLA_FLAGS"] = " ".join(
            [*flags, f"--xla_force_host_platform_device_count={cpu_devices}"]
        )
    return env


def _pump(index: int, stream) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"[{index}] {line}")
        sys.stdout.flush()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cpu_devices", type=int, default=0, help="> 0: simulated CPU devices")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then alexnet_jax.main's flags")
    args = parser.parse_args(argv)
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    if args.processes < 1:
        parser.error("--processes must be >= 1")
    port = args.port or free_port()
    procs, pumps = [], []
    for i in range(args.processes):
        cmd = [sys.executable, "-m", "alexnet_jax.main", "--distributed", *rest]
        proc = subprocess.Popen(
            cmd,
            env=process_env(i, args.processes, port, args.cpu_devices or None),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        print(f"[launch] process {i}: pid {proc.pid}", flush=True)
        pump = threading.Thread(target=_pump, args=(i, proc.stdout), daemon=True)
        pump.start()
        procs.append(proc)
        pumps.append(pump)

    def forward(signum, frame):
        del frame
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    for pump in pumps:
        pump.join(timeout=10)
    print(f"[launch] exit statuses {codes}", flush=True)
    return next((c for c in codes if c != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
