"""The host memory allocator: finding tcmalloc and restarting a command with it preloaded.

glibc's malloc returns large freed blocks to the OS, so every XLA execution page-faults its big
buffers in again: on a 2-core EPYC VM a 167 MB elementwise op took 55 ms with glibc and 13 ms
with tcmalloc, and AlexNet's training step about twice as long, in JAX and PyTorch alike
(README, Performance). `alexnet_jax.main` and `experiments.benchmark` call `preload_allocator`
first thing, as PyTorch's CPU launcher (`torch.backends.xeon.run_cpu`) does.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import re
import sys
import sysconfig
from collections.abc import Sequence

ALLOCATORS = ("auto", "tcmalloc", "system")
# Set in the environment of the re-executed process, so a preload that fails cannot loop.
_PRELOAD_GUARD = "ALEXNET_JAX_ALLOCATOR_PRELOADED"


def find_tcmalloc() -> str | None:
    """The path of a tcmalloc shared library on this machine, or None.

    Looks for the sonames `ctypes.util.find_library` knows (tcmalloc_minimal first: it lacks only
    the heap profiler) in the usual library directories, then Debian/Ubuntu's paths.
    """
    arch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    dirs = [
        *os.environ.get("LD_LIBRARY_PATH", "").split(":"),
        os.path.join(sys.prefix, "lib"),
        f"/usr/lib/{arch}",
        f"/lib/{arch}",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ]
    names = [ctypes.util.find_library(n) for n in ("tcmalloc_minimal", "tcmalloc")]
    candidates = [os.path.join(d, n) for n in names if n for d in dirs if d]
    candidates += [f"/usr/lib/{arch}/libtcmalloc_minimal.so.4", f"/usr/lib/{arch}/libtcmalloc.so.4"]
    return next((c for c in candidates if os.path.isfile(c)), None)


def allocator_in_use() -> str:
    """'tcmalloc (<path>)' or 'jemalloc (<path>)' when one is mapped into this process, else
    'system (glibc malloc)'."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        maps = ""
    for name in ("tcmalloc", "jemalloc"):
        found = re.search(rf"(/\S*lib{name}\S*\.so\S*)", maps)
        if found:
            return f"{name} ({found.group(1)})"
    return "system (glibc malloc)" if sys.platform.startswith("linux") else "system"


def preload_allocator(module: str, allocator: str = "auto", argv: Sequence[str] = ()) -> None:
    """Re-executes `python -m <module> <argv>` with tcmalloc preloaded, when that is asked for.

    Call it before jax or torch is imported: `os.execve` replaces the process, and the allocator
    must be in place before the frameworks allocate anything. Returns only when no re-execution
    is needed: `allocator` is 'system', tcmalloc is already loaded, or ('auto') none was found.

    Args:
      module: the module to run again (e.g. 'experiments.benchmark').
      allocator: 'auto' (tcmalloc if found), 'tcmalloc' (required) or 'system' (never preload).
      argv: the command-line arguments to run it with.

    Raises:
      SystemExit: 'tcmalloc' was asked for and cannot be loaded.
      ValueError: an unknown `allocator`.
    """
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {ALLOCATORS}, got {allocator!r}.")
    if allocator == "system" or allocator_in_use().startswith("tcmalloc"):
        return
    path = find_tcmalloc()
    if path is None or os.environ.get(_PRELOAD_GUARD):
        if allocator == "tcmalloc":
            raise SystemExit(
                "--allocator tcmalloc: "
                + ("no libtcmalloc found" if path is None else f"{path} did not load")
                + "; install it (`apt-get install libtcmalloc-minimal4` on Debian/Ubuntu) or "
                "use --allocator system."
            )
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    env[_PRELOAD_GUARD] = "1"
    # XLA allocates each execution's temporaries as one block; at batch 128 that passes
    # tcmalloc's 1 GiB "large alloc" report threshold, which would print a line per step.
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    print(f"re-executing with LD_PRELOAD={env['LD_PRELOAD']}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)
