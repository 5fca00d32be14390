"""Output folders: one rule for every command that writes one.

``prepare``, ``train``, ``evaluate``, ``benchmark`` and ``demo`` each write a folder of
one *kind*, recognised by its mark (the file written last): ``_dataset.json`` (or the
older ``dataset.json``) for a dataset, ``run.json`` for a run, ``evaluation.json`` for an
evaluation, ``benchmark.json``/``results.csv``/``complexity.json`` for a benchmark report,
``open_set.json``/``open_set.csv`` for an open-set benchmark report,
``demo.json`` for a demo. A command writes into a folder that is

* new or empty;
* unfinished, of its own kind (``_unfinished`` in it: a command of that kind was stopped
  before it finished): cleared of what that kind writes, and written again;
* finished, of its own kind: a dataset or a run is replaced only with ``--force`` (cleared
  first: a run's ``evaluation-*`` folders too), an evaluation or a demo is replaced, a
  benchmark report is resumed;
* anything else that is not empty: refused in one line naming the folder; with ``--force``
  the command writes into it, and removes only files of its own kind (a dataset's parts).

An output equal to an input dataset folder, or inside one, is refused even with
``--force``. While a command writes, ``_unfinished`` marks the folder (for a dataset it is
the folder its part files are written to, moved up when all are done); the mark of the
kind is written last, then ``_unfinished`` is removed, so a folder never looks finished
before it is. A command that fails or is interrupted removes the folder if it made it
(with the parent folders it made, when left empty), or else what it wrote into it; only a
process killed outright leaves ``_unfinished`` behind, and the next run clears it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

UNFINISHED = "_unfinished"
_OWNER = "owner.json"  # inside a staging folder: who is writing it


class OutputError(ValueError):
    """An output folder that a command will not write into (one line naming it)."""


@dataclass(frozen=True)
class Kind:
    """A kind of output folder: how it is recognised and what its command writes."""

    name: str
    marks: tuple[str, ...]  # files (any one) that a finished folder of this kind holds
    existing: str  # a finished one: "refuse" (without --force), "replace" or "resume"
    entries: tuple[str, ...] = ()  # glob patterns of what the kind writes (cleared)
    staging: bool = False  # _unfinished is a folder that the outputs are written into
    keep: tuple[str, ...] = ()  # a failed run of the command keeps a folder holding these
    legacy: tuple[str, ...] = ()  # all of these: a finished one written before the mark was


DATASET = Kind(
    "dataset",
    ("_dataset.json", "dataset.json"),
    "refuse",
    ("part-*.parquet", "_dataset.json", "dataset.json"),
    staging=True,
)
_REPORT = ("metrics.json", "report.md", "confusion.csv", "confusion.png", "training_curve.png")
RUN = Kind(
    "run",
    ("run.json",),
    "refuse",
    ("run.json", "model.pt", "estimator", "history.csv", *_REPORT, "evaluation-*"),
)
EVALUATION = Kind("evaluation", ("evaluation.json",), "replace", ("evaluation.json", *_REPORT))
BENCHMARK = Kind(
    "benchmark report",
    ("benchmark.json", "results.csv", "complexity.json"),
    "resume",
    keep=("results.csv", "complexity.json"),
)
OPEN_SET = Kind(
    "open-set report",
    ("open_set.json", "open_set.csv"),
    "resume",
    keep=("open_set.csv",),
)
DEMO = Kind(
    "demo",
    ("demo.json",),
    "replace",
    ("demo.json", "dataset", "run", "predictions.csv"),
    legacy=("dataset", "run/run.json", "predictions.csv"),
)


class Output:
    """An output folder being written (from :func:`open_output`): :meth:`finish` once its
    mark is written, :meth:`fail` when the command fails; as a context manager, ``fail``
    on an exception and ``finish`` otherwise."""

    def __init__(self, path: Path, kind: Kind, created: list[Path], foreign: bool) -> None:
        self.path = path
        self.kind = kind
        self.created = created  # folders this made, outermost first
        self.foreign = foreign  # a non-empty folder of something else, written with --force
        self.done = False

    @property
    def staging(self) -> Path:
        """Where the outputs go until they are finished (a staging kind), else the folder."""
        return self.path / UNFINISHED if self.kind.staging else self.path

    def finish(self) -> None:
        """The output is complete (its mark written): remove ``_unfinished``."""
        _remove(self.path / UNFINISHED)
        self.done = True

    def fail(self) -> None:
        """Undo a failed or interrupted command: remove the folder if this made it (unless
        it holds what the kind keeps), else what the kind writes into it."""
        if self.done:
            return
        self.done = True
        kept = any((self.path / name).exists() for name in self.kind.keep)
        if self.created and not kept:
            _remove(self.path)
            for folder in reversed(self.created[:-1]):  # parents made, when left empty
                try:
                    folder.rmdir()
                except OSError:
                    break
        elif not self.foreign and self.kind.existing != "resume":
            clear(self.path, self.kind)
        else:
            _remove(self.path / UNFINISHED)

    def __enter__(self) -> Output:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if value is not None:
            self.fail()
        elif not self.done:
            self.finish()


def check_output(
    path: str | Path,
    kind: Kind,
    *,
    force: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> str:
    """Raise :class:`OutputError` when the rule (module docstring) refuses ``path`` as an
    output of ``kind``; else return its :func:`folder_state` (``"new"`` when it does not
    exist). Changes nothing. ``inputs``: the dataset folders (or files) the command reads."""
    path = Path(path)
    for source in inputs:
        folder = _dataset_folder(source)
        if folder is not None and _within(path, folder):
            where = "is" if path.resolve() == folder.resolve() else "is inside"
            raise OutputError(
                f"{path}: {where} the input dataset {source}; write the {kind.name} elsewhere"
            )
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    state = folder_state(path, kind)
    if force:
        return state
    if state.startswith("busy"):
        raise OutputError(
            f"{path}: {state[5:]} is writing it now (a {kind.name}); wait for it, "
            f"or remove {path / UNFINISHED} if no such process runs"
        )
    if state == "finished" and kind.existing == "refuse":
        raise OutputError(f"{path}: holds a finished {kind.name} (use --force to replace it)")
    if state == "other":
        raise OutputError(
            f"{path}: folder exists, is not empty and is not a dmfnet {kind.name} "
            "(use --force to write into it)"
        )
    return state


def open_output(
    path: str | Path,
    kind: Kind,
    *,
    force: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> Output:
    """Check ``path`` (:func:`check_output`), clear it where the rule says so, create it
    and mark it unfinished. Raises :class:`OutputError`."""
    path = Path(path)
    state = check_output(path, kind, force=force, inputs=inputs)
    created = [p for p in (path, *path.parents) if not p.exists()][::-1]
    foreign = state == "other"
    if state in ("unfinished", "finished") or state.startswith("busy"):
        if not (state == "finished" and kind.existing == "resume"):
            clear(path, kind)
    elif foreign and kind.staging:  # a dataset's files left there would join the new one
        clear(path, kind)
    path.mkdir(parents=True, exist_ok=True)
    output = Output(path, kind, created, foreign)
    if kind.existing != "resume":
        _mark_unfinished(path, kind)
    return output


def folder_state(path: str | Path, kind: Kind) -> str:
    """``empty``, ``finished`` (holds a mark of ``kind``), ``unfinished`` (``_unfinished``
    of ``kind``), ``busy <process>`` (unfinished, and the process writing it still runs)
    or ``other``."""
    path = Path(path)
    if not any(path.iterdir()):
        return "empty"
    owner = _owner(path)
    if owner is not None and owner.get("kind") == kind.name:
        pid = owner.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
            return f"busy process {pid}"
    if any((path / m).is_file() for m in kind.marks):
        return "finished"
    if kind.legacy and all((path / m).exists() for m in kind.legacy):
        return "finished"
    if owner is not None and owner.get("kind") == kind.name:
        return "unfinished"
    return "other"


def unfinished_note(path: str | Path) -> str:
    """``""``, or a sentence saying that ``path`` is an unfinished output, and why."""
    owner = _owner(Path(path))
    if owner is None:
        return ""
    return (
        f"an unfinished {owner.get('kind', 'output')} (its command was interrupted or "
        "failed, or still runs)"
    )


def _owner(path: Path) -> dict | None:
    """What ``_unfinished`` in ``path`` says (its kind, process, start), or None."""
    marker = path / UNFINISHED
    if marker.is_dir():
        marker = marker / _OWNER
        default: dict = {"kind": DATASET.name}
    else:
        default = {}
    if not marker.is_file():
        return default or None
    try:
        owner = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default or {}
    return owner if isinstance(owner, dict) else default


def _mark_unfinished(path: Path, kind: Kind) -> None:
    owner = {
        "kind": kind.name,
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    marker = path / UNFINISHED
    if kind.staging:
        marker.mkdir(exist_ok=True)
        marker = marker / _OWNER
    marker.write_text(json.dumps(owner) + "\n", encoding="utf-8")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    try:  # a zombie has ended
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def clear(path: str | Path, kind: Kind) -> None:
    """Remove what ``kind`` writes in ``path`` (and ``_unfinished``), nothing else."""
    path = Path(path)
    for pattern in (*kind.entries, UNFINISHED):
        for entry in path.glob(pattern):
            _remove(entry)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _dataset_folder(source: str | Path | None) -> Path | None:
    """The folder of an input dataset: itself, or the folder of a part file with a card."""
    if source is None or not isinstance(source, (str, os.PathLike)):
        return None
    source = Path(source)
    if source.is_dir():
        return source
    if source.is_file() and any((source.parent / m).is_file() for m in DATASET.marks):
        return source.parent
    return None


def _within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents
