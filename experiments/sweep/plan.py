"""The runs of a sweep: its variants (--variant, --grid, and the ablation files of
configs/ablations/, each read for the one change it makes to the paper config), its base config,
and each (variant, seed)'s full config. experiments/paper/ablations.py plans the paper's
ablations with the same pieces.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import itertools
import re
from pathlib import Path
from typing import Any

from alexnet_jax import workdir as workdir_lib
from configs import alexnet as alexnet_config
from configs import default as default_config
from experiments import common
from experiments.sweep.folder import SweepError, run_id

# The ablation files of configs/ablations/ that `--ablations all` runs.
VARIANTS = (
    "no_lrn", "no_overlap", "one_tower", "no_pca", "no_dropout", "tanh", "no_conv2", "no_conv3",
    "no_conv4", "no_conv5", "extra_conv6",
)  # fmt: skip
BASES = {"cifar": default_config, "alexnet": alexnet_config}


def _field(config: Any, key: str) -> Any:
    """The value of a flat field 'model.lrn' in a ConfigDict, as the config holds it."""
    return functools.reduce(lambda section, part: section[part], key.split("."), config)


def switch(name: str) -> dict[str, Any]:
    """The fields configs/ablations/<name>.py changes in the paper config, and their values (as
    the config holds them: a tuple stays a tuple)."""
    ablated = importlib.import_module(f"configs.ablations.{name}").get_config()
    paper = workdir_lib.flat_config(alexnet_config.get_config())
    changed = workdir_lib.flat_config(ablated)
    return {k: _field(ablated, k) for k, v in changed.items() if paper.get(k) != v}


def load_base(base: str) -> Any:
    """The ConfigDict of a base: 'cifar', 'alexnet' or the path of a config file."""
    if base in BASES:
        return BASES[base].get_config()
    path = Path(base)
    if not path.is_file() and (common.ROOT / base).is_file():
        path = common.ROOT / base
    if not path.is_file():
        raise SystemExit(f"--base={base}: not 'cifar', 'alexnet' or a config file.")
    spec = importlib.util.spec_from_file_location(f"_ablation_base_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_set(config: Any, assignments: list[str]) -> dict[str, Any]:
    """{'optimizer.plateau_patience': 1, ...} of --set KEY=VALUE, typed as the field is."""
    fields, out = workdir_lib.flat_config(config), {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {assignment}: not KEY=VALUE of a field of the base config.")
        old = _field(config, key)  # a tuple field is a tuple here, not JSON's list
        try:
            if isinstance(old, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            elif isinstance(old, int):
                value = ast.literal_eval(text)
                if not isinstance(value, int):
                    raise ValueError(f"{text!r} is not an integer")
            elif isinstance(old, float):
                value = float(ast.literal_eval(text))
            elif isinstance(old, str):
                value = text
            else:  # tuples, lists, None
                value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise SystemExit(f"--set {assignment}: {key} is {type(old).__name__} ({e}).") from e
        out[key] = value
    return out


def base_config(
    base: str, dataset: str | None, data_dir: str, overrides: dict, scale_schedule: bool = False
) -> Any:
    """The base config with the dataset, budget, cadences and --set overrides applied; with
    `scale_schedule`, its epoch-keyed settings scaled by the new num_epochs / the base's."""
    config = load_base(base)
    recipe_epochs = config.num_epochs
    if dataset:
        common.use_dataset(config, dataset)
    if data_dir:
        config.data_dir = data_dir
    config.update_from_flattened_dict(overrides)
    if scale_schedule:
        common.scale_epochs(config, config.num_epochs / recipe_epochs)
    source = common.input_pipeline.create_source(config, config.train_split)
    config.model.num_classes = source.num_classes
    config.progress_bar = False
    return config


def _split_assignments(text: str) -> list[str]:
    """'a.b=1,c=(1, 2)' -> ['a.b=1', 'c=(1, 2)']: commas split only before the next KEY=."""
    return [part for part in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", text) if part]


def parse_variants(specs: list[str], grids: list[str], ablations: str) -> dict[str, list[str]]:
    """{name: ['KEY=VALUE', ...]} of --variant, --grid and --ablations (unparsed values)."""
    variants: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, assignments = spec.partition(":")
        if not sep or not name or not re.fullmatch(r"[\w.+=-]+", name):
            raise SweepError(
                f"--variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE...] with a NAME of "
                "letters, digits and _.+=-"
            )
        variants[name] = _split_assignments(assignments)
    if grids:
        axes = []
        for grid in grids:
            key, sep, values = grid.partition("=")
            if not sep or not values:
                raise SweepError(f"--grid {grid!r}: expected KEY=V1,V2,...")
            axes.append([(key, v) for v in values.split(",")])
        for combination in itertools.product(*axes):
            name = "+".join(f"{key.split('.')[-1]}={value}" for key, value in combination)
            variants[name] = [f"{key}={value}" for key, value in combination]
    if ablations:
        names = VARIANTS if ablations == "all" else ablations.split(",")
        for name in names:
            try:
                changes = switch(name)
            except ModuleNotFoundError:
                raise SweepError(f"--ablations: no configs/ablations/{name}.py") from None
            variants[name] = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                              for k, v in changes.items()]  # fmt: skip
    return variants


def plan(base_config: Any, base_variant: str, variants: dict[str, dict], seeds: int) -> dict:
    """{run id: {'variant', 'seed', 'config': the run's flat config}} of the base and each
    variant (its overrides applied after the budget, then the seed)."""
    runs = {}
    for name, overrides in {base_variant: {}, **variants}.items():
        for seed in range(seeds):
            config = base_config.copy_and_resolve_references()
            config.update_from_flattened_dict({**overrides, "seed": seed})
            runs[run_id(name, seed)] = {
                "variant": name,
                "seed": seed,
                "config": workdir_lib.flat_config(config),
            }
    return runs


def differences(old: dict, new: dict) -> list[str]:
    """The fields of two flat configs that make them other experiments, one line each."""
    ignore = workdir_lib.MAY_CHANGE_ON_RESUME + common.NOT_COMPARED
    return [
        f"{k}: {a!r} there, {b!r} now"
        for k, (a, b) in workdir_lib.config_differences(old, new, ignore).items()
    ]


def refuse_another_sweep(manifest: dict, runs: dict, sweep: Path) -> None:
    """SweepError with one line if the folder's manifest plans other runs than `runs`."""
    old = manifest["runs"]
    if set(old) != set(runs):
        gone, new = sorted(set(old) - set(runs)), sorted(set(runs) - set(old))
        raise SweepError(
            f"{sweep} holds another sweep (runs only there: {gone[:4]}, only now: {new[:4]}); "
            "use another folder, or `run DIR` alone to continue the one there."
        )
    for rid in old:
        diff = differences(old[rid]["config"], runs[rid]["config"])
        if diff:
            raise SweepError(
                f"{sweep} holds another sweep (run {rid}: {'; '.join(diff[:3])}); use another "
                "folder, or `run DIR` alone to continue the one there."
            )


def cadences(args: argparse.Namespace) -> dict[str, int | None]:
    """The config's cadence fields as `cli.add_base_flags` sets them (None: the base's)."""
    return {
        "eval_every_steps": args.eval_every,
        "checkpoint_every_steps": args.checkpoint_every,
        "log_every_steps": args.log_every,
    }
