"""The ``dmfnet`` command: one subcommand per pipeline step.

Each subcommand's options live in its ``_add_<step>`` function and its work in the
package module it calls; this file only parses arguments and turns failures into one
clear line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

from dmfnet import __version__


class UserError(Exception):
    """A failure the user can fix (bad path, bad option, unreadable input): one line, exit 2."""


# One rule for every command (in `dmfnet --help`): 1 means the work was done and written,
# but some input could not be read at all; 2 that nothing usable came out.
EXIT_NOTHING_READ = 2
EXIT_STATUS = """exit status (every command):
  0    done
  1    done and written, but some input could not be read at all (named on stderr),
       or, for benchmark, some runs failed (rerun to retry them)
  2    usage error or nothing usable: bad option or value, missing file or folder,
       no readable input, or another error (one line on stderr)
  130  interrupted (Ctrl-C)

progress: -q/--quiet turns progress output off; bars are drawn only on a terminal."""


def _add_quiet(p: argparse.ArgumentParser, what: str) -> None:
    """``-q/--quiet`` on every command that shows progress (``--no-progress`` is accepted
    as another name for it). Progress bars are drawn only when stderr is a terminal."""
    p.add_argument("-q", "--quiet", action="store_true", help=f"no {what}")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def _add_force(p: argparse.ArgumentParser, replaced: str, kept: str) -> None:
    """``--force``: the one rule for output folders (:mod:`dmfnet.outputs`)."""
    p.add_argument(
        "--force",
        action="store_true",
        help=f"replace {replaced}, or write into a non-empty folder that is not one "
        f"({kept}); without it such a folder is refused",
    )


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="captures -> bidirectional flows -> DMF modalities -> Parquet dataset",
        description="Read pcap/pcapng captures (files or folders, .gz too), assemble "
        "bidirectional flows, filter and anonymise them, and write a Parquet dataset "
        "(one row per flow) with OUT/_dataset.json recording parameters, flows per class, "
        "flows removed by each filter per class and every problem met.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="capture files, or folders searched recursively for pcap/pcapng/gzip files",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="dataset folder to write")
    p.add_argument(
        "--labels",
        default="folder",
        metavar="folder|file|CSV_PATH",
        help="class of each flow: 'folder' = the capture's parent folder name (default); "
        "'file' = the capture file name without extension and numeric part suffix "
        "(SMB-1.pcap -> SMB); or a CSV of flows with header "
        "file,protocol,client_ip,client_port,server_ip,server_port,label (src_ip,src_port,"
        "dst_ip,dst_port also accepted; protocol as a number or a name; matched in both "
        "directions)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="cores to use (default: all): captures are processed in parallel, spare "
        "cores share captures of 64 MiB or more, and with a core to spare a capture is "
        "read one chunk ahead in a thread (1 = one core); the output is the same for any N",
    )
    p.add_argument(
        "--cluster",
        default=None,
        metavar="tcp://HOST:8786|local:N",
        help="run the same tasks on a Dask cluster instead of local processes: the address "
        "of a running scheduler, or local:N for N worker processes on this machine; the "
        "captures and OUT must be on storage every worker sees (needs "
        "pip install 'dmfnet[cluster]'; see docs/cluster.md); the output is the same",
    )
    p.add_argument(
        "--max-flows-per-class",
        type=int,
        default=None,
        metavar="K",
        help="keep a seeded random sample of at most K flows of each class",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of that sample (default: 0)"
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="a flow ends after S seconds without a packet (default: 120)",
    )
    p.add_argument(
        "--active-timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="a flow ends S seconds after its first packet; the next starts a new one "
        "(default: 1800)",
    )
    p.add_argument(
        "--keep-dns", action="store_true", help="keep DNS flows (port 53; removed by default)"
    )
    p.add_argument(
        "--keep-llmnr", action="store_true", help="keep LLMNR flows (port 5355; removed by default)"
    )
    p.add_argument(
        "--keep-failed-handshakes",
        action="store_true",
        help="keep TCP flows whose handshake never completed (removed by default)",
    )
    p.add_argument(
        "--keep-no-payload",
        action="store_true",
        help="keep TCP flows that never carried payload (removed by default)",
    )
    p.add_argument(
        "--keep-non-tcp-udp",
        action="store_true",
        help="keep flows of other IP protocols: ICMP, GRE, ESP... (removed by default)",
    )
    p.add_argument(
        "--no-anonymise",
        action="store_true",
        help="keep IP addresses, ports, TLS SNI and certificates in the byte columns "
        "(zeroed by default)",
    )
    p.add_argument(
        "--signed-lengths",
        action="store_true",
        help="packet lengths signed by direction (- for server->client) instead of plain",
    )
    p.add_argument(
        "--no-payload-packet-bytes",
        action="store_true",
        help="leave out the payload_packet_bytes column (the layout of 'bytes' taken from "
        "the first 5 packets that carry payload; written by default)",
    )
    p.add_argument(
        "--addresses",
        choices=("keep", "hash", "drop"),
        default="keep",
        help="what the client_ip/server_ip columns hold: the addresses as captured (keep, "
        "default: anonymisation covers the byte columns, not these), a keyed hash that "
        "still groups each host's flows (hash), or nothing (drop); for datasets to share",
    )
    p.add_argument(
        "--address-key",
        metavar="KEY",
        help="with --addresses hash: the hash key (the same key gives the same values in "
        "every dataset; default: a random key, not stored)",
    )
    p.add_argument(
        "--keep-unlabelled",
        action="store_true",
        help="with a label CSV, keep flows it does not list, labelled 'unlabelled' "
        "(default: count them and leave them out)",
    )
    _add_force(p, "a finished dataset in OUT", "its other files are kept")
    _add_quiet(p, "progress bar on stderr")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from dmfnet.data.prepare import PrepareError, prepare
    from dmfnet.flows.config import FlowConfig

    try:
        config = FlowConfig(
            idle_timeout=args.idle_timeout,
            active_timeout=args.active_timeout,
            drop_failed_handshake=not args.keep_failed_handshakes,
            drop_no_payload=not args.keep_no_payload,
            drop_dns=not args.keep_dns,
            drop_llmnr=not args.keep_llmnr,
            drop_non_tcp_udp=not args.keep_non_tcp_udp,
            anonymise=not args.no_anonymise,
            signed_lengths=args.signed_lengths,
            payload_packet_bytes=not args.no_payload_packet_bytes,
        )
        summary = prepare(
            args.inputs,
            args.output,
            labels=args.labels,
            workers=args.workers,
            cluster=args.cluster,
            config=config,
            max_flows_per_class=args.max_flows_per_class,
            seed=args.seed,
            keep_unlabelled=args.keep_unlabelled,
            progress=not args.quiet,
            force=args.force,
            warn=False,
            addresses=args.addresses,
            address_key=args.address_key,
        )
    except (PrepareError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(summary.report(warnings=False))
    print(f"dataset: {summary.out} ({summary.flows:,} flows)", flush=True)
    summary.print_warnings()  # last, where they are seen
    return 1 if summary.card["totals"]["captures_failed"] else 0  # see EXIT_STATUS


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a prepared dataset's class table and problems")
    p.add_argument("dataset", help="folder written by `dmfnet prepare`")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from dmfnet.data.card import format_info, read_card

    try:
        card = read_card(args.dataset)
    except (OSError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(format_info(card, args.dataset))
    return 0


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `benchmark`: split protocol, classes, optimiser, device."""
    p.add_argument(
        "--split",
        choices=("random", "file"),
        default="random",
        help="random: 8:1:1 stratified by class (paper); file: whole capture files kept apart "
        "(default: random)",
    )
    p.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="keep test flows whose model inputs equal a training flow's (the paper's "
        "protocol; inflates scores)",
    )
    p.add_argument(
        "--min-class-flows",
        type=int,
        default=0,
        metavar="N",
        help="use the classes with at least N flows only (default: 0, all classes)",
    )
    p.add_argument(
        "--drop-classes",
        default="",
        metavar="A,B",
        help="comma-separated classes left out (for example Unknown)",
    )
    from dmfnet.training import defaults

    p.add_argument(
        "--epochs",
        type=int,
        default=defaults.EPOCHS,
        help=f"maximum epochs per run (default: {defaults.EPOCHS})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="flows per step, over all processes (default: auto, a power of two in 32-256 "
        f"giving at least {defaults.MIN_STEPS_PER_EPOCH} steps per epoch where the training "
        "split allows)",
    )
    p.add_argument(
        "--lr", type=float, default=defaults.LR, help=f"AdamW learning rate (default: {defaults.LR})"
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.WEIGHT_DECAY,
        help=f"AdamW weight decay (default: {defaults.WEIGHT_DECAY})",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=defaults.PATIENCE,
        help="stop after this many epochs without a better validation macro-F1 (or an equal one "
        "at a lower validation loss); 0 never stops "
        f"early (default: {defaults.PATIENCE})",
    )
    p.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default=defaults.SCHEDULE,
        help="learning rate: constant, or one epoch of warm-up then cosine decay "
        f"(default: {defaults.SCHEDULE})",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=defaults.EMA,
        metavar="DECAY",
        help="validate, early-stop on and keep a moving average of the weights with this "
        f"decay per step; 0 turns it off (default: {defaults.EMA})",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when present, else CPU (default: auto)",
    )
    from dmfnet.training.rejection import DEFAULT_ACCEPT_RATE

    p.add_argument(
        "--accept-rate",
        type=float,
        default=DEFAULT_ACCEPT_RATE,
        metavar="RATE",
        help="the rejection threshold (classify --reject) accepts this share of the known "
        f"validation flows (default: {DEFAULT_ACCEPT_RATE})",
    )


