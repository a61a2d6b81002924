"""The library imports only itself: no module of alexnet_jax/ reaches configs/, experiments/ or
tests/, at import time or inside a function or a `__main__` block. And no import circle: no
module of alexnet_jax/ or experiments/ imports, through any chain, a module that imports it."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "alexnet_jax"
OUTSIDE = ("configs", "experiments", "tests")


def _imported_modules(path: pathlib.Path, with_names: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import statement anywhere in the file's syntax tree; with
    `with_names`, `from a import b` also gives 'a.b' (b may be a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module or ""))
            if with_names:
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
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


@pytest.mark.slow
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


def _module_name(path: pathlib.Path) -> str:
    """'experiments.sweep.folder' of experiments/sweep/folder.py ('experiments.sweep' of its
    __init__.py)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(folders: list[str]) -> dict[str, set[str]]:
    """{module: the modules of `folders` it imports, anywhere in its file (inside functions and
    `__main__` blocks too)}."""
    files = {
        _module_name(p): p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))
    }
    return {
        name: {m for _, m in _imported_modules(path, with_names=True) if m in files and m != name}
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of `graph` as [a, b, ..., a], or [] when there is none."""
    done, path, on_path = set(), [], set()

    def visit(node: str) -> list[str]:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        on_path.discard(path.pop())
        done.add(node)
        return []

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"z", "x"}, "z": set()}) == ["x", "y", "x"]
    assert find_cycle({"p": {"q"}, "q": {"r"}, "r": {"q"}}) == ["q", "r", "q"]


def test_the_graph_sees_submodules_imported_by_name(tmp_path):
    graph = import_graph(["experiments"])
    assert "experiments.sweep.folder" in graph["experiments.sweep.plan"]  # from ... import name
    assert "experiments.sweep.launch" in graph["experiments.sweep.cli"]  # inside a function
    assert "experiments.common" in graph["experiments.paper.ablations"]


def test_no_import_circle_in_the_library_or_the_experiments():
    graph = import_graph(["alexnet_jax", "experiments"])
    assert find_cycle(graph) == []
