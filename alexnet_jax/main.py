"""Entry point: trains and evaluates the network a config file describes.

  python -m alexnet_jax.main --config=configs/default.py --workdir=/tmp/digits
  python -m alexnet_jax.main --config=configs/alexnet.py --workdir=/tmp/alexnet \
      --config.data_dir=$HOME/tensorflow_datasets --config.optimizer.learning_rate=0.02

Any config field can be overridden on the command line (`--config.model.lrn=False`); the config
is locked, so a misspelt field is an error. Running the same command again resumes from the
latest checkpoint in --workdir. All the logic is in importable modules (`alexnet_jax.train`).
A refused run (bad config, data or workdir, a full disk, a NaN) ends with one line on stderr;
`--verbosity=1` or ALEXNET_JAX_TRACEBACK=1 shows the traceback too.

On Linux the run restarts itself once with tcmalloc preloaded when the machine has it, else
with glibc's malloc tuned to keep its freed blocks (`--allocator=auto`, alexnet_jax/allocator.py):
with glibc's defaults every XLA execution page-faults its large buffers again, which slows
AlexNet's CPU training step (docs/performance.md).
"""

import os
import sys

from alexnet_jax import allocator

if __name__ == "__main__" and (_asked := allocator.allocator_from_argv(sys.argv[1:])):
    # Before jax loads: a restart from main() would import everything twice (seconds).
    allocator.preload_allocator("alexnet_jax.main", _asked, sys.argv[1:])

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from alexnet_jax import checkpoint, distributed, orbax_quiet, train  # noqa: E402

# Errors this project raises on purpose, each with a message that says what to do: printed as
# one line (exit status 1; 74 for a full disk) unless --verbosity=1 or ALEXNET_JAX_TRACEBACK=1.
TRACEBACK_ENV = "ALEXNET_JAX_TRACEBACK"

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Start JAX's multi-process runtime first (alexnet_jax/distributed.py): one process per "
    "host or per GPU. Coordinator, process count and id from the flags below, else from "
    "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else from SLURM, Open MPI "
    "or Kubernetes.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "--distributed: process 0's host:port (JAX_COORDINATOR_ADDRESS)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "--distributed: processes in the job (JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "--distributed: this process, 0 .. num_processes-1 (JAX_PROCESS_ID)."
)
_BIND = flags.DEFINE_string(
    "coordinator_bind_address",
    None,
    "--distributed: where process 0's coordinator listens (default: the coordinator address "
    "itself, not every interface; JAX_COORDINATOR_BIND_ADDRESS).",
)
_LOCAL_DEVICES = flags.DEFINE_string(
    "local_device_ids",
    "auto",
    "--distributed: accelerators of this process: 'auto' (every GPU the scheduler gave the "
    "task; see alexnet_jax/distributed.py), 'all', or a list such as '0,1'.",
)
_PEER_TIMEOUT = flags.DEFINE_integer(
    "peer_timeout_s",
    60,
    "--distributed: seconds without a heartbeat after which JAX's coordination service "
    "declares a process dead and stops the others (rerun the same command to resume).",
)
_ALLOCATOR = flags.DEFINE_enum(
    "allocator",
    "auto",
    list(allocator.ALLOCATORS),
    "Host memory allocator: 'auto' restarts the run once with tcmalloc preloaded when it is "
    "installed (apt-get install libtcmalloc-minimal4), else with glibc malloc tuned to keep its "
    "freed blocks (GLIBC_TUNABLES, no install); 'tcmalloc' requires tcmalloc, 'glibc_tuned' "
    "always tunes glibc, 'system' keeps glibc malloc as it is.",
)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    orbax_quiet.install()  # Orbax's reports of what the run's one-line errors say already
    if _DISTRIBUTED.value and not os.environ.get(distributed.SUPERVISED_ENV):
        # The training runs in a child; this process reports a dead peer in one line.
        sys.exit(distributed.supervise(sys.argv[1:], _PEER_TIMEOUT.value))
    if os.environ.get(distributed.SUPERVISED_ENV):
        distributed.exit_when_orphaned(distributed.PEER_LOST_EXIT_CODE)
    # Before any device buffer exists; returns unless the process is replaced (it was already
    # restarted at import unless a --flagfile hides the flag's value).
    allocator.preload_allocator("alexnet_jax.main", _ALLOCATOR.value, sys.argv[1:])
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
    if _DISTRIBUTED.value:
        try:
            used = distributed.initialize(
                coordinator_address=_COORDINATOR.value,
                num_processes=_NUM_PROCESSES.value,
                process_id=_PROCESS_ID.value,
                coordinator_bind_address=_BIND.value,
                requested_device_ids=_LOCAL_DEVICES.value,
                peer_timeout_s=_PEER_TIMEOUT.value,
            )
        except ValueError as e:
            raise app.UsageError(f"--distributed: {e}") from None
        logging.warning("jax.distributed: %s", used)
    logging.info(
        "JAX %s: process %d of %d, %d devices (%s)",
        jax.__version__,
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    try:
        result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.DELIBERATE as e:
        if flags.FLAGS.verbosity >= 1 or os.environ.get(TRACEBACK_ENV):
            raise
        # The message names the problem and the fix; the traceback would only bury it.
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # os._exit: the run has closed what it opened; an interpreter shutdown would also print
        # the "Exception ignored" noise of TensorStore reads abandoned by a failed restore.
        os._exit(checkpoint.DISK_FULL_EXIT_CODE if isinstance(e, checkpoint.DiskFullError) else 1)
    if result and jax.process_index() == 0:
        # The validation numbers (eval_*) drove the schedule; test_* were measured once.
        line = (
            f"final eval_top1_error {result['eval_top1_error']:.4f}, "
            f"eval_top5_error {result['eval_top5_error']:.4f}"
        )
        if "test_top1_error" in result:
            line += (
                f"; test_top1_error {result['test_top1_error']:.4f}, "
                f"test_top5_error {result['test_top5_error']:.4f}"
            )
        print(line)


if __name__ == "__main__":
    renamed = train.renamed_field_message(sys.argv[1:])
    if renamed:
        print(f"error: {renamed}", file=sys.stderr)
        sys.exit(1)
    app.run(main)
