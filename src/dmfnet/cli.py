"""The ``dmfnet`` command: one subcommand per pipeline step.

Each subcommand's options live in its ``_add_<step>`` function and its work in the
package module it calls; this file only parses arguments and turns failures into one
clear line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys

from dmfnet import __version__


class UserError(Exception):
    """A failure the user can fix (bad path, bad option, unreadable input): one line, exit 2."""


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="captures -> bidirectional flows -> DMF modalities -> Parquet dataset",
        description="Read pcap/pcapng captures (files or folders, .gz too), assemble "
        "bidirectional flows, filter and anonymise them, and write a Parquet dataset.",
    )
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    raise UserError("prepare is not available yet")


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a prepared dataset's class table and problems")
    p.add_argument("dataset", help="folder written by `dmfnet prepare`")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    raise UserError("info is not available yet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmfnet",
        description="Encrypted and malicious traffic classification with DMF "
        "(deep multimodal fusion, Wang et al. 2025).",
    )
    parser.add_argument("--version", action="version", version=f"dmfnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_prepare, _add_info):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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
    except (OSError, ValueError, KeyError) as exc:
        if os.environ.get("DMFNET_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"dmfnet {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
