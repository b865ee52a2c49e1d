"""Measures the Opus anchor on the evaluation clips, as in docs/quality.md.

    PYTHONPATH=src python bench/opus_table.py [--data ../shared/eval] [-o /tmp/opus_eval]

Runs ``spectrostream eval --baseline opus --per-channel --kbps 2.7,5.3,8`` (no model) and
prints report.md, whose tables go into docs/quality.md. Extra arguments are passed through
(e.g. ``--max-clips 2 --skip-visqol`` for a quick look).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spectrostream.evaluation.cli import add_parser

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "eval"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="clip directory")
    parser.add_argument("-o", "--output", default="/tmp/opus_eval", help="report directory")
    known, rest = parser.parse_known_args(argv)

    eval_parser = argparse.ArgumentParser(prog="spectrostream")
    add_parser(eval_parser.add_subparsers(dest="command", required=True))
    args = eval_parser.parse_args(
        [
            "eval",
            "--data",
            known.data,
            "--baseline",
            "opus",
            "--per-channel",
            "--kbps",
            "2.7,5.3,8",
            "-o",
            known.output,
            *rest,
        ]
    )
    status = args.func(args)
    if status == 0:
        sys.stdout.write((Path(known.output) / "report.md").read_text())
    return status


if __name__ == "__main__":
    sys.exit(main())
