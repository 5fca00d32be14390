"""The dataset card (``_dataset.json``): what went in, what came out, what was removed and why.

A dataset is only as trustworthy as the record of how it was made: the card keeps the
preprocessing parameters, the flows per class, the flows each filter removed per class,
the problems met reading the captures, and warnings about classes that ended up (nearly)
empty. ``dmfnet prepare`` prints its summary and ``dmfnet info`` prints it again later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from dmfnet.data.dataset import CARD_NAME, card_path, no_card_message

FILTER_RULES = ("failed_handshake", "no_payload", "dns", "llmnr", "non_tcp_udp")
MIN_CLASS_FLOWS = 10  # a class with fewer kept flows is flagged
MAX_REMOVAL_RATE = 0.95  # a class losing more than this share to the filters is flagged


def class_warnings(
    kept: Mapping[str, int], removed: Mapping[str, Mapping[str, int]], *, ignore: tuple = ()
) -> list[str]:
    """Warnings for classes that ended up empty or nearly so (few flows, most removed)."""
    removed_by_class: dict[str, int] = {}
    for per_class in removed.values():
        for label, n in per_class.items():
            removed_by_class[label] = removed_by_class.get(label, 0) + int(n)
    out = []
    for label in sorted(set(kept) | set(removed_by_class)):
        if label in ignore:
            continue
        k, r = int(kept.get(label, 0)), removed_by_class.get(label, 0)
        rate = r / (k + r) if k + r else 0.0
        if k == 0:
            out.append(f"class {label!r} is empty: all {r} of its flows were removed by filters")
        elif k < MIN_CLASS_FLOWS:
            out.append(f"class {label!r} has only {k} flow(s) ({r} removed by filters)")
        elif rate > MAX_REMOVAL_RATE:
            out.append(
                f"class {label!r} lost {rate:.1%} of its flows to filters ({k} kept, {r} removed)"
            )
    return out


def read_card(path: str | Path) -> dict:
    """The card of a prepared dataset folder (or of the folder holding a Parquet file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset folder")
    folder = path if path.is_dir() else path.parent
    card_file = card_path(folder)
    if card_file is None:
        raise ValueError(no_card_message(folder))
    try:
        return json.loads(card_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{card_file}: not valid JSON ({exc})") from None


def write_card(folder: str | Path, card: dict) -> Path:
    """Write ``_dataset.json`` (atomically: a reader never sees half a card)."""
    path = Path(folder) / CARD_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_class_table(card: Mapping) -> str:
    """Flows per class and flows removed by each filter per class, as a text table."""
    classes = card.get("classes", {})
    removed = card.get("removed", {})
    rules = [r for r in FILTER_RULES if any(removed.get(r, {}).values())]
    rules += [r for r in removed if r not in FILTER_RULES and any(removed[r].values())]
    labels = sorted(set(classes) | {lab for r in rules for lab in removed[r]})
    sampled = any(c.get("flows") != c.get("before_sampling") for c in classes.values())
    header = ["class", "flows"] + (["before sampling"] if sampled else []) + rules
    rows = [header]
    totals = [0] * (len(header) - 1)
    for label in labels:
        entry = classes.get(label, {})
        values = [entry.get("flows", 0)]
        if sampled:
            values.append(entry.get("before_sampling", 0))
        values += [removed[r].get(label, 0) for r in rules]
        totals = [t + v for t, v in zip(totals, values, strict=True)]
        rows.append([label, *[str(v) for v in values]])
    rows.append(["total", *[str(v) for v in totals]])
    text = _table(rows, set(range(1, len(header))))
    if rules:
        text += "\n(columns after 'flows': flows removed by each filter)"
    return text


def format_problems(card: Mapping, limit: int = 10) -> str:
    """The problems met reading the inputs: total, count by reason, the first few."""
    problems = card.get("problems", {"total": 0, "listed": []})
    total = problems.get("total", 0)
    if not total:
        return "problems: none"
    by_reason: dict[str, int] = {}
    for p in problems.get("listed", []):
        reason = p["reason"].split(":")[0]
        by_reason[reason] = by_reason.get(reason, 0) + 1
    lines = [f"problems: {total} (file@offset: reason)"]
    for p in problems.get("listed", [])[:limit]:
        where = f"{p['file']}@{p['offset']}" if p.get("offset", -1) >= 0 else p["file"]
        lines.append(f"  {where}: {p['reason']}")
    if total > limit:
        lines.append(f"  ... {total - limit} more in {CARD_NAME}")
    return "\n".join(lines)


def warning_lines(warnings: list[str], limit: int = 12) -> list[str]:
    """``WARNING: ...`` lines, the first ``limit`` of them and a count of the rest."""
    lines = [f"WARNING: {w}" for w in warnings[:limit]]
    if len(warnings) > limit:
        lines.append(f"WARNING: ... and {len(warnings) - limit} more warnings in {CARD_NAME}")
    return lines


def format_summary(card: Mapping, *, warnings: bool = True) -> str:
    """Class table, totals, unlabelled and non-IP counts, problems and warnings."""
    totals = card.get("totals", {})
    lines = [format_class_table(card), ""]
    lines.append(
        f"inputs: {totals.get('captures', 0)} capture(s), {totals.get('bytes', 0):,} bytes, "
        f"{totals.get('packets', 0):,} packets; flows: {totals.get('flows_assembled', 0):,} "
        f"assembled, {totals.get('flows_removed', 0):,} removed by filters, "
        f"{totals.get('flows_written', 0):,} written"
    )
    skipped = card.get("skipped_files", {}).get("count", 0)
    if skipped:
        lines.append(f"skipped {skipped} non-capture file(s) found in input folders")
    unl = card.get("unlabelled", {})
    if unl.get("flows"):
        fate = "kept as 'unlabelled'" if unl.get("kept") else "left out"
        lines.append(f"unlabelled flows: {unl['flows']:,} ({fate})")
    non_ip = card.get("non_ip_packets", {})
    if non_ip.get("total"):
        lines.append(f"non-IP packets: {non_ip['total']:,} (not in any flow)")
    if "elapsed_s" in card:
        lines.append(f"elapsed: {card['elapsed_s']:.1f} s")
    lines.append(format_problems(card))
    if warnings:
        lines += warning_lines(card.get("warnings", []))
    return "\n".join(lines)


def format_info(card: Mapping, path: str | Path) -> str:
    """``dmfnet info``: where and how the dataset was made, then its summary."""
    tool = card.get("tool", {})
    params = card.get("parameters", {})
    labels = params.get("labels", {})
    config = params.get("flow_config", {})
    lines = [
        f"dataset: {path}",
        f"made by: {tool.get('name', '?')} {tool.get('version', '?')} at {card.get('created', '?')}",
        f"labels: {labels.get('mode', '?')}"
        + (f" ({labels['csv']})" if labels.get("csv") else "")
        + (", unlabelled kept" if labels.get("keep_unlabelled") else ""),
    ]
    if config:
        lines.append("flow parameters: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    if params.get("max_flows_per_class") is not None:
        lines.append(
            f"sampled: at most {params['max_flows_per_class']} flows per class "
            f"(seed {params.get('seed', 0)})"
        )
    lines += ["", format_summary(card)]
    return "\n".join(lines)