def _add_loader(p: argparse.ArgumentParser, what: str) -> None:
    """``--loader``: flows loaded into memory, or streamed from the dataset's row groups."""
    p.add_argument(
        "--loader",
        choices=("auto", "memory", "stream"),
        default="auto",
        help=f"how the flows reach the model: memory loads the model inputs once (fastest "
        f"while they fit), stream reads them from the Parquet row groups as {what} goes "
        "(memory does not grow with the dataset); auto streams when the inputs would take "
        "more than a quarter of this machine's memory (default: auto)",
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train DMF (or an ablation/baseline) on a prepared dataset -> run folder",
        description="Split a prepared dataset (8:1:1 stratified, the paper's protocol, or by "
        "capture file), remove test flows that duplicate a training flow, train with AdamW "
        "and early stopping on validation macro-F1, score the best checkpoint on the test "
        "flows and write the run folder (model, run.json, history, metrics, report). Under "
        "`torchrun --nproc_per_node=N -m dmfnet.cli train ...` it trains with "
        "DistributedDataParallel.",
    )
    p.add_argument("dataset", help="folder written by `dmfnet prepare` (or one Parquet file)")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run folder to write")
    p.add_argument("--model", default="dmf", help="registered model name (default: dmf)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the split, init and batch order (default: 0)"
    )
    _add_training_options(p)
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="DataLoader workers gathering batches (default: 0)",
    )
    _add_loader(p, "training")
    p.add_argument(
        "--shuffle-buffer",
        type=int,
        default=None,
        metavar="FLOWS",
        help="with the streaming loader: flows shuffled together, from consecutive row "
        "groups taken in a random order (default: 65536, about 110 MB of DMF's inputs)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model configuration override, repeatable; VALUE is read as JSON when it parses "
        "(--set fusion_tokens=4 --set channels=[8,16,32] --set length_scaling=log)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads per process (default: torch's choice); 1 is often fastest "
        "on a busy machine or with small batches",
    )
    p.add_argument(
        "--reject-score",
        choices=("auto", "max_softmax", "energy"),
        default="auto",
        help="score of the rejection threshold: the largest class probability, or the energy "
        "score (torch models); auto picks the one that best tells correct from misclassified "
        "validation flows (default: auto)",
    )
    _add_force(p, "an existing run in RUN (with its evaluation-* folders)", "its files are kept")
    _add_quiet(p, "per-epoch progress lines")
    p.set_defaults(func=_run_train)


