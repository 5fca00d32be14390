"""The paper's comparison (Tables 2-3) and ablation (Tables 4-5) on any prepared dataset.

:func:`run_benchmark` trains and tests each chosen model for seeds 0..K-1 through the one
training path (:func:`dmfnet.training.trainer.train`): the same seed gives every model the
same split and the same test flows, since a test flow is dropped as a duplicate for all
models when the union of all benchmarked models' inputs equals a training flow's. Each
finished (model, seed) pair is appended to ``results.csv`` at once, so an interrupted
benchmark resumes where it stopped. :func:`write_tables` turns ``results.csv`` into
``tables.md``, ``tables_*.csv`` and a macro-F1 bar chart; it can be run on its own.

Spread is the sample standard deviation over seeds (``ddof=1``); with one seed only the
mean is shown. :func:`paired_differences` compares each model with DMF seed by seed
(paired t interval, wins/ties/losses) for the "Paired comparison with DMF" section.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmfnet.outputs import BENCHMARK, open_output
from dmfnet.training import defaults

DEFAULT_MODELS = (
    "dmf",
    "dmf-paper",
    "dmf-no-lengths",
    "dmf-no-bytes",
    "dmf-late",
    "cnn1d",
    "xgboost",
    "acid",
    "appnet",
    "mimetic",
)
METRIC_COLUMNS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "fpr_macro",
    "f1_macro",
    "train_seconds",
    "infer_flows_per_s",
)
# Test flows of the run and duplicate test flows dropped; absent from older results.csv
# files, which still read (NaN).
SIZE_COLUMNS = ("test_size", "duplicates_removed")
RESULT_COLUMNS = ("model", "seed", *METRIC_COLUMNS, *SIZE_COLUMNS)
_REQUIRED_COLUMNS = ("model", "seed", *METRIC_COLUMNS)
# The paper's column order (Accuracy, Recall, FPR, Precision), then macro-F1.
TABLE_METRICS = (
    ("accuracy", "Accuracy"),
    ("recall_macro", "Recall"),
    ("fpr_macro", "FPR"),
    ("precision_macro", "Precision"),
    ("f1_macro", "F1"),
)
LOWER_IS_BETTER = frozenset({"fpr_macro"})
# Tables 2-3: rows grouped as in the paper, with the paper's model names.
COMPARISON_LAYOUT = (
    ("Non-multimodal", (("cnn1d", "1D CNN"), ("xgboost", "XGBoost"), ("acid", "ACID"))),
    ("Multimodal", (("appnet", "AppNet"), ("mimetic", "MIMETIC"),
                    ("dmf-paper", "DMF (paper's configuration)"), ("dmf", "DMF"))),
)
# Tables 4-5.
ABLATION_LAYOUT = (
    ("dmf-no-lengths", "w/o Packet length sequence"),
    ("dmf-no-bytes", "w/o Raw byte"),
    ("dmf-late", "w/o Multi-scale fusion"),
    ("dmf", "DMF"),
)
# Settings that must match for results in one report folder to be comparable.
_SETTINGS_FILE = "benchmark.json"
_COMPARABLE = ("dataset", "split", "keep_duplicates", "duplicate_inputs", "epochs",
               "batch_size", "lr", "weight_decay", "patience", "schedule", "ema",
               "model_config", "classes_kept")  # fmt: skip
# Paired comparison: a per-seed difference below this many percentage points is a tie.
PAIRED_TIE_PP = 0.05
SHARED_DUPLICATE_RULE = (
    "a test flow is dropped for all models when all benchmarked models' inputs together "
    "equal a training flow's"
)

_SPLIT_TEXT = {
    "random": "random 8:1:1, stratified by class (the paper's protocol); seed k gives split k",
    "file": "by capture file (no capture contributes flows to two of train/val/test); "
    "seed k gives split k",
}


# ----------------------------------------------------------------------------- results.csv


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``results.csv`` (numbers as float, seed as int); a later row for the same
    (model, seed) replaces an earlier one. ``test_size`` and ``duplicates_removed`` are NaN
    in files written before they were recorded."""
    path = Path(path)
    if not path.exists():
        return []
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} is not a benchmark results file: missing {', '.join(missing)}"
            )
        for line, raw in enumerate(reader, start=2):
            try:
                row: dict[str, Any] = {"model": raw["model"], "seed": int(raw["seed"])}
                for c in RESULT_COLUMNS[2:]:
                    value = raw.get(c)
                    row[c] = float(value) if value not in ("", None) else math.nan
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {line}: unreadable row ({exc})") from None
            rows[(row["model"], row["seed"])] = row
    return list(rows.values())


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else value


