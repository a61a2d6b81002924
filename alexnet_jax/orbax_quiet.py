"""Orbax's and TensorStore's reports that a run's own one-line messages already say, kept off
stderr: the command lines (`main`, `evaluate`, `features`) call `install()` once; importing the
library changes no logger and no hook.

What is dropped, and only that:
- absl log records of a full disk (Orbax's writer threads log a long traceback;
  `checkpoint.DiskFullError`'s one line names the bytes needed and free, and what is intact);
- Orbax's warning that an item's folder has no step-level metadata file (only the step folder
  has one), which reading one item's tree metadata (`Checkpointer.restore`) provokes;
- after a failed restore or save, the errors of Orbax's other reads that nobody retrieves
  ('Task exception was never retrieved', 'Event loop is closed'), reported by asyncio, by
  Python's unraisable-exception hook, by threads, and by TensorStore's C++ threads through
  `sys.excepthook`.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time


class _DropDiskFullReports(logging.Filter):
    """Orbax's writer threads log a full disk with a long traceback; `DiskFullError`'s one line
    says it instead (with the bytes needed and free, and what is intact)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg) + (str(record.exc_info[1]) if record.exc_info else "")
        return not ("RESOURCE_EXHAUSTED" in text or "No space left" in text)


class _DropStepMetadataWarning(logging.Filter):
    """Reading one item's tree metadata (`Checkpointer.restore`) makes Orbax warn that the
    item's folder has no step-level metadata file, which only the step folder has."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Metadata file does not exist")


class _DropAbandonedReads(logging.Filter):
    """asyncio's 'Task exception was never retrieved' for the other arrays' reads of a
    checkpoint whose restore already failed (reported in `restore_latest`'s one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("_read_array_index_and_device_put" in text or "async_deserialize" in text)


def _is_closed_loop_error(value: BaseException | None) -> bool:
    return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)


def install() -> None:
    """Adds the log filters and wraps Python's unraisable-exception, thread and exception hooks
    so that they drop the reports above (and pass every other one on). Once per process: a
    second call does nothing."""
    if getattr(sys.unraisablehook, "_alexnet_jax", False):
        return
    logging.getLogger("absl").addFilter(_DropDiskFullReports())
    logging.getLogger("absl").addFilter(_DropStepMetadataWarning())
    logging.getLogger("asyncio").addFilter(_DropAbandonedReads())
    previous = sys.unraisablehook

    def hook(unraisable):
        text = repr(unraisable.object) + str(unraisable.exc_value)
        if "_read_array_index_and_device_put" in text or "Event loop is closed" in text:
            return
        previous(unraisable)

    hook._alexnet_jax = True
    sys.unraisablehook = hook
    previous_thread_hook = threading.excepthook

    def thread_hook(args):
        if "Event loop is closed" not in str(args.exc_value):
            previous_thread_hook(args)

    threading.excepthook = thread_hook
    # TensorStore reports an exception raised by a Python callback on one of its own C++
    # threads with PyErr_Print, i.e. sys.excepthook: the abandoned reads' callbacks then
    # hit asyncio's closed loop. Only those, and only off the main thread, are dropped.
    previous_excepthook = sys.excepthook

    def excepthook(kind, value, tb):
        if not (
            _is_closed_loop_error(value)
            and threading.current_thread() is not threading.main_thread()
        ):
            previous_excepthook(kind, value, tb)

    sys.excepthook = excepthook


def collect_abandoned_reads() -> None:
    """After a failed restore or save, Orbax's other coroutines, tasks and threads end with
    errors nobody retrieves, which Python and asyncio report on stderr (pages of TensorStore
    specs) when they are collected: collects them now, with stderr closed. (`install()` drops
    the reports of those collected later.)"""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            for _ in range(3):
                gc.collect()
                time.sleep(0.1)
            sys.stderr.flush()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
