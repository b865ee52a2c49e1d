"""``spectrostream eval``: quality report of a model and/or the Opus anchor.

spectrostream eval --model M --data DIR [--kbps 2.7,5.3,8] [--per-channel]
                   [--baseline opus] [--max-clips N] [--max-seconds S] -o REPORT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spectrostream.errors import EvalError, exit_status
from spectrostream.evaluation.runner import BASELINES, LISTEN_FORMATS, EvalSettings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``eval`` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="objective quality report (ViSQOL, mel, SI-SDR, stereo) with a listening page",
        description=(
            "Codes every clip in --data at each rate with the model and/or baselines and "
            "writes report.md, report.json, quality_vs_kbps.png and index.html (a static "
            "listening page) into the output directory."
        ),
    )
    parser.add_argument("--model", help="model name or .safetensors path (omit for baselines only)")
    parser.add_argument("--data", required=True, help="directory of audio clips")
    parser.add_argument(
        "--kbps", default="2.7,5.3,8", help="comma-separated bit rates (default: 2.7,5.3,8)"
    )
    parser.add_argument(
        "--per-channel",
        action="store_true",
        help="rates are per channel: total = rate x channels (paper convention)",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        choices=BASELINES,
        default=[],
        help="add a baseline codec (repeatable)",
    )
    parser.add_argument("--max-clips", type=int, help="only the first N clips (by name)")
    parser.add_argument("--max-seconds", type=float, help="only the first S seconds of each clip")
    parser.add_argument(
        "--skip-visqol",
        action="store_true",
        help="skip ViSQOL (fast; mel, SI-SDR and stereo metrics only)",
    )
    parser.add_argument(
        "--listen-format",
        choices=LISTEN_FORMATS,
        default="ogg",
        help="format of the listening copies (default: ogg = Vorbis q0.7)",
    )
    parser.add_argument("-o", "--output", required=True, help="report directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_eval)


def _parse_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise EvalError(f"--kbps: not a comma-separated list of numbers: {text!r}") from error
    if len(set(rates)) != len(rates):
        raise EvalError(f"--kbps: repeated rate in {text!r}")
    return rates


@exit_status
def run_eval(args: argparse.Namespace) -> int:
    """Runs ``spectrostream eval``; returns the exit status (2 on user errors)."""
    from spectrostream.evaluation import report
    from spectrostream.evaluation.runner import evaluate

    settings = EvalSettings(
        kbps=_parse_rates(args.kbps),
        per_channel=args.per_channel,
        baselines=tuple(dict.fromkeys(args.baseline)),
        max_clips=args.max_clips,
        max_seconds=args.max_seconds,
        visqol=not args.skip_visqol,
        listen_format=args.listen_format,
    )
    if args.model is None and not settings.baselines:
        raise EvalError("give --model, --baseline opus, or both")
    _check_output(Path(args.output), Path(args.data))
    codec = None
    model_info = None
    if args.model is not None:
        from spectrostream.codec import load

        codec = load(args.model)
        model_info = {"path": args.model, "id": getattr(codec, "model_id", None)}
        _check_rates_for_codec(codec, settings)
    result = evaluate(
        args.data,
        args.output,
        settings,
        codec=codec,
        model_info=model_info,
        progress=not args.quiet,
    )
    paths = report.write_all(result, args.output)
    failed = sum(c.error is not None for clip in result.clips for c in clip.cells)
    failed += sum(clip.error is not None for clip in result.clips)
    print(
        f"wrote {Path(args.output) / 'report.md'} and {len(paths) - 1} more files "
        f"({failed} failure(s)) in {result.seconds:.0f} s"
    )
    return 0


def _check_output(out: Path, data: Path) -> None:
    """The report goes into a directory of its own: not an existing file, not --data itself
    (the report's files and media would be mixed into the clips)."""
    if out.exists() and not out.is_dir():
        raise EvalError(f"{out}: exists and is not a directory; -o names the report directory")
    if out.is_dir() and data.is_dir() and out.resolve() == data.resolve():
        raise EvalError(f"{out}: is the --data directory; give the report a directory of its own")


def _check_rates_for_codec(codec: object, settings: EvalSettings) -> None:
    """Every requested rate must reach at least one RVQ level; rates above the model's top are
    run with every level and marked clamped in the report."""
    config = codec.config  # type: ignore[attr-defined]
    for rate in settings.kbps:
        config.levels_for_kbps(min(rate, config.max_kbps))
