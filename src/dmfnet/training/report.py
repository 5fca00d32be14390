"""A run's human-readable report: report.md, the confusion matrix (CSV + PNG), the training curve.

The report says what was trained on what and under which protocol before it shows a
single number: in traffic classification the split and the duplicate handling move the
scores more than most model changes do.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dmfnet.training.metrics import METRIC_NAMES, best_history_index  # noqa: E402

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "precision_macro": "Precision (macro)",
    "recall_macro": "Recall (macro)",
    "fpr_macro": "FPR (macro)",
    "f1_macro": "F1 (macro)",
}

# Run facts shown at the top of report.md, in this order, with these labels; any other
# key of ``info`` is listed after them.
_INFO_LABELS = {
    "model": "Model",
    "dataset": "Dataset",
    "split": "Split protocol",
    "seed": "Seed",
    "keep_duplicates": "Duplicate test flows kept",
    "duplicates_removed": "Duplicate test flows removed",
    "train_size": "Training flows",
    "val_size": "Validation flows",
    "test_size": "Test flows",
    "training": "Training",
    "epochs": "Epochs (max)",
    "best_epoch": "Best epoch",
    "batch_size": "Batch size",
    "learning_rate": "Learning rate",
    "train_seconds": "Training time (s)",
    "infer_flows_per_s": "Inference (flows/s)",
    "device": "Device",
}

# Above this many classes the confusion figure shows the classes most involved in errors.
MAX_FIGURE_CLASSES = 30
LABEL_CHARS = 32  # class names longer than this are cut on the figure's axes
ABSENT_NAMES_SHOWN = 10  # classes with no test flows named in the per-class summary line

_SPLIT_DESCRIPTIONS = {
    "random": "random 8:1:1, stratified by class (the paper's protocol)",
    "file": "by capture file (no capture contributes flows to two of train/val/test)",
}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """The five headline metrics as a two-column Markdown table, in percent."""
    lines = ["| Metric | Value |", "|---|---:|"]
    for key in METRIC_NAMES:
        if key in metrics:
            lines.append(f"| {METRIC_LABELS[key]} | {100 * float(metrics[key]):.2f} % |")
    return "\n".join(lines)


def per_class_table(metrics: Mapping[str, Any]) -> str:
    """Per-class precision, recall, F1, FPR (percent) and support as a Markdown table.

    Classes without test flows have no row (their recall means nothing): one line after
    the table names them, with the test flows predicted as them.
    """
    lines = [
        "| Class | Precision | Recall | F1 | FPR | Support |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    absent = []
    for name, row in metrics["per_class"].items():
        if not row["support"]:
            absent.append(name)
            continue
        lines.append(
            f"| {name} | {100 * row['precision']:.2f} | {100 * row['recall']:.2f} | "
            f"{100 * row['f1']:.2f} | {100 * row['fpr']:.2f} | {row['support']:,} |"
        )
    if absent:
        lines += ["", _absent_line(metrics, absent)]
    return "\n".join(lines)


def _absent_line(metrics: Mapping[str, Any], absent: Sequence[str]) -> str:
    """One line for the classes with no test flows: how many, which, and predicted how often."""
    shown = ", ".join(absent[:ABSENT_NAMES_SHOWN])
    if len(absent) > ABSENT_NAMES_SHOWN:
        shown += f" and {len(absent) - ABSENT_NAMES_SHOWN:,} more"
    line = f"{len(absent):,} class(es) with no test flows, not listed: {shown}"
    names = list(metrics["per_class"])
    if "confusion" in metrics:
        cm = np.asarray(metrics["confusion"], dtype=np.int64)
        if cm.shape == (len(names), len(names)):
            index = [names.index(n) for n in absent]
            predicted = int(cm[:, index].sum())
            line += f" ({predicted:,} test flows predicted as one of them)"
    return line + "."


def write_confusion_csv(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path
) -> None:
    """Confusion counts with a header row of predicted classes and a first column of true ones."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion, strict=True):
            writer.writerow([name, *(int(v) for v in row)])


def confusion_focus(
    confusion: Sequence[Sequence[int]], limit: int = MAX_FIGURE_CLASSES
) -> np.ndarray:
    """Indices (in class order) of the at most ``limit`` classes a confusion figure shows:
    those most involved in errors (wrong predictions of the class plus wrong predictions
    as the class), then the largest by test flows. All classes when there are ``limit``
    or fewer."""
    cm = np.asarray(confusion, dtype=np.int64)
    k = cm.shape[0]
    if k <= limit:
        return np.arange(k)
    off = cm - np.diag(np.diag(cm))
    errors = off.sum(axis=1) + off.sum(axis=0)
    support = cm.sum(axis=1)
    order = np.lexsort((np.arange(k), -support, -errors))  # most errors, then most flows
    return np.sort(order[:limit])


