"""The host memory allocator: restarting a command with tcmalloc, or with glibc tuned.

glibc's malloc returns large freed blocks to the OS (blocks over 32 MiB are mmap'ed and unmapped
on free, and the heap top is trimmed), so every XLA execution page-faults its big buffers in
again. tcmalloc keeps them. Where tcmalloc is not installed (it comes from the system's package
manager, not pip), glibc's own tunables keep them too: no mmap'ed blocks, no trimming, one
arena (`GLIBC_TUNED`). `experiments/bench/allocator_benchmark.py` measures the three against each
other (docs/performance.md). `alexnet_jax.main` and `experiments.bench.benchmark` call
`preload_allocator` first thing, as PyTorch's CPU launcher (`torch.backends.xeon.run_cpu`) does.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import re
import sys
import sysconfig
from collections.abc import Sequence

from alexnet_jax.errors import check_choice

ALLOCATORS = ("auto", "tcmalloc", "glibc_tuned", "system")
# glibc keeps every freed block: none from mmap (so none unmapped), the heap top never trimmed,
# one arena (the others are mmap'ed heaps that glibc shrinks on its own).
GLIBC_TUNED = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=137438953472"
)
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
    if not sys.platform.startswith("linux"):
        return "system"
    if GLIBC_TUNED in os.environ.get("GLIBC_TUNABLES", ""):
        return f"glibc_tuned (glibc malloc, GLIBC_TUNABLES={GLIBC_TUNED})"
    return "system (glibc malloc)"


def allocator_from_argv(argv: Sequence[str]) -> str | None:
    """The allocator a command line asks for (`--allocator=X` or `--allocator X`, 'auto' when
    absent), read before absl parses the flags, so that `alexnet_jax.main` can restart before it
    imports jax. None when the line cannot be read that simply (a `--flagfile`, or a value absl
    will refuse): the caller then decides after parsing, as before."""
    asked = "auto"
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in ("allocator", "flagfile"):
            continue
        if name == "flagfile":
            return None
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        asked = value
    return asked if asked in ALLOCATORS else None


def preload_allocator(module: str, allocator: str = "auto", argv: Sequence[str] = ()) -> None:
    """Re-executes `python -m <module> <argv>` with the allocator asked for, when it is needed.

    Call it before jax or torch is imported: `os.execve` replaces the process, and the allocator
    must be in place before the frameworks allocate anything. Returns only when no re-execution
    is needed: `allocator` is 'system', the allocator asked for is already in use, or the
    process was already re-executed once (a preload that did not take cannot loop).

    Args:
      module: the module to run again (e.g. 'experiments.bench.benchmark').
      allocator: 'auto' (tcmalloc when it is installed, else glibc with `GLIBC_TUNED`),
        'tcmalloc' (required), 'glibc_tuned' or 'system' (glibc as it is, never re-executed).
      argv: the command-line arguments to run it with.

    Raises:
      SystemExit: 'tcmalloc' was asked for and cannot be loaded.
      ValueError: an unknown `allocator`.
    """
    check_choice("allocator", allocator, ALLOCATORS)
    in_use = allocator_in_use()
    if allocator == "system" or in_use.startswith("tcmalloc"):
        return
    if allocator == "glibc_tuned" and in_use.startswith("glibc_tuned"):
        return
    path = find_tcmalloc() if allocator in ("auto", "tcmalloc") else None
    if allocator == "tcmalloc" and (path is None or os.environ.get(_PRELOAD_GUARD)):
        raise SystemExit(
            "--allocator tcmalloc: "
            + ("no libtcmalloc found" if path is None else f"{path} did not load")
            + "; install it (`apt-get install libtcmalloc-minimal4` on Debian/Ubuntu) or "
            "use --allocator glibc_tuned (no install) or system."
        )
    if os.environ.get(_PRELOAD_GUARD) or not sys.platform.startswith("linux"):
        return
    env = dict(os.environ)
    env[_PRELOAD_GUARD] = "1"
    if path is not None:
        env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
        # XLA allocates each execution's temporaries as one block; at batch 128 that passes
        # tcmalloc's 1 GiB "large alloc" report threshold, which would print a line per step.
        env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
        what = f"LD_PRELOAD={env['LD_PRELOAD']}"
    else:
        env["GLIBC_TUNABLES"] = ":".join(
            t for t in (env.get("GLIBC_TUNABLES", ""), GLIBC_TUNED) if t
        )
        what = f"GLIBC_TUNABLES={env['GLIBC_TUNABLES']}"
        what += " (no tcmalloc found)" if allocator == "auto" else ""
    print(f"re-executing with {what}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)
