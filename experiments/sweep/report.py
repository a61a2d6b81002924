"""`python -m experiments.sweep report DIR`: a sweep's table and figures, from finished runs only.

Per variant, every final metric of its runs (`result.json`: the test split's, measured once at
the end, where the config has one; the last validation otherwise) as mean ± std over seeds, and
its change against the base paired by seed (variant minus base, same seed) with a 95% Student t
interval over the paired differences (n = 1: no interval). The paper's figure stands beside a
variant that is one of its ablations. Runs that are not finished are counted and named, never
averaged in; a finished run whose recorded config (its workdir's config.json) differs from the
manifest is refused by name.

Figures: `learning_curves.png` (training loss and validation top-1 error against epochs, the
mean over seeds with the min-max band, learning-rate drops marked) and `paired_changes.png` (the
paired change of the headline metric with its interval).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from alexnet_jax import metrics as metrics_lib
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.published import ABLATION_CLAIMS
from experiments import common, files
from experiments.sweep import folder, plan


def t_interval(differences: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean of paired differences and its 95% Student t interval; None
    for fewer than two differences."""
    n = len(differences)
    if n < 2:
        return None
    mean = statistics.fmean(differences)
    half = scipy_stats.t.ppf(0.975, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return mean, mean - half, mean + half


def finished_runs(sweep: Path, manifest: dict) -> tuple[dict[str, dict], dict[str, str]]:
    """({run id: its result metrics} of the finished runs, {run id: state} of the others).

    Raises:
      SweepError: a finished run whose recorded config differs from the manifest's.
    """
    done, missing = {}, {}
    for rid, entry in manifest["runs"].items():
        run = folder.run_folder(sweep, rid)
        result = run / common.RESULT_FILE
        if not result.is_file():
            missing[rid] = folder.effective_state(folder.read_status(sweep, rid))
            continue
        recorded = workdir_lib.recorded_config(str(run))
        diff = plan.differences(entry["config"], recorded)
        if diff:
            raise folder.SweepError(
                f"run {rid} in {run} was trained with another config than the sweep's "
                f"manifest ({'; '.join(diff[:3])}); it is not mixed into the report: move it "
                "away and run the sweep again."
            )
        done[rid] = json.loads(result.read_text())["metrics"]
    return done, missing


def headline(metric_names: set[str]) -> str:
    return "test_top1_error" if "test_top1_error" in metric_names else "eval_top1_error"


def summarise(manifest: dict, done: dict[str, dict]) -> dict:
    """{variant: {'seeds', 'metrics': {name: {mean, std, n, values}}, 'paired': {name: {...}}}}."""
    base = manifest["base_variant"]
    by_variant: dict[str, dict[int, dict]] = {}
    for rid, entry in manifest["runs"].items():
        if rid in done:
            by_variant.setdefault(entry["variant"], {})[entry["seed"]] = done[rid]
    out = {}
    for variant in dict.fromkeys(e["variant"] for e in manifest["runs"].values()):
        runs = by_variant.get(variant, {})
        names = sorted({k for m in runs.values() for k, v in m.items()
                        if isinstance(v, (int, float))})  # fmt: skip
        summary = {"seeds": sorted(runs), "metrics": {}, "paired": {}}
        for name in names:
            values = [runs[s][name] for s in sorted(runs) if runs[s].get(name) is not None]
            mean, std = common.mean_std(values) if values else (float("nan"), float("nan"))
            summary["metrics"][name] = {"mean": mean, "std": std, "n": len(values),
                                        "values": values}  # fmt: skip
            if variant == base:
                continue
            base_runs = by_variant.get(base, {})
            pairs = [
                s for s in sorted(runs)
                if s in base_runs and None not in (runs[s].get(name), base_runs[s].get(name))
            ]  # fmt: skip
            diffs = [runs[s][name] - base_runs[s][name] for s in pairs]
            interval = t_interval(diffs)
            summary["paired"][name] = {
                "seeds": pairs,
                "differences": diffs,
                "mean": statistics.fmean(diffs) if diffs else None,
                "ci95": None if interval is None else [interval[1], interval[2]],
            }
        out[variant] = summary
    return out


def paper_claim(manifest: dict, variant: str) -> str:
    """The paper's figure for a variant whose change from the base is one of its ablations
    (configs/ablations/*: the same fields and values, whatever the variant is called), or ''."""
    by_variant = {}
    for entry in manifest["runs"].values():
        by_variant.setdefault(entry["variant"], entry["config"])
    base = by_variant.get(manifest["base_variant"])
    mine = by_variant.get(variant)
    if base is None or mine is None or variant == manifest["base_variant"]:
        return ""
    change = {k: v for k, v in mine.items() if k != "seed" and base.get(k) != v}
    for name in plan.VARIANTS:
        switch = json.loads(json.dumps(plan.switch(name)))  # tuples as lists, as recorded
        if switch == change:
            claim = ABLATION_CLAIMS[name]
            return f"{name}: {claim[0]} ({claim[2]})"
    return ""


def _percent(name: str) -> bool:
    return name.endswith("error")


def _fmt_change(paired: dict, name: str) -> str:
    scale = 100 if _percent(name) else 1
    if not paired["differences"]:
        return "no paired seed"
    mean = scale * paired["mean"]
    if paired["ci95"] is None:
        return f"{mean:+.2f} (n = 1: no interval)"
    low, high = (scale * v for v in paired["ci95"])
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] (n = {len(paired['differences'])})"


