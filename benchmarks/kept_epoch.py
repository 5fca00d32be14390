"""Which epoch the trainer keeps, before and after ties went to the lower validation loss.

Reads the validation curves (``history.csv``) of the torch runs under each folder given (a
``dmfnet benchmark`` report, a model-study folder, a run folder) and replays early stopping
on them twice: keeping the *first* epoch with the best validation macro-F1 (the rule before
``dmfnet.training.metrics.improves``), and keeping, of epochs with equal macro-F1, the one
with the lower validation loss (the rule now). Prints, per folder, how many runs the new
rule changes, their mean kept epoch and its validation loss under each rule::

    python benchmarks/kept_epoch.py bench/demo bench/ndpi bench/iot study

With ``--retrain`` on a benchmark report it removes the runs the new rule changes (their
folders and ``results.csv`` rows), so that ``dmfnet benchmark`` with the same arguments
trains exactly those again; the other runs stay, since a CPU run repeats exactly and the
new rule keeps the same epoch and stops at the same epoch on them. A run whose new rule
would train past its last recorded epoch counts as changed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from pathlib import Path

from dmfnet.training import defaults
from dmfnet.training.metrics import improves


def replay(history: list[dict], patience: int, epochs: int, ties_to_loss: bool) -> tuple:
    """(kept row, stop epoch or 'continues') of early stopping on a recorded history."""
    best_f1, best_loss, kept, stale = -math.inf, math.inf, None, 0
    for row in history:
        f1, loss = float(row["val_f1_macro"]), float(row["val_loss"])
        better = improves(f1, loss, best_f1, best_loss) if ties_to_loss else f1 > best_f1
        if better:
            best_f1, best_loss, kept, stale = f1, loss, row, 0
        else:
            stale += 1
        if patience > 0 and stale >= patience:
            return kept, int(row["epoch"])
    last = int(history[-1]["epoch"])
    return kept, last if last >= epochs else "continues"


def changed_runs(folder: Path) -> tuple[int, list[tuple[Path, dict, dict]]]:
    """Torch runs under ``folder`` and those whose kept epoch or stop the new rule changes."""
    settings_file = folder / "benchmark.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    runs, changed = 0, []
    for path in sorted(folder.rglob("history.csv")):
        with open(path, newline="", encoding="utf-8") as fh:
            history = list(csv.DictReader(fh))
        if not history:
            continue
        info_file = path.parent / "run.json"
        training = json.loads(info_file.read_text()).get("training", {}) if info_file.exists() else {}
        patience = int(settings.get("patience", training.get("patience", defaults.PATIENCE)))
        epochs = int(settings.get("epochs", training.get("epochs", defaults.EPOCHS)))
        runs += 1
        old = replay(history, patience, epochs, ties_to_loss=False)
        new = replay(history, patience, epochs, ties_to_loss=True)
        if old[0] is not new[0] or old[1] != new[1]:
            changed.append((path.parent, old[0], new[0]))
    return runs, changed


def remove_runs(report: Path, run_dirs: list[Path]) -> None:
    """Drop the runs (folders and results.csv rows) so that the benchmark trains them again."""
    gone = {(d.parent.name, d.name.removeprefix("seed")) for d in run_dirs}
    for d in run_dirs:
        shutil.rmtree(d)
    results = report / "results.csv"
    with open(results, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames or [], list(reader)
    with open(results, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(r for r in rows if (r["model"], r["seed"]) not in gone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--retrain", action="store_true",
                        help="remove the changed runs of these benchmark reports")  # fmt: skip
    args = parser.parse_args()
    for folder in args.folders:
        runs, changed = changed_runs(folder)
        line = f"{folder}: {runs} runs, the new rule changes the kept or last epoch of {len(changed)}"
        if changed:
            mean = lambda rows, key: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
            old, new = [c[1] for c in changed], [c[2] for c in changed]
            line += (
                f"; kept epoch {mean(old, 'epoch'):.1f} -> {mean(new, 'epoch'):.1f}, its "
                f"validation loss {mean(old, 'val_loss'):.3f} -> {mean(new, 'val_loss'):.3f}"
            )
        print(line)
        for run_dir, _, _ in changed:
            print(f"  {run_dir.relative_to(folder)}")
        if args.retrain and changed:
            if not (folder / "results.csv").exists():
                raise SystemExit(f"{folder} is not a benchmark report (no results.csv)")
            remove_runs(folder, [c[0] for c in changed])
            print(f"  removed {len(changed)} runs: rerun dmfnet benchmark on {folder}")


if __name__ == "__main__":
    main()