def _class_list(text: str) -> list[str]:
    """``"A,B"`` -> ``["A", "B"]`` (blank entries ignored)."""
    return [c.strip() for c in text.split(",") if c.strip()]


def _parse_overrides(items: list[str]) -> dict:
    import json

    config = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            config[key.strip()] = value
    return config


def _check_overrides(model: str, config: dict, items: list[str], prefix: str = "") -> None:
    """Each ``--set`` value checked against the model's configuration before anything is
    read or written: one line naming the option, the key and the bad value."""
    from dmfnet.models.config import ConfigError
    from dmfnet.models.registry import check_model_config

    try:
        check_model_config(model, config)
    except ConfigError as exc:
        given = next((i for i in items if i.partition("=")[0].strip() == exc.key), None)
        where = f"--set {prefix}{given}: " if given is not None else f"--set ({model}): "
        raise UserError(f"{where}{exc}") from None


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show warnings (small classes, empty parts of a split) as one 'warning:' line each."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _print_metrics(metrics: dict) -> None:
    from dmfnet.training.report import metrics_table, per_class_table

    print(metrics_table(metrics))
    print()
    print(per_class_table(metrics))


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dmfnet.models import available_models
    from dmfnet.training import distributed
    from dmfnet.training.trainer import train

    if not Path(args.dataset).exists():
        raise UserError(f"dataset {args.dataset} does not exist")
    if args.model not in available_models():
        raise UserError(f"unknown model {args.model!r}; known: {', '.join(available_models())}")
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (torch's choice) or more, not {args.threads}")
    model_config = _parse_overrides(args.overrides)
    _check_overrides(args.model, model_config, args.overrides)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with _warnings_as_lines():
        result = train(
            args.dataset,
            args.output,
            model=args.model,
            seed=args.seed,
            split=args.split,
            keep_duplicates=args.keep_duplicates,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            patience=args.patience,
            schedule=args.schedule,
            ema=args.ema,
            min_class_flows=args.min_class_flows,
            drop_classes=_class_list(args.drop_classes),
            device=args.device,
            model_config=model_config,
            num_workers=args.num_workers,
            loader=args.loader,
            buffer_flows=args.shuffle_buffer,
            accept_rate=args.accept_rate,
            reject_score=None if args.reject_score == "auto" else args.reject_score,
            progress=not args.quiet,
            force=args.force,
        )
    if distributed.requested() and int(os.environ.get("RANK", "0")) != 0:
        return 0
    print()
    epoch = f"best epoch {result['best_epoch']}, " if result["epochs_run"] else ""
    print(
        f"test: {result['test_size']} flows ({args.split} split, "
        f"{result['duplicates_removed']} duplicate test flows removed), {epoch}"
        f"{result['train_seconds']:.1f} s training"
    )
    _print_metrics(result)
    print(f"\nreport: {Path(args.output) / 'report.md'}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a trained run on another prepared dataset",
        description="Score the model of a run folder on every flow of a prepared dataset. "
        "Classes are matched by name; flows of classes the model does not know are counted "
        "and left out of the metrics.",
    )
    p.add_argument("run", help="run folder written by `dmfnet train`")
    p.add_argument("dataset", help="folder written by `dmfnet prepare` (or one Parquet file)")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="folder for the evaluation report (default: RUN/evaluation-<dataset name>)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when present, else CPU (default: auto)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty OUT that is not an evaluation (an evaluation is replaced)",
    )
    p.add_argument(
        "--decide-after",
        type=int,
        metavar="K",
        help="score each flow as its first K packets show it (1-60), as `classify "
        "--decide-after K` decides live traffic; the report adds macro-F1 for K = 2, 3, 5, "
        "10, 20, 30, 60 (those up to the run's recorded packets)",
    )
    _add_loader(p, "scoring")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dmfnet.training.trainer import evaluate, unknown_summary

    if not (Path(args.run) / "run.json").is_file():
        raise UserError(
            f"{args.run} is not a run folder (no run.json); train one with `dmfnet train`"
        )
    if not Path(args.dataset).exists():
        raise UserError(f"dataset {args.dataset} does not exist")
    with _warnings_as_lines():
        try:
            result = evaluate(
                args.run,
                args.dataset,
                args.output,
                device=args.device,
                force=args.force,
                decide_after=args.decide_after,
                loader=args.loader,
            )
        except KeyError as exc:  # a column the cut to the first packets needs
            raise UserError(str(exc.args[0] if exc.args else exc)) from None
    print(f"evaluated {result['evaluated_flows']} flows of {args.dataset} with {args.run}")
    if result.get("early"):
        print(f"  each flow as its first {result['decide_after']} packets show it; macro-F1 by K:")
        print("  " + "  ".join(f"K={e['packets']}: {100 * e['f1_macro']:.2f} %" for e in result["early"]))
    if result["unknown_classes"]:
        print(
            f"  left out, unknown to the model: {unknown_summary(result['unknown_classes'])} "
            f"(all in {Path(result['report_dir']) / 'evaluation.json'})"
        )
    print()
    _print_metrics(result)
    print(f"\nreport: {Path(result['report_dir']) / 'report.md'}")
    return 0


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    from dmfnet.training.benchmark import DEFAULT_MODELS

    p = sub.add_parser(
        "benchmark",
        help="DMF vs the baselines and its ablations over K seeds -> the paper's tables",
        description="Train and test every chosen model on the same splits for seeds 0..K-1 "
        "(run folders under REPORT/runs/<model>/seed<k>/), append one row per model and seed "
        "to REPORT/results.csv as each finishes (a rerun resumes where it stopped), then write "
        "REPORT/tables.md and tables_*.csv in the layout of the paper's Tables 2-5 (mean ± std "
        "in %), a macro-F1 bar chart and REPORT/complexity.md (paper §5.4).",
    )
    p.add_argument("dataset", help="folder written by `dmfnet prepare` (or one Parquet file)")
    p.add_argument("-o", "--output", required=True, metavar="REPORT", help="report folder")
    from dmfnet.training.openset import OPEN_SET_MODELS

    p.add_argument(
        "--models",
        default=None,
        help=f"comma-separated registered model names (default: {','.join(DEFAULT_MODELS)}; "
        f"with --open-set: {','.join(OPEN_SET_MODELS)})",
    )
    p.add_argument("--seeds", type=int, default=5, help="runs per model, seeds 0..K-1 (default: 5)")
    p.add_argument(
        "--open-set",
        action="store_true",
        help="open-set benchmark instead: seed k holds out --held-out classes (in name order, "
        "from class k*N on), trains on the rest and reports the AUROC of known test flows "
        "against held-out flows and the known accepted / unknown rejected shares at the "
        "calibrated threshold (REPORT/open_set.csv, REPORT/tables.md); see docs/open-set.md",
    )
    p.add_argument(
        "--held-out",
        type=int,
        default=1,
        metavar="N",
        help="with --open-set: classes held out per seed (default: 1)",
    )
    _add_training_options(p)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="MODEL:KEY=VALUE",
        help="configuration override of one model, repeatable; VALUE is read as JSON when it "
        "parses (--set dmf:fusion_tokens=4)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--complexity-only",
        action="store_true",
        help="train nothing: measure parameters, FLOPs, latency, throughput and memory of the "
        "chosen models into REPORT/complexity.md",
    )
    what.add_argument(
        "--no-complexity", action="store_true", help="skip the complexity measurement"
    )
    p.add_argument(
        "--complexity-batch",
        type=int,
        default=256,
        help="flows per batch for the latency and throughput figures (default: 256)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty REPORT that is not a benchmark report (a report folder "
        "is resumed)",
    )
    _add_quiet(p, "per-epoch progress lines")
    p.set_defaults(func=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dmfnet.models import available_models
    from dmfnet.training.benchmark import (
        DEFAULT_MODELS,
        run_benchmark,
        write_complexity_report,
    )
    from dmfnet.training.openset import OPEN_SET_MODELS

    if not Path(args.dataset).exists():
        raise UserError(f"dataset {args.dataset} does not exist")
    if args.models is None:
        args.models = ",".join(OPEN_SET_MODELS if args.open_set else DEFAULT_MODELS)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = available_models()
    unknown = [m for m in models if m not in known]
    if not models or unknown:
        raise UserError(
            f"unknown model(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}"
        )
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    per_model: dict[str, list[str]] = {}
    for item in args.overrides:
        model, sep, rest = item.partition(":")
        if not sep or model not in models:
            raise UserError(
                f"--set expects MODEL:KEY=VALUE with MODEL one of --models, got {item!r}"
            )
        per_model.setdefault(model, []).append(rest)
    model_config = {m: _parse_overrides(items) for m, items in per_model.items()}
    for model, items in per_model.items():
        _check_overrides(model, model_config[model], items, prefix=f"{model}:")

    if args.complexity_only:
        from dmfnet.data import load_dataset
        from dmfnet.outputs import BENCHMARK, open_output

        classes = len(load_dataset(args.dataset, columns=[]).classes)
        with open_output(args.output, BENCHMARK, force=args.force, inputs=[args.dataset]):
            path = write_complexity_report(
                args.output, models, num_classes=classes, batch_size=args.complexity_batch
            )
        print(Path(path).read_text())
        print(f"complexity: {path}")
        return 0

    if args.open_set:
        if args.complexity_only:
            raise UserError("--open-set and --complexity-only exclude each other")
        return _run_open_set(args, models, model_config)
    with _warnings_as_lines():  # small classes, --drop-classes absent from the dataset
        out = run_benchmark(
            args.dataset,
            args.output,
            models=models,
            seeds=args.seeds,
            split=args.split,
            keep_duplicates=args.keep_duplicates,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            patience=args.patience,
            schedule=args.schedule,
            ema=args.ema,
            device=args.device,
            model_config=model_config,
            complexity=not args.no_complexity,
            complexity_batch=args.complexity_batch,
            progress=not args.quiet,
            min_class_flows=args.min_class_flows,
            drop_classes=_class_list(args.drop_classes),
            force=args.force,
        )
    written = out["written"]
    print()
    if "markdown" in written:
        print(written["markdown"].read_text())
    print(
        f"{len(out['trained'])} runs trained, {len(out['skipped'])} already in "
        f"{Path(args.output) / 'results.csv'}"
    )
    for key in ("markdown", "complexity"):
        if key in written:
            print(f"{key if key != 'markdown' else 'tables'}: {written[key]}")
    if out["failed"]:
        for model, seed, reason in out["failed"]:
            print(f"failed: {model}, seed {seed}: {reason}", file=sys.stderr)
        print(
            f"dmfnet benchmark: {len(out['failed'])} run(s) failed (see "
            f"{Path(args.output) / 'failures.log'}); rerun to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_open_set(args: argparse.Namespace, models: list[str], model_config: dict) -> int:
    """`dmfnet benchmark --open-set`: :func:`dmfnet.training.openset.run_open_set`."""
    from pathlib import Path

    from dmfnet.training.openset import run_open_set

    with _warnings_as_lines():
        out = run_open_set(
            args.dataset,
            args.output,
            models=models,
            seeds=args.seeds,
            held_out=args.held_out,
            accept_rate=args.accept_rate,
            split=args.split,
            keep_duplicates=args.keep_duplicates,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            patience=args.patience,
            schedule=args.schedule,
            ema=args.ema,
            device=args.device,
            model_config=model_config,
            min_class_flows=args.min_class_flows,
            drop_classes=_class_list(args.drop_classes),
            progress=not args.quiet,
            force=args.force,
        )
    if out["tables"] is not None:
        print()
        print(out["tables"].read_text())
        print(f"tables: {out['tables']}")
    print(
        f"{len(out['trained'])} runs trained, {len(out['skipped'])} already in "
        f"{Path(args.output) / 'open_set.csv'}"
    )
    for model, seed, reason in out["failed"]:
        print(f"failed: {model}, seed {seed}: {reason}", file=sys.stderr)
    if out["failed"]:
        print(
            f"dmfnet benchmark: {len(out['failed'])} run(s) failed (see "
            f"{Path(args.output) / 'failures.log'}); rerun to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="classify the flows of new captures with a trained run",
        description="Read captures with the same ingest as `prepare` (the run's flow "
        "settings and filters), predict each kept flow with the run's model and write one "
        "line per flow: capture, protocol, endpoints as seen, start time, packets, predicted "
        "class, probability and the top classes. Flows are written as they complete, so "
        "memory stays bounded whatever the capture size. Live traffic: `-` reads a pcap "
        "stream from standard input (tcpdump -i eth0 -U -w - | dmfnet classify RUN - -o -) "
        "and --interface captures with tcpdump; each flow is then written as soon as it is "
        "decided, with the packets seen and the capture time of the decision. Ctrl-C or "
        "SIGTERM decides the open flows, writes them and exits 0.",
    )
    p.add_argument("run", help="run folder written by `dmfnet train` (or `dmfnet demo`)")
    p.add_argument(
        "captures",
        nargs="*",
        metavar="CAPTURE",
        help="pcap/pcapng files or folders; - for a stream on standard input",
    )
    p.add_argument(
        "--interface",
        metavar="IFACE",
        help="capture and classify the traffic of a network interface (runs tcpdump, which "
        "needs the capture privilege)",
    )
    p.add_argument(
        "--capture-filter",
        metavar="BPF",
        help="with --interface: a tcpdump filter expression, e.g. 'tcp port 443'",
    )
    p.add_argument(
        "--decide-after",
        type=int,
        metavar="K",
        help="decide each flow on its first K packets (1-60), as soon as it has them "
        "(default: files on whole flows; a stream or interface as soon as the model's "
        "inputs are complete, e.g. 60 packets for DMF)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="predictions file: .csv or .jsonl (JSON lines); - for CSV on stdout",
    )
    p.add_argument("--format", choices=("csv", "jsonl"), help="override the format of -o")
    p.add_argument("--top", type=int, default=3, help="classes listed per flow (default: 3)")
    p.add_argument(
        "--threads", type=int, help="CPU threads of torch or onnxruntime (default: torch's choice)"
    )
    p.add_argument(
        "--engine",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="what scores the flows: torch, or onnx (onnxruntime, the optional extra "
        "dmfnet[onnx]) on RUN/model.onnx from `dmfnet export RUN`, or on an export made in "
        "memory when there is none; auto (default) takes onnx when RUN/model.onnx is current, "
        "onnxruntime is installed and faster for the model, torch otherwise",
    )
    p.add_argument(
        "--reject",
        action="store_true",
        help="label 'unknown' the flows whose score is below the threshold calibrated on the "
        "run's validation flows (the top classes stay; a score column is added)",
    )
    _add_quiet(p, "progress bar")
    p.set_defaults(func=_run_classify)


def _run_classify(args: argparse.Namespace) -> int:
    from dmfnet.classify import ClassifyError, classify_captures, classify_stream

    _set_threads(args.threads)
    stream = args.captures == ["-"]
    if "-" in args.captures and not stream:
        raise UserError("- (standard input) cannot be mixed with capture files")
    if args.interface is not None and args.captures:
        raise UserError("give captures or --interface, not both")
    if args.interface is None and not args.captures:
        raise UserError("give captures, - for standard input, or --interface")
    try:
        if stream or args.interface is not None:
            summary = classify_stream(
                args.run,
                args.output,
                source=sys.stdin.buffer if stream else None,
                interface=args.interface,
                capture_filter=args.capture_filter,
                fmt=args.format,
                top_k=args.top,
                decide_after=args.decide_after,
                engine=args.engine,
                reject=args.reject,
            )
        else:
            if args.capture_filter:
                raise UserError("--capture-filter goes with --interface")
            summary = classify_captures(
                args.run,
                args.captures,
                args.output,
                fmt=args.format,
                top_k=args.top,
                progress=not args.quiet,
                decide_after=args.decide_after,
                engine=args.engine,
                reject=args.reject,
            )
    except ClassifyError as exc:
        raise UserError(str(exc)) from None
    print(summary.report(problems=False), file=sys.stderr if args.output == "-" else sys.stdout)
    problems = summary.problem_report()
    if problems:
        print(problems, file=sys.stderr)
    if summary.captures_failed:
        print(
            f"dmfnet classify: error: {len(summary.captures_failed)} of {summary.captures} "
            f"capture(s) could not be read: {summary.captures_failed[0]}",
            file=sys.stderr,
        )
        return EXIT_NOTHING_READ if len(summary.captures_failed) == summary.captures else 1
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's model as ONNX, to score flows without torch",
        description="Export the run's model to ONNX: inputs named after the dataset columns "
        "in their raw dtypes (uint8 bytes, int32 lengths, int8 directions), the input scaling "
        "inside the graph, a dynamic batch dimension, output `probabilities` (batch, classes); "
        "class names, input columns and the rejection threshold (when the run has one) in the "
        "model's metadata. The export is checked against torch with onnxruntime before it is "
        "written. Needs the optional extra: pip install 'dmfnet[onnx]'. XGBoost runs are "
        "refused.",
    )
    p.add_argument("run", help="run folder written by `dmfnet train` (or `dmfnet demo`)")
    p.add_argument(
        "-o",
        "--output",
        help="ONNX file to write (default: RUN/model.onnx, which `classify` then reuses)",
    )
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from dmfnet.export import ONNX_FILE, ExportError, export_onnx
    from dmfnet.training.runs import load_run

    out = args.output or os.path.join(args.run, ONNX_FILE)
    if os.path.isdir(out):
        raise UserError(f"{out}: is a folder; give an .onnx file")
    try:
        trained = load_run(args.run)
        model_bytes = export_onnx(trained, out)
    except (FileNotFoundError, ExportError) as exc:
        raise UserError(str(exc)) from None
    print(
        f"{trained.name} ({len(trained.classes)} classes, inputs {', '.join(trained.inputs)}) "
        f"-> {out} ({len(model_bytes) / 1e6:.1f} MB)"
    )
    return 0


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}")
    import torch

    torch.set_num_threads(threads)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="prepare the bundled captures, train DMF, report, classify a capture",
        description="The whole pipeline in a few minutes on a laptop CPU: the bundled real "
        "encrypted traffic (demo/captures: HTTPS bulk and small requests, interactive SSH, "
        "SCP/SFTP, TLS chat, DNS over TLS) -> Parquet dataset -> DMF trained and scored on "
        "held-out flows -> report -> predictions for one capture.",
    )
    p.add_argument("-o", "--output", default="demo-run", help="folder to write (default: demo-run)")
    from dmfnet.training import defaults

    p.add_argument("--epochs", type=int, help=f"maximum epochs (default: {defaults.EPOCHS})")
    p.add_argument("--batch-size", type=int, help="flows per step (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of split and training (default: 0)")
    p.add_argument(
        "--captures", help="class folders of captures to use instead of the bundled ones"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: 1, fastest for the demo's small batches on a busy CPU)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty folder that is not a demo's (an earlier demo is replaced)",
    )
    _add_quiet(p, "progress bars")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from dmfnet.data import PrepareError
    from dmfnet.demo import DEMO_BATCH_SIZE, DEMO_EPOCHS, DemoError, run_demo

    _set_threads(args.threads)
    try:
        run_demo(
            args.output,
            epochs=DEMO_EPOCHS if args.epochs is None else args.epochs,
            batch_size=DEMO_BATCH_SIZE if args.batch_size is None else args.batch_size,
            seed=args.seed,
            captures=args.captures,
            progress=not args.quiet,
            force=args.force,
        )
    except (DemoError, PrepareError) as exc:
        raise UserError(str(exc)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmfnet",
        description="Encrypted and malicious traffic classification with DMF "
        "(deep multimodal fusion, Wang et al. 2025).",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dmfnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_prepare,
        _add_info,
        _add_train,
        _add_evaluate,
        _add_benchmark,
        _add_classify,
        _add_export,
        _add_demo,
    ):
        add(sub)
    return parser