def table(manifest: dict, summary: dict) -> str:
    names = sorted({n for s in summary.values() for n in s["metrics"]})
    head = headline(set(names))
    shown = [n for n in names if n.endswith(("top1_error", "top5_error"))] or names
    rows = []
    base = manifest["base_variant"]
    for variant, s in summary.items():
        overrides = ", ".join(manifest["variants"].get(variant, [])) or "-"
        cells = []
        for name in shown:
            m = s["metrics"].get(name)
            if not m or not m["n"]:
                cells.append("no finished run")
                continue
            scale = 100 if _percent(name) else 1
            cells.append(f"{scale * m['mean']:.2f} ± {scale * m['std']:.2f}")
        change = "(base)" if variant == base else (
            _fmt_change(s["paired"][head], head) if head in s["paired"] else "no finished run"
        )
        paper = paper_claim(manifest, variant)
        rows.append([variant, f"`{overrides}`", len(s["seeds"]), *cells, change, paper])
    header = [
        "variant", "change", "seeds", *[f"{n} (%)" if _percent(n) else n for n in shown],
        f"{head} change vs {base}, points [95% t interval]", "paper (top-1 change)",
    ]  # fmt: skip
    return common.markdown_table(header, rows)


def _curves(sweep: Path, manifest: dict, done: dict) -> dict[str, list[dict]]:
    """{variant: [the events of each finished seed]}."""
    out: dict[str, list] = {}
    for rid, entry in manifest["runs"].items():
        if rid in done:
            events = metrics_lib.read_metrics(str(folder.run_folder(sweep, rid)))
            out.setdefault(entry["variant"], []).append(events)
    return out


def _band(runs: list[list[dict]], key: str):
    """(epochs, mean, min, max) of `key` over seeds at the steps every seed logged."""
    per_run = []
    for events in runs:
        train = [e for e in events if "train_loss" in e]
        per_step = train[-1]["epoch"] / train[-1]["step"] if train else None
        per_run.append({e["step"]: (e[key], e.get("epoch") or (e["step"] * per_step))
                        for e in events if key in e and per_step})  # fmt: skip
    steps = sorted(set.intersection(*(set(r) for r in per_run))) if per_run else []
    if not steps:
        return None
    values = np.array([[r[s][0] for s in steps] for r in per_run], dtype=float)
    epochs = [per_run[0][s][1] for s in steps]
    return epochs, values.mean(0), values.min(0), values.max(0)


def _drops(runs: list[list[dict]]) -> list[float]:
    """Epochs at which the logged learning rate fell, in any seed."""
    epochs = set()
    for events in runs:
        train = [e for e in events if "learning_rate" in e]
        for a, b in zip(train, train[1:]):
            if b["learning_rate"] < a["learning_rate"] * (1 - 1e-6):
                epochs.add(round(b["epoch"], 4))
    return sorted(epochs)


