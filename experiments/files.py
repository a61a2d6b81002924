"""The JSON files the experiments write: strict JSON, written whole.

Imports no JAX: the sweep's `status` command (experiments/sweep/folder.py) writes with it too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _finite(data: Any) -> Any:
    """`data` with inf/nan floats as None, so the file is strict JSON."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def write_json(path: str | Path, data: Any, sort_keys: bool = True) -> None:
    """Writes `data` as indented strict JSON (inf/nan become null) to a temporary file renamed
    over `path`: a reader sees all of it or none. The folder is created; `sort_keys=False` keeps
    the data's own order (a sweep's manifest: its runs in the order of the plan)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(_finite(data), f, indent=2, sort_keys=sort_keys)
        f.write("\n")
    os.replace(tmp, path)


def write_report(folder: Path, stem: str, text: str, data: Any) -> None:
    """A measurement's two files, `<stem>.txt` (its text: the command, the machine, the table)
    and `<stem>.json` (`data`, by `write_json`), in `folder`; then the text on stdout."""
    (folder / f"{stem}.txt").write_text(text)
    write_json(folder / f"{stem}.json", data)
    print(text, end="")