# Commands that read captures do no BLAS work in numpy, whose OpenBLAS otherwise starts a
# thread per core at import that busy-waits for about 0.1 CPU s: time taken from the
# worker processes, which use every core. Set before numpy is first imported.
_SINGLE_THREAD_BLAS = {"prepare", "info", "classify"}
# Commands that have closed everything they wrote when they return: the `dmfnet` process
# then ends at once instead of tearing down numpy, pyarrow and their thread pools (about
# 40 ms, a twentieth of preparing a 200 MB capture).
_QUICK_EXIT = {"prepare", "info"}


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if _command(argv) in _SINGLE_THREAD_BLAS:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"dmfnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dmfnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`dmfnet classify RUN x.pcap -o - | head`)
        _stdout_to_devnull()
        return 0
    except (OSError, ValueError, KeyError) as exc:
        if os.environ.get("DMFNET_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"dmfnet {args.command}: error: {msg}", file=sys.stderr)
        return 2  # nothing usable came out (EXIT_STATUS)


def _stdout_to_devnull() -> None:
    """Quiet end when the reader of stdout has gone, as Unix tools end: what is still
    buffered for stdout goes nowhere (so the exit's flush raises nothing), no message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
        pass


def run() -> None:
    """The ``dmfnet`` console command: :func:`main`, then the exit."""
    argv = sys.argv[1:]
    code = main(argv)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `dmfnet info DS | head`: the reader has gone, end quietly
        _stdout_to_devnull()
    if _command(argv) in _QUICK_EXIT:
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
