"""The CPU this runs on, read from /proc/cpuinfo, for the records that say where a number was
measured (the features tool's metadata, the benchmarks, the golden test's spread)."""

from __future__ import annotations


def cpu_fields() -> dict[str, str]:
    """{field: its first value} of /proc/cpuinfo ('model name', 'flags', ...: the first
    processor's), or {} where there is no such file (not Linux) or it cannot be read."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    return fields


def cpu_name() -> str:
    """The CPU's model name ('AMD EPYC 9R14 96-Core Processor'), or '' where /proc/cpuinfo has
    none; callers fall back to `platform.processor()` or `platform.machine()`."""
    return cpu_fields().get("model name", "")