def figures(sweep: Path, manifest: dict, done: dict, summary: dict, out: Path) -> list[Path]:
    plt = common.plt()
    curves = _curves(sweep, manifest, done)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (variant, runs) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for ax, key, scale in ((axes[0], "train_loss", 1), (axes[1], "eval_top1_error", 100)):
            band = _band(runs, key)
            if band is None:
                continue
            epochs, mean, low, high = band
            ax.plot(epochs, scale * mean, "o-", markersize=3, color=color,
                    label=f"{variant} (n={len(runs)})")  # fmt: skip
            ax.fill_between(epochs, scale * low, scale * high, color=color, alpha=0.2)
        for epoch in _drops(runs):
            for ax in axes:
                ax.axvline(epoch, color=color, linestyle=":", linewidth=1)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss (mean, min-max)")
    axes[1].set(xlabel="epoch", ylabel="validation top-1 error (%)",
                title="validation top-1 error (mean, min-max)")  # fmt: skip
    axes[0].legend(fontsize=8)
    fig.text(0.01, 0.01, "dotted: a learning-rate drop", fontsize=8)
    fig.tight_layout()
    curves_path = out / "learning_curves.png"
    fig.savefig(curves_path, dpi=110)
    plt.close(fig)

    names = {n for s in summary.values() for n in s["metrics"]}
    head = headline(names)
    base = manifest["base_variant"]
    variants = [v for v in summary if v != base and summary[v]["paired"].get(head, {}).get(
        "differences")]  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(variants) + 2), 4.5))
    for i, variant in enumerate(variants):
        paired = summary[variant]["paired"][head]
        mean = 100 * paired["mean"]
        ax.bar(i, mean, color=f"C{(i + 1) % 10}")
        if paired["ci95"] is not None:
            low, high = (100 * v for v in paired["ci95"])
            ax.errorbar(i, mean, yerr=[[mean - low], [high - mean]], color="black", capsize=6)
        else:
            ax.annotate("n = 1: no interval", (i, mean), ha="center", fontsize=8)
        ax.scatter([i] * len(paired["differences"]), [100 * d for d in paired["differences"]],
                   color="black", s=12, zorder=3)  # fmt: skip
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(range(len(variants)), variants, rotation=20)
    ax.set(ylabel=f"{head} change vs {base} (points)",
           title="paired change: mean, 95% t interval, seeds")  # fmt: skip
    fig.tight_layout()
    changes_path = out / "paired_changes.png"
    fig.savefig(changes_path, dpi=110)
    plt.close(fig)
    return [curves_path, changes_path]


def report(sweep: Path, out: Path | None = None) -> dict:
    sweep = Path(sweep).resolve()
    manifest = folder.read_manifest(sweep)
    done, missing = finished_runs(sweep, manifest)
    if not done:
        raise folder.SweepError(f"{sweep}: no finished run to report yet ({len(missing)} "
                                   "not finished); see `status`.")  # fmt: skip
    out = Path(out) if out else sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(manifest, done)
    text = table(manifest, summary)
    paths = figures(sweep, manifest, done, summary, out)
    missing_text = (
        "Not finished, left out: " + ", ".join(f"{r} ({s})" for r, s in missing.items()) + "."
        if missing
        else "Every run finished."
    )
    any_config = next(iter(manifest["runs"].values()))["config"]
    measured = (
        f"Base `{manifest['base']}` ({any_config.get('model.name')}) on "
        f"{any_config.get('dataset')}, budget {manifest['budget']}, seeds "
        f"{list(range(manifest['seeds']))}; {len(done)} of {len(manifest['runs'])} runs "
        f"finished. Errors in %, changes in points (variant minus base, same seed); the "
        f"interval is the 95% Student t interval over the paired differences. Machine: "
        f"{common.machine()}."
    )
    figures_md = "\n".join(f"![{p.stem}]({p.name})" for p in paths)
    (out / "results.md").write_text(
        f"# Sweep {sweep.name}\n\n{measured}\n\n{text}\n\n{missing_text}\n\n{figures_md}\n"
    )
    data = {"sweep": str(sweep), "base": manifest["base"], "base_variant":
            manifest["base_variant"], "variants": manifest["variants"], "seeds":
            manifest["seeds"], "finished": sorted(done), "missing": missing,
            "summary": summary, "machine": common.machine()}  # fmt: skip
    files.write_json(out / "results.json", data)
    print(f"{text}\n\n{missing_text}\nwritten to {out}")
    return data