def _upgrade_header(path: Path) -> None:
    """Rewrite a results.csv of an older layout (fewer columns) with today's header, the
    new columns left empty, so that appended rows line up with the header."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) == RESULT_COLUMNS:
            return
        missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} is not a benchmark results file: missing {', '.join(missing)}"
            )
        old = list(reader)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(RESULT_COLUMNS)
        writer.writerows([[raw.get(c) or "" for c in RESULT_COLUMNS] for raw in old])
    tmp.replace(path)


def append_result(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one (model, seed) row, writing the header first if the file is new (and
    upgrading the header of an older file first). ``test_size`` and
    ``duplicates_removed`` may be missing from ``row`` (written empty)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        _upgrade_header(path)
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(RESULT_COLUMNS)
        writer.writerow([_csv_value(row.get(c) if c in SIZE_COLUMNS else row[c])
                         for c in RESULT_COLUMNS])  # fmt: skip
        fh.flush()


# ----------------------------------------------------------------------------- tables


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: ``seeds`` and, per result column, ``(mean, std)`` (std NaN for one seed)."""
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(str(r["model"]), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for model, rs in by_model.items():
        s: dict[str, Any] = {"seeds": sorted(int(r["seed"]) for r in rs)}
        for c in METRIC_COLUMNS:
            values = np.array([float(r[c]) for r in rs], dtype=np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            s[c] = (float(values.mean()), std)
        out[model] = s
    return out


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _registry_group(model: str) -> str | None:
    try:
        from dmfnet.models import get_entry

        return get_entry(model).group
    except Exception:  # unknown model or registry not importable: keep it in the full table
        return None


def comparison_rows(models: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(group, model, display name)`` rows of Tables 2-3 for the models that have results;
    models outside the paper's list join their registry group after the paper's."""
    present = set(models)
    rows = []
    known = {m for _, entries in COMPARISON_LAYOUT for m, _ in entries} | {
        m for m, _ in ABLATION_LAYOUT
    }
    for group, entries in COMPARISON_LAYOUT:
        rows += [(group, m, name) for m, name in entries if m in present]
        extra = [m for m in models if m not in known and _registry_group(m) == group.lower()]
        rows += [(group, m, m) for m in extra]
    return rows


def ablation_rows(models: Sequence[str]) -> list[tuple[str, str]]:
    """``(model, display name)`` rows of Tables 4-5 for the models that have results."""
    present = set(models)
    known = {m for m, _ in ABLATION_LAYOUT}
    extra = [(m, m) for m in models if m not in known and _registry_group(m) == "ablation"]
    rows = [(m, name) for m, name in ABLATION_LAYOUT[:-1] if m in present] + extra
    if rows and "dmf" in present:
        rows.append(ABLATION_LAYOUT[-1])
    return rows


def _best(summary: Mapping[str, Mapping[str, Any]], models: Sequence[str]) -> dict[str, float]:
    best = {}
    for key, _ in TABLE_METRICS:
        means = [summary[m][key][0] for m in models if not math.isnan(summary[m][key][0])]
        if means:
            best[key] = min(means) if key in LOWER_IS_BETTER else max(means)
    return best


def _markdown_table(
    summary: Mapping[str, Mapping[str, Any]], rows: Sequence[tuple[str, str, str]], grouped: bool
) -> str:
    models = [m for _, m, _ in rows]
    best = _best(summary, models)
    head = (["Type"] if grouped else []) + ["Model"] + [label for _, label in TABLE_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (1 if grouped else 0) + "---|"]
    lines[1] += "---:|" * len(TABLE_METRICS)
    last_group = None
    for group, model, name in rows:
        cells = []
        for key, _ in TABLE_METRICS:
            mean, std = summary[model][key]
            text = _cell(mean, std)
            # Bold the best mean; with several seeds this says nothing about significance.
            if (
                len(models) > 1
                and key in best
                and round(100 * mean, 2) == round(100 * best[key], 2)
            ):
                text = f"**{text}**"
            cells.append(text)
        first = []
        if grouped:
            first = [group if group != last_group else ""]
            last_group = group
        lines.append("| " + " | ".join(first + [name] + cells) + " |")
    return "\n".join(lines)


def _write_table_csv(
    path: Path, summary: Mapping[str, Mapping[str, Any]], rows: Sequence[tuple[str, str, str]]
) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        head = ["group", "model", "name", "runs"]
        for key, _ in TABLE_METRICS:
            head += [f"{key}_mean", f"{key}_std"]
        head += ["train_seconds_mean", "infer_flows_per_s_mean"]
        writer.writerow(head)
        for group, model, name in rows:
            s = summary[model]
            out: list[Any] = [group, model, name, len(s["seeds"])]
            for key, _ in TABLE_METRICS:
                mean, std = s[key]
                out += [f"{100 * mean:.4f}", "" if math.isnan(std) else f"{100 * std:.4f}"]
            out += [f"{s['train_seconds'][0]:.2f}", f"{s['infer_flows_per_s'][0]:.0f}"]
            writer.writerow(out)


def _cost_table(summary: Mapping[str, Mapping[str, Any]], models: Sequence[str]) -> str:
    lines = [
        "| Model | Runs | Training time (s) | Inference (flows/s) |",
        "|---|---:|---:|---:|",
    ]
    for m in models:
        s = summary[m]
        t_mean, t_std = s["train_seconds"]
        i_mean, _ = s["infer_flows_per_s"]
        spread = "" if math.isnan(t_std) else f" ± {t_std:,.0f}"
        lines.append(f"| {m} | {len(s['seeds'])} | {t_mean:,.0f}{spread} | {i_mean:,.0f} |")
    return "\n".join(lines)


def paired_differences(
    rows: Sequence[Mapping[str, Any]],
    reference: str = "dmf",
    metric: str = "f1_macro",
    tie_pp: float = PAIRED_TIE_PP,
) -> list[dict[str, Any]]:
    """Each model against ``reference`` over the seeds both have, in percentage points.

    Per shared seed the difference is ``100 * (model - reference)`` of ``metric`` (runs of
    one seed share the split and, in a benchmark, the test flows). Per model (in the order
    of ``rows``, models sharing no seed with ``reference`` left out) returns ``model``,
    ``seeds`` (the shared seeds), ``n``, ``differences_pp``, ``mean_pp``, the 95 % paired t
    interval ``ci_low_pp``/``ci_high_pp`` (mean ± t(0.975, n-1) · s / sqrt(n), s the sample
    std of the differences; NaN with one seed), ``wins``/``ties``/``losses`` of the model
    (a tie: |difference| < ``tie_pp``; for a lower-is-better metric such as FPR a win is a
    lower value) and ``verdict``: "DMF better" (the reference's name for another reference)
    when the whole interval favours the reference, "model better" when it favours the
    model, "no clear difference" otherwise, "n/a (one seed)" without an interval. Empty
    when ``reference`` has no results.
    """
    from scipy import stats

    values: dict[str, dict[int, float]] = {}
    for r in rows:
        v = float(r[metric])
        if not math.isnan(v):
            values.setdefault(str(r["model"]), {})[int(r["seed"])] = v
    ref = values.get(reference)
    if not ref:
        return []
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # sign * difference > 0: model better
    ref_better = "DMF better" if reference == "dmf" else f"{reference} better"
    out = []
    for model, by_seed in values.items():
        seeds = sorted(set(by_seed) & set(ref))
        if model == reference or not seeds:
            continue
        diffs = np.array([100.0 * (by_seed[k] - ref[k]) for k in seeds], dtype=np.float64)
        n = len(diffs)
        mean = float(diffs.mean())
        if n > 1:
            half = float(stats.t.ppf(0.975, n - 1) * diffs.std(ddof=1) / math.sqrt(n))
            low, high = mean - half, mean + half
            favour = sorted((sign * low, sign * high))  # the interval, > 0 favouring the model
            if favour[1] < 0:
                verdict = ref_better
            elif favour[0] > 0:
                verdict = "model better"
            else:
                verdict = "no clear difference"
        else:
            low = high = math.nan
            verdict = "n/a (one seed)"
        tie = np.abs(diffs) < tie_pp
        wins = int(((sign * diffs) > 0)[~tie].sum())
        ties = int(tie.sum())
        out.append({
            "model": model,
            "reference": reference,
            "metric": metric,
            "seeds": seeds,
            "n": n,
            "differences_pp": [float(d) for d in diffs],
            "mean_pp": mean,
            "ci_low_pp": low,
            "ci_high_pp": high,
            "wins": wins,
            "ties": ties,
            "losses": n - wins - ties,
            "verdict": verdict,
        })  # fmt: skip
    return out


def _pp(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"


def _paired_table(paired: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| Model | Shared seeds | Mean difference (pp) | 95 % CI (pp) | Wins / ties / losses "
        "| Verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for p in paired:
        ci = (
            "n/a"
            if math.isnan(p["ci_low_pp"])
            else f"[{_pp(p['ci_low_pp'])}, {_pp(p['ci_high_pp'])}]"
        )
        lines.append(
            f"| {p['model']} | {p['n']} | {_pp(p['mean_pp'])} | {ci} | "
            f"{p['wins']} / {p['ties']} / {p['losses']} | {p['verdict']} |"
        )
    return "\n".join(lines)


def _write_paired_csv(path: Path, paired: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "reference", "metric", "shared_seeds", "seeds", "mean_diff_pp",
                         "ci_low_pp", "ci_high_pp", "wins", "ties", "losses", "verdict"])  # fmt: skip
        for p in paired:
            number = [
                "" if math.isnan(p[k]) else f"{p[k]:.4f}"
                for k in ("mean_pp", "ci_low_pp", "ci_high_pp")
            ]
            writer.writerow([p["model"], p["reference"], p["metric"], p["n"],
                             " ".join(map(str, p["seeds"])), *number, p["wins"], p["ties"],
                             p["losses"], p["verdict"]])  # fmt: skip


def _per_seed(rows: Sequence[Mapping[str, Any]], key: str) -> str | None:
    """'0: 315, 1: 312' for ``key`` per seed; says so when models of one seed differ."""
    by_seed: dict[int, dict[str, int]] = {}
    for r in rows:
        value = r.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        by_seed.setdefault(int(r["seed"]), {})[str(r["model"])] = int(value)
    if not by_seed:
        return None
    parts, differ = [], []
    for seed in sorted(by_seed):
        counts = by_seed[seed]
        lo, hi = min(counts.values()), max(counts.values())
        parts.append(f"{seed}: {lo:,}" if lo == hi else f"{seed}: {lo:,}-{hi:,}")
        if lo != hi:
            differ.append(f"seed {seed}: " + ", ".join(f"{m} {c:,}" for m, c in counts.items()))
    text = ", ".join(parts)
    if differ:
        text += " — models of one seed differ (" + "; ".join(differ) + ")"
    return text


def _header_lines(
    info: Mapping[str, Any],
    summary: Mapping[str, Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    lines = []
    if info.get("dataset"):
        text = str(info["dataset"])
        extra = [
            f"{info[k]:,} {label}"
            for k, label in (("flows", "flows"), ("classes", "classes"))
            if isinstance(info.get(k), int)
        ]
        lines.append(f"- **Dataset:** {text}" + (f" ({', '.join(extra)})" if extra else ""))
    if info.get("split"):
        lines.append(f"- **Split protocol:** {_SPLIT_TEXT.get(str(info['split']), info['split'])}")
    if "keep_duplicates" in info:
        if info["keep_duplicates"]:
            dup = "kept: test flows identical to a training flow stay in the test set (the paper's protocol)"
        elif info.get("duplicate_inputs"):
            dup = (
                f"removed for all models alike: {SHARED_DUPLICATE_RULE} (compared on "
                f"{', '.join(info['duplicate_inputs'])}); a flow that duplicates a training "
                "flow in one model's inputs only stays in every model's test set"
            )
        else:
            dup = "removed: test flows whose model inputs equal a training flow's are dropped"
            if info.get("duplicates_removed") is not None:
                dup += f" ({info['duplicates_removed']} per run; which flows count depends on "
                dup += "each model's inputs)"
        lines.append(f"- **Duplicate test flows:** {dup}")
    sizes = _per_seed(rows, "test_size")
    if sizes:
        lines.append(f"- **Test flows per seed:** {sizes}")
    dropped = _per_seed(rows, "duplicates_removed")
    if dropped and not info.get("keep_duplicates"):
        lines.append(f"- **Duplicate test flows dropped per seed:** {dropped}")
    seed_sets = {tuple(s["seeds"]) for s in summary.values()}
    if len(seed_sets) == 1:
        seeds = next(iter(seed_sets))
        lines.append(
            f"- **Seeds:** {', '.join(map(str, seeds))} — mean ± sample std over {len(seeds)} runs, in %"
            if len(seeds) > 1
            else f"- **Seeds:** {seeds[0]} — one run per model, no spread, in %"
        )
    elif seed_sets:
        lines.append(
            "- **Seeds:** differ between models (runs per model in the cost table) — "
            "mean ± sample std, in %"
        )
    skip = {
        "dataset",
        "flows",
        "classes",
        "split",
        "keep_duplicates",
        "duplicate_inputs",
        "duplicates_removed",
        "seeds",
    }
    for key, value in info.items():
        if key in skip or value is None or isinstance(value, Mapping | list | tuple):
            continue
        lines.append(f"- **{key.replace('_', ' ').capitalize()}:** {value}")
    return lines


def plot_f1_bars(
    summary: Mapping[str, Mapping[str, Any]],
    bars: Sequence[tuple[str, str, str]],
    path: str | Path,
    title: str = "",
) -> None:
    """Macro-F1 per model (mean, error bar = std over seeds), coloured by table group."""
    from dmfnet.training.report import plt

    colours = {
        "Non-multimodal": "#8da0cb",
        "Multimodal": "#66c2a5",
        "Ablation": "#fc8d62",
        "DMF": "#d62728",
    }
    names = [name for _, _, name in bars]
    means = np.array([100 * summary[m]["f1_macro"][0] for _, m, _ in bars])
    stds = np.array([100 * summary[m]["f1_macro"][1] for _, m, _ in bars])
    errs = np.where(np.isnan(stds), 0.0, stds)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(bars) + 2), 4.6), dpi=120)
    x = np.arange(len(bars))
    ax.bar(
        x,
        means,
        yerr=errs,
        capsize=4,
        color=[colours["DMF"] if m == "dmf" else colours.get(g, "#b3b3b3") for g, m, _ in bars],
        edgecolor="#333333",
        linewidth=0.6,
        error_kw={"elinewidth": 1, "ecolor": "#222222"},
    )
    for xi, mean, err in zip(x, means, errs, strict=True):
        ax.text(xi, mean + err + 0.3, f"{mean:.1f}", ha="center", va="bottom", fontsize=8)
    low = float(np.nanmin(means - errs)) if len(means) else 0.0
    floor = max(0.0, 10 * math.floor((low - 5) / 10))
    ax.set_ylim(floor, min(100.0, float(np.nanmax(means + errs)) + 4) if len(means) else 100)
    ax.set_xticks(x, labels=names, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylabel("macro-F1 (%)" + (f" (axis starts at {floor:.0f})" if floor > 0 else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    groups = [
        g
        for g in ("Non-multimodal", "Multimodal", "Ablation")
        if any(b[0] == g and b[1] != "dmf" for b in bars)
    ]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in groups]
    if any(m == "dmf" for _, m, _ in bars):
        handles.append(plt.Rectangle((0, 0), 1, 1, color=colours["DMF"]))
        groups.append("DMF")
    ax.legend(handles, groups, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title, fontsize=11)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def write_tables(
    results_csv: str | Path, out_dir: str | Path, info: Mapping[str, Any]
) -> dict[str, Path]:
    """Write tables.md, tables_comparison.csv, tables_ablation.csv, tables_all.csv,
    tables_paired.csv (when ``dmf`` has results) and f1_macro.png into ``out_dir`` from
    ``results_csv``; returns the paths written.

    ``info`` holds what the header states: ``dataset`` (and optionally ``flows``,
    ``classes``), ``split``, ``keep_duplicates``, ``duplicate_inputs`` (the columns the
    benchmark compared to drop duplicate test flows; read from the ``benchmark.json`` beside
    ``results_csv`` when not given), plus any other flat settings. The test flows and
    duplicates dropped per seed come from ``results.csv`` itself.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_results(results_csv)
    if not rows:
        raise ValueError(f"{results_csv} holds no results yet")
    if "duplicate_inputs" not in info:
        try:
            saved = json.loads((Path(results_csv).parent / _SETTINGS_FILE).read_text("utf-8"))
            if saved.get("duplicate_inputs"):
                info = {**info, "duplicate_inputs": saved["duplicate_inputs"]}
        except (OSError, ValueError, AttributeError):
            pass
    summary = summarise(rows)
    models = list(summary)
    comparison = comparison_rows(models)
    ablation = [("Ablation", m, name) for m, name in ablation_rows(models)]
    everything = [("", m, m) for m in models]

    written: dict[str, Path] = {}
    parts = ["# Benchmark", ""]
    parts += _header_lines(info, summary, rows)
    parts.append("")
    if comparison:
        parts += ["## Model comparison (layout of the paper's Tables 2-3)", ""]
        parts += [_markdown_table(summary, comparison, grouped=True), ""]
        written["comparison"] = out_dir / "tables_comparison.csv"
        _write_table_csv(written["comparison"], summary, comparison)
    if ablation:
        parts += ["## Ablation (layout of the paper's Tables 4-5)", ""]
        parts += [_markdown_table(summary, ablation, grouped=False), ""]
        written["ablation"] = out_dir / "tables_ablation.csv"
        _write_table_csv(written["ablation"], summary, ablation)
    parts += [
        "Accuracy, macro recall, macro FPR (one-vs-rest FP / (FP + TN)), macro precision and "
        "macro-F1 on each run's test flows. Bold: best mean in the column (lowest for FPR).",
        "",
        "![macro-F1 per model](f1_macro.png)",
        "",
    ]
    paired = paired_differences(rows, reference="dmf", metric="f1_macro")
    if paired:
        if info.get("keep_duplicates") or info.get("duplicate_inputs"):
            same = "trained on the same split and scored on the same test flows"
        else:  # older reports dropped duplicates by each model's own inputs
            same = "trained on the same split"
        parts += [
            "## Paired comparison with DMF",
            "",
            f"Per seed, each model and DMF are {same}; the difference is model − DMF in "
            "macro-F1, in percentage points (pp). "
            "95 % CI: paired t over the seeds both have (mean ± t(0.975, n−1) · s / √n, s the "
            "sample std of the differences); n/a with one shared seed. Wins / ties / losses: "
            f"seeds where the model is above DMF / less than {PAIRED_TIE_PP} pp from it (a "
            "tie) / below it. "
            "Verdict: DMF better when the whole interval is below 0, model better when it is "
            "above 0, no clear difference otherwise.",
            "",
            _paired_table(paired),
            "",
        ]
        written["paired"] = out_dir / "tables_paired.csv"
        _write_paired_csv(written["paired"], paired)
    parts += [
        "## Cost per run",
        "",
        _cost_table(summary, models),
        "",
    ]
    written["all"] = out_dir / "tables_all.csv"
    _write_table_csv(written["all"], summary, everything)

    bars = comparison + [b for b in ablation if b[1] != "dmf" or not comparison]
    if not bars:
        bars = everything
    written["plot"] = out_dir / "f1_macro.png"
    dataset = Path(str(info.get("dataset", ""))).name
    plot_f1_bars(summary, bars, written["plot"], title=f"Macro-F1 on {dataset}" if dataset else "")
    written["markdown"] = out_dir / "tables.md"
    written["markdown"].write_text("\n".join(parts), encoding="utf-8")
    return written


# ----------------------------------------------------------------------------- running


def _check_settings(report_dir: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to mix results of different datasets or protocols in one report folder."""
    path = report_dir / _SETTINGS_FILE
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is corrupt: {exc}") from None
        differ = [
            f"{k}: {previous.get(k)!r} before, {settings.get(k)!r} now"
            for k in _COMPARABLE
            if previous.get(k) != settings.get(k)
        ]
        if differ:
            older = (
                " (results of the older rule that dropped duplicate test flows by each model's "
                "own inputs)"
                if "duplicate_inputs" not in previous and not previous.get("keep_duplicates")
                else ""
            )
            raise ValueError(
                f"{report_dir} holds results of another configuration ({'; '.join(differ)})"
                f"{older}; use a new report folder"
            )
    path.write_text(json.dumps(dict(settings), indent=2, default=str), encoding="utf-8")


def _finished_run(run_dir: Path, model: str, seed: int, settings: Mapping[str, Any]) -> dict | None:
    """Metrics of a run that finished but whose row never reached results.csv (killed between)."""
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    same = (
        info.get("model") == model
        and info.get("seed") == seed
        and info.get("split") == settings["split"]
        and bool(info.get("keep_duplicates")) == bool(settings["keep_duplicates"])
        and info.get("duplicate_inputs") == settings.get("duplicate_inputs")
    )
    if same and all(c in metrics for c in METRIC_COLUMNS):
        return metrics
    return None


def shared_duplicate_inputs(
    models: Sequence[str], model_config: Mapping[str, Mapping[str, Any]] | None = None
) -> list[str]:
    """The union of the inputs of ``models`` (with their configuration overrides), sorted:
    the columns compared to drop duplicate test flows for every model of a benchmark alike."""
    from dmfnet.models import model_inputs

    config = model_config or {}
    return sorted({c for m in models for c in model_inputs(m, dict(config.get(m) or {}))})


def _dataset_facts(dataset: Any) -> dict[str, Any]:
    """Flow and class counts for the tables' header, when the dataset can tell them."""
    facts: dict[str, Any] = {}
    try:
        if isinstance(dataset, (str, Path)):
            from dmfnet.data import load_dataset

            ds = load_dataset(dataset, columns=[])
        else:
            ds = dataset
        facts["flows"] = int(len(ds.y))
        facts["classes"] = int(len(ds.classes))
    except Exception:  # the header then names the dataset only
        pass
    return facts


def run_benchmark(
    dataset: Any,
    report_dir: str | Path,
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    seeds: int = 5,
    split: str = "random",
    keep_duplicates: bool = False,
    epochs: int = defaults.EPOCHS,
    batch_size: int | None = None,  # None: the trainer's auto_batch_size
    lr: float = defaults.LR,
    weight_decay: float = defaults.WEIGHT_DECAY,
    patience: int = defaults.PATIENCE,
    schedule: str = defaults.SCHEDULE,
    ema: float = defaults.EMA,
    device: str | None = None,
    model_config: Mapping[str, Mapping[str, Any]] | None = None,
    complexity: bool = True,
    complexity_batch: int = 256,
    progress: bool = True,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    min_class_flows: int = 0,
    drop_classes: Sequence[str] = (),
    force: bool = False,
) -> dict[str, Any]:
    """Train and test ``models`` for seeds ``0..seeds-1`` and write the report folder.

    Writes ``runs/<model>/seed<k>/`` (each a full run folder), ``results.csv`` (one row per
    finished pair, appended at once), ``tables.md`` + ``tables_*.csv`` + ``f1_macro.png``
    and, with ``complexity``, ``complexity.md``. Pairs already in ``results.csv`` are not
    trained again. A pair that fails is reported and skipped (a rerun retries it).
    ``model_config`` maps a model name to its config overrides. Returns ``trained``,
    ``skipped`` and ``failed`` lists of (model, seed) and the paths written.

    Unless ``keep_duplicates``, every run gets ``duplicate_inputs`` =
    :func:`shared_duplicate_inputs` of ``models``: a test flow is dropped for all models
    when all benchmarked models' inputs together equal a training flow's, so the models of
    one seed are scored on the same test flows (paired comparison). The columns are part of
    the report folder's settings: a folder with results under another rule is refused.

    ``report_dir`` follows :mod:`dmfnet.outputs`: a report folder is resumed, another
    non-empty folder is written into only with ``force``, and one inside the dataset is
    refused. A benchmark that fails before any result removes the folder it made; a run
    of the report that did not finish is trained again from scratch.
    """
    if train_fn is None:
        from dmfnet.training.trainer import train as train_fn
    from dmfnet.models import get_entry

    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    models = list(dict.fromkeys(models))
    if not models:
        raise ValueError("no models chosen")
    for m in models:
        get_entry(m)  # unknown names fail here, before any training
    report_dir = Path(report_dir)
    source = dataset if isinstance(dataset, (str, Path)) else getattr(dataset, "path", None)
    with open_output(report_dir, BENCHMARK, force=force, inputs=[source or None]):
        dataset_name = (
            str(Path(dataset).resolve())
            if isinstance(dataset, (str, Path))
            else str(getattr(dataset, "path", "") or "(in memory)")
        )
        model_config = {k: dict(v) for k, v in (model_config or {}).items()}
        if min_class_flows or drop_classes:  # filter once: every run sees the same classes
            from dmfnet.data import load_dataset
            from dmfnet.training.trainer import select_classes

            loaded = load_dataset(dataset) if isinstance(dataset, (str, Path)) else dataset
            dataset = select_classes(
                loaded, min_class_flows=min_class_flows, drop_classes=drop_classes
            )
        duplicate_inputs = (
            None if keep_duplicates else shared_duplicate_inputs(models, model_config)
        )
        settings = {
            "dataset": dataset_name,
            "split": split,
            "keep_duplicates": bool(keep_duplicates),
            "duplicate_inputs": duplicate_inputs,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "patience": patience,
            "schedule": schedule,
            "ema": ema,
            "model_config": model_config,
        }
        if min_class_flows or drop_classes:  # absent otherwise: older reports still resume
            settings["classes_kept"] = {
                "min_class_flows": min_class_flows,
                "drop_classes": sorted(drop_classes),
            }
        _check_settings(report_dir, settings)
        results_csv = report_dir / "results.csv"
        done = {(r["model"], r["seed"]) for r in read_results(results_csv)}

        trained, skipped, failed = [], [], []
        todo = [(seed, m) for seed in range(seeds) for m in models]
        for i, (seed, model) in enumerate(todo, start=1):
            if (model, seed) in done:
                skipped.append((model, seed))
                continue
            run_dir = report_dir / "runs" / model / f"seed{seed}"
            metrics = _finished_run(run_dir, model, seed, settings)
            if metrics is None:
                if run_dir.exists():  # this report's run, unfinished or of other settings
                    shutil.rmtree(run_dir)
                if progress:
                    print(f"[{i}/{len(todo)}] {model}, seed {seed}", flush=True)
                try:
                    metrics = train_fn(
                        dataset,
                        run_dir,
                        model=model,
                        seed=seed,
                        split=split,
                        keep_duplicates=keep_duplicates,
                        epochs=epochs,
                        batch_size=batch_size,
                        lr=lr,
                        weight_decay=weight_decay,
                        patience=patience,
                        schedule=schedule,
                        ema=ema,
                        device=device,
                        model_config=model_config.get(model),
                        duplicate_inputs=duplicate_inputs,
                        progress=progress,
                    )
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:
                    failed.append((model, seed, f"{type(exc).__name__}: {exc}"))
                    with open(report_dir / "failures.log", "a", encoding="utf-8") as fh:
                        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                                 f"{model} seed {seed}: {type(exc).__name__}: {exc}\n")  # fmt: skip
                    if progress:
                        print(f"  {model}, seed {seed} failed: {exc}", flush=True)
                    continue
            row = {"model": model, "seed": seed, **{c: metrics[c] for c in METRIC_COLUMNS},
                   **{c: metrics.get(c) for c in SIZE_COLUMNS}}  # fmt: skip
            append_result(results_csv, row)
            trained.append((model, seed))
            if progress:
                print(
                    f"  {model}, seed {seed}: accuracy {100 * row['accuracy']:.2f} %, "
                    f"macro-F1 {100 * row['f1_macro']:.2f} %, {row['train_seconds']:.0f} s",
                    flush=True,
                )

        info = {"dataset": dataset_name, **_dataset_facts(dataset), "split": split,
                "keep_duplicates": bool(keep_duplicates), "duplicate_inputs": duplicate_inputs,
                "epochs (max)": epochs, "early stopping patience": patience,
                "learning rate schedule": schedule, "weight average (EMA decay)": ema or "off"}  # fmt: skip
        if min_class_flows:
            info["classes kept"] = f"at least {min_class_flows} flows"
        if drop_classes:
            info["classes left out"] = ", ".join(sorted(drop_classes))
        written = write_tables(results_csv, report_dir, info) if results_csv.exists() else {}
        if complexity:
            written["complexity"] = write_complexity_report(
                report_dir,
                models,
                num_classes=info.get("classes"),
                batch_size=complexity_batch,
                progress=progress,
            )
        return {"trained": trained, "skipped": skipped, "failed": failed, "written": written}


def write_complexity_report(
    report_dir: str | Path,
    models: Sequence[str],
    *,
    num_classes: int | None = None,
    batch_size: int = 256,
    isolated: bool = True,
    progress: bool = True,
) -> Path:
    """Measure each model's cost (:mod:`dmfnet.training.complexity`) into complexity.md.

    When ``runs/<model>/seed0`` exists in ``report_dir``, its configuration (torch models)
    or its trained trees (estimators, whose size depends on training) are measured;
    otherwise a freshly built model with the default configuration.
    """
    from dmfnet.training.complexity import measure, measure_isolated, write_complexity

    report_dir = Path(report_dir)
    results = []
    for m in models:
        run = report_dir / "runs" / m / "seed0"
        has_run = (run / "run.json").exists()
        if not has_run and num_classes is None:
            raise ValueError(
                f"no trained run of {m} in {report_dir} and the number of classes is unknown"
            )
        if has_run:
            k = len(json.loads((run / "run.json").read_text(encoding="utf-8"))["classes"])
        else:
            k = int(num_classes or 2)
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "run_dir": str(run) if has_run else None,
        }
        if progress:
            print(f"complexity: {m}", flush=True)
        fn = measure_isolated if isolated else measure
        results.append(fn(m, k, **kwargs))
    path = report_dir / "complexity.md"
    write_complexity(results, path)
    with open(report_dir / "complexity.json", "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    return path
