"""Every `python -m <module> ...` that README.md, docs/*.md and experiments/README.md show names a
module that exists, and every `--flag` it passes is one that module defines.

No command is run: the flags are read from the modules' syntax trees (argparse's `add_argument`,
absl's `DEFINE_*`), so the check costs no JAX import and no subprocess. A module's flags are its
own and those of the experiments/ modules it imports (e.g. the sweep's `cli.add_base_flags`,
which experiments/paper/ablations.py calls); `--config.<field>` overrides pass where the module
has a `--config` flag.
"""

import ast
import importlib.util
import pathlib
import re

import pytest

from tests.test_imports import _imported_modules

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    ROOT / "experiments" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
PROJECT = ("alexnet_jax", "configs", "experiments", "tests")
# absl's own flags, which every absl command line accepts.
ABSL_FLAGS = {"--helpfull", "--helpshort", "--flagfile", "--logtostderr", "--alsologtostderr",
              "--verbosity", "--v", "--log_dir", "--only_check_args"}  # fmt: skip
_SHELL_ENDS = re.compile(r"\s(?:;|&&|\|\||\||>|2>|<)\s|`|\s#\s|\s#$")


def documented_commands(paths: list[pathlib.Path] = DOCS) -> list[tuple[str, str]]:
    """(where, command) of every `python -m` in the docs: from it to the end of its inline code
    span, or of its line in a code block with the line's `\\` continuations, cut at a shell
    operator or a comment."""
    found = []
    for path in paths:
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            for match in re.finditer(r"python -m ", line):
                text = line[match.start() :]
                j = i
                while text.rstrip().endswith("\\") and j + 1 < len(lines):
                    j += 1
                    text = text.rstrip()[:-1] + " " + lines[j].strip()
                command = _SHELL_ENDS.split(text, maxsplit=1)[0]
                found.append((f"{where}:{i + 1}", " ".join(command.split())))
    return found


def module_file(module: str) -> pathlib.Path | None:
    """The file `python -m module` runs, for a module of this repository."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def _flags_defined(path: pathlib.Path) -> set[str]:
    """The `--flags` an argparse parser or absl defines anywhere in a file."""
    flags = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        strings = [a.value for a in node.args if isinstance(a, ast.Constant)]
        strings = [s for s in strings if isinstance(s, str)]
        if name == "add_argument":
            flags |= {s for s in strings if s.startswith("--")}
        elif name.startswith("DEFINE_") and strings:
            flags.add(f"--{strings[0]}")
            if name in ("DEFINE_bool", "DEFINE_boolean"):
                flags.add(f"--no{strings[0]}")
    return flags


def accepted_flags(path: pathlib.Path) -> set[str]:
    """A command's own flags and those of the experiments/ modules it imports."""
    flags = _flags_defined(path)
    for _, name in _imported_modules(path, with_names=True):
        imported = module_file(name) if name.startswith("experiments.") else None
        if imported is not None and imported.name != "__init__.py":
            flags |= _flags_defined(imported)
    if "absl" in {m.split(".")[0] for _, m in _imported_modules(path)}:
        flags |= ABSL_FLAGS
    return flags


def used_flags(command: str) -> list[str]:
    """The --flag names a command passes (up to a bare `--`, after which another program's
    flags follow)."""
    names = []
    for token in command.split()[3:]:
        if token == "--":
            break
        if token.startswith("--") and len(token) > 2:
            names.append(token.split("=", 1)[0])
    return names


def test_the_docs_show_commands_to_check():
    commands = documented_commands()
    modules = {c.split()[2] for _, c in commands}
    assert len(commands) > 50, commands
    assert {"alexnet_jax.main", "experiments.sweep", "experiments.paper.ablations"} <= modules


def test_the_reader_cuts_commands_and_sees_the_flags_of_helpers(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text(
        "Run `python -m experiments.sweep run D --seeds=3` or `python -m pip install x > log`:\n"
        "    python -m alexnet_jax.main --config=c \\\n"
        "        --workdir=w   # a comment\n"
        "    python -m alexnet_jax.launch --processes=2 -- --config=c\n"
    )
    assert documented_commands([doc]) == [
        ("d.md:1", "python -m experiments.sweep run D --seeds=3"),
        ("d.md:1", "python -m pip install x"),
        ("d.md:2", "python -m alexnet_jax.main --config=c --workdir=w"),
        ("d.md:4", "python -m alexnet_jax.launch --processes=2 -- --config=c"),
    ]
    assert used_flags("python -m alexnet_jax.launch --processes=2 -- --config=c") == ["--processes"]
    ablations = accepted_flags(ROOT / "experiments" / "paper" / "ablations.py")
    assert {"--quick", "--base", "--seeds", "--set"} <= ablations  # --seeds: sweep/cli.py
    assert "--seeds" not in _flags_defined(ROOT / "experiments" / "paper" / "ablations.py")
    assert {"--config", "--workdir", "--helpfull"} <= accepted_flags(
        ROOT / "alexnet_jax" / "main.py"
    )
    assert "--no_such_flag" not in accepted_flags(ROOT / "alexnet_jax" / "main.py")


@pytest.mark.parametrize("where, command", documented_commands(), ids=lambda v: v[:60])
def test_a_documented_command_names_a_module_and_its_flags(where, command):
    module = command.split()[2]
    if module.endswith(".") or "<" in module:  # a pattern such as experiments.paper.<script>
        return
    if module.split(".")[0] not in PROJECT:
        assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
        return
    path = module_file(module)
    assert path is not None, f"{where}: `{command}` names {module}, which does not exist"
    flags = accepted_flags(path)
    unknown = [
        f for f in used_flags(command)
        if f not in flags and not (f.startswith("--config.") and "--config" in flags)
    ]  # fmt: skip
    assert not unknown, f"{where}: `{command}`: {module} defines no {unknown}"
