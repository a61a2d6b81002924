"""The library imports only itself: no module of alexnet_jax/ reaches configs/, experiments/ or
tests/, at import time or inside a function or a `__main__` block."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "alexnet_jax"
OUTSIDE = ("configs", "experiments", "tests")


def _imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement anywhere in the file's syntax tree."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                found.append((node.lineno, str(node.args[0].value)))
    return found


def test_the_walk_sees_imports_inside_functions_and_main_blocks(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import os\n"
        "def f():\n    from configs import default\n"
        "if __name__ == '__main__':\n    import experiments.common\n"
        "importlib.import_module('tests.helpers')\n"
    )
    assert [m for _, m in _imported_modules(source)] == [
        "os", "configs", "experiments.common", "tests.helpers"
    ]  # fmt: skip


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_library_module_imports_nothing_from_outside_the_package(path):
    outside = [
        f"{path.name}:{line} imports {module}"
        for line, module in _imported_modules(path)
        if module.split(".")[0] in OUTSIDE
    ]
    assert not outside, outside


def test_the_package_alone_imports_from_another_directory(tmp_path):
    # Only alexnet_jax/ copied, run from elsewhere: what an installed package sees. The two
    # command-line modules define the same absl flags, so each gets its own process.
    shutil.copytree(PACKAGE, tmp_path / "alexnet_jax", ignore=shutil.ignore_patterns("__pycache__"))
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    clis = ["main", "summary"]
    groups = [[m for m in modules if m not in clis]] + [[m] for m in clis]
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    for group in groups:
        code = "import importlib\n" + "".join(
            f"importlib.import_module('alexnet_jax.{m}')\n" for m in group
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{group}: {done.stderr[-2000:]}"