def plot_confusion(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = ""
) -> str:
    """Row-normalised heatmap (colour = share of the true class) with the counts written in.

    The figure grows with the number of classes so that 20-40 class names stay readable;
    zero cells are left blank so the errors stand out. Above :data:`MAX_FIGURE_CLASSES`
    classes it shows the classes most involved in errors (:func:`confusion_focus`), with
    a last column counting their flows predicted as any class not shown, so the image
    stays readable and bounded (about 2,500 px a side); the returned note says so ("" when
    every class is shown).
    """
    full = np.asarray(confusion, dtype=np.int64)
    keep = confusion_focus(full)
    note = ""
    support = full.sum(axis=1, keepdims=True)[keep]
    cm = full[np.ix_(keep, keep)]
    class_names = [str(class_names[i]) for i in keep]
    rows = list(class_names)
    columns = list(class_names)
    if len(keep) < full.shape[0]:
        note = (
            f"The figure shows the {len(keep)} of {full.shape[0]:,} classes most involved "
            "in errors; the last column counts their test flows predicted as any other class. "
            "Every count is in confusion.csv."
        )
        cm = np.concatenate([cm, support - cm.sum(axis=1, keepdims=True)], axis=1)
        columns.append("(other classes)")
    k = cm.shape[0]
    share = np.divide(cm, support, out=np.zeros(cm.shape, dtype=np.float64), where=support > 0)
    rows = [_short(n) for n in rows]
    columns = [_short(n) for n in columns]

    longest = max((len(n) for n in rows + columns), default=1)
    cell = 0.6 if k <= 12 else 0.5 if k <= 30 else 0.4
    side = max(4.5, k * cell)
    margin = min(4.0, 0.9 + 0.075 * longest)
    fig, ax = plt.subplots(figsize=(side + margin + 1.6, side + margin + 0.6), dpi=120)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")

    ylabels = [f"{name} ({int(s):,})" for name, s in zip(rows, support[:, 0], strict=True)]
    kx = cm.shape[1]
    ax.set_xticks(range(kx), labels=columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=ylabels)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class (test flows)")
    if note:
        title = f"{title} ({len(keep)} of {full.shape[0]:,} classes: most errors)".lstrip()
    if title:
        ax.set_title(title, fontsize=11, pad=10)

    text_size = 9 if k <= 10 else 7.5 if k <= 20 else 6.5 if k <= 30 else 5.5 if k <= 40 else 0
    if text_size:
        for i in range(k):
            for j in range(kx):
                if cm[i, j] == 0:
                    continue
                colour = "white" if share[i, j] > 0.55 else "#1a1a1a"
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:,}",
                    ha="center",
                    va="center",
                    fontsize=text_size,
                    color=colour,
                )
    # Thin grid lines between cells help follow long rows.
    ax.set_xticks(np.arange(-0.5, kx, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("share of the true class")
    fig.savefig(path, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return note


def _short(name: str, width: int = LABEL_CHARS) -> str:
    """A class name cut to ``width`` characters for a figure's axis, in the middle: names
    of one family often differ only at the end."""
    if len(name) <= width:
        return name
    tail = (width - 1) // 3
    return name[: width - 1 - tail] + "\u2026" + name[-tail:]


def plot_training_curve(history: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> bool:
    """Loss (train, validation) and validation accuracy / macro-F1 per epoch, best epoch marked.

    Returns False (and writes nothing) when the history has no epochs, e.g. for tree models.
    """
    if not history:
        return False

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if h.get(key) is None else float(h[key]) for h in history])

    epochs = np.array([int(h.get("epoch", i + 1)) for i, h in enumerate(history)])
    train_loss, val_loss = column("train_loss"), column("val_loss")
    val_acc, val_f1 = column("val_accuracy"), column("val_f1_macro")

    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    marker = "o" if len(epochs) <= 40 else None
    if np.isfinite(train_loss).any():
        ax_loss.plot(epochs, train_loss, marker=marker, ms=3, label="train", color="#1f77b4")
    if np.isfinite(val_loss).any():
        ax_loss.plot(epochs, val_loss, marker=marker, ms=3, label="validation", color="#ff7f0e")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Loss")
    if np.isfinite(val_f1).any():
        ax_score.plot(
            epochs, 100 * val_f1, marker=marker, ms=3, label="val macro-F1", color="#2ca02c"
        )
    if np.isfinite(val_acc).any():
        ax_score.plot(
            epochs,
            100 * val_acc,
            marker=marker,
            ms=3,
            label="val accuracy",
            color="#9467bd",
            alpha=0.8,
        )
    ax_score.set_xlabel("epoch")
    ax_score.set_ylabel("%")
    ax_score.set_title("Validation")
    best = best_history_index(history)
    if best is not None:
        for ax in (ax_loss, ax_score):
            ax.axvline(epochs[best], color="grey", linestyle="--", linewidth=1)
        ax_score.annotate(
            f"best: epoch {epochs[best]}, F1 {100 * val_f1[best]:.2f} %",
            xy=(epochs[best], 100 * val_f1[best]),
            xytext=(0.98, 0.04),
            textcoords="axes fraction",
            ha="right",
            fontsize=9,
            color="#333333",
        )
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_early_curve(early: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> None:
    """Macro-F1 and accuracy against the packets known when a flow is decided."""
    packets = [int(e["packets"]) for e in early]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(packets, [100 * e["f1_macro"] for e in early], marker="o", label="macro-F1")
    ax.plot(packets, [100 * e["accuracy"] for e in early], marker="s", label="accuracy",
            alpha=0.8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(packets)
    ax.set_xticklabels([str(k) for k in packets])
    ax.set_xlabel("first packets known (decide after K)")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(title or "Early decisions", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def early_section(early: Sequence[Mapping[str, Any]], decide_after: int) -> list[str]:
    """The report lines of an evaluation on flows cut to their first packets."""
    lines = [
        "## Early decisions",
        "",
        f"Scored above: each flow as its first {decide_after} packets show it (later packets "
        "unknown, as for a flow decided in a stream after K packets). The same flows, "
        "decided after K packets:",
        "",
        "| K packets | macro-F1 % | accuracy % |",
        "|---:|---:|---:|",
    ]
    lines += [
        f"| {e['packets']} | {100 * e['f1_macro']:.2f} | {100 * e['accuracy']:.2f} |"
        for e in early
    ]
    return [*lines, "", "![early decisions](early_decisions.png)", ""]


def _info_lines(info: Mapping[str, Any]) -> list[str]:
    lines = []
    keys = [k for k in _INFO_LABELS if k in info] + [k for k in info if k not in _INFO_LABELS]
    for key in keys:
        value = info[key]
        if value is None or isinstance(value, Mapping | list | tuple):
            continue  # nested configuration lives in the run's config file, not here
        label = _INFO_LABELS.get(key, key.replace("_", " "))
        text = _fmt(value)
        if key == "split":
            text = _SPLIT_DESCRIPTIONS.get(str(value), text)
        lines.append(f"- **{label}:** {text}")
    return lines


def write_run_report(
    run_dir: str | Path,
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    info: Mapping[str, Any],
    extra: Sequence[str] = (),
) -> None:
    """Write report.md, confusion.csv, confusion.png and training_curve.png into ``run_dir``.

    ``extra``: more report lines, appended (e.g. :func:`early_section`).

    ``metrics`` is :func:`~dmfnet.training.metrics.classification_metrics` output;
    ``history`` one dict per epoch (``epoch, train_loss, val_loss, val_accuracy,
    val_f1_macro``; empty for models trained without epochs); ``info`` the run's facts
    (model, dataset, split, seed, duplicates removed, split sizes, timings, ...).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in class_names]
    confusion = metrics["confusion"]
    model = info.get("model", "model")
    dataset = info.get("dataset", "")

    write_confusion_csv(confusion, names, run_dir / "confusion.csv")
    title = f"{model} on {Path(str(dataset)).name}" if dataset else str(model)
    note = plot_confusion(
        confusion, names, run_dir / "confusion.png", title=f"{title} - test confusion"
    )
    has_curve = plot_training_curve(history, run_dir / "training_curve.png", title=title)

    parts = [f"# {model}: test report", ""]
    parts += _info_lines(info)
    parts += ["", "## Test metrics", "", metrics_table(metrics), ""]
    if "num_flows" in metrics:
        parts.append(
            f"Macro averages over the {metrics.get('classes_in_test', len(names))} classes present "
            f"in the {metrics['num_flows']:,} test flows; FPR is one-vs-rest FP / (FP + TN)."
        )
        parts.append("")
    parts += ["## Per class", "", per_class_table(metrics), ""]
    parts += ["## Confusion matrix", "", "![confusion matrix](confusion.png)", ""]
    parts += ["Counts in [confusion.csv](confusion.csv) (rows = true class).", ""]
    if note:
        parts += [note, ""]
    if has_curve:
        kept = best_history_index(history)
        best = history[kept] if kept is not None else {}
        parts += [
            "## Training curve",
            "",
            "![training curve](training_curve.png)",
            "",
            f"{len(history)} epochs; best validation macro-F1 "
            f"{100 * float(best.get('val_f1_macro') or 0):.2f} % at epoch {best.get('epoch')} "
            "(the checkpoint scored above).",
            "",
        ]
    parts += list(extra)
    (run_dir / "report.md").write_text("\n".join(parts))
