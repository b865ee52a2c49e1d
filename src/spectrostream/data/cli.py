"""`spectrostream data debian|pack`: build the training corpus and the compact GPU subset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spectrostream.data.debian import (
    DEFAULT_PACKAGES,
    MIN_DURATION_S,
    build_corpus,
    load_package_reports,
)
from spectrostream.data.pack import FULL_BAND_QUALITY, PackOptions, write_pack
from spectrostream.errors import exit_status


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` subcommand (with `debian` and `pack`) to an argparse subparsers object."""
    data = subparsers.add_parser("data", help="build training data (Debian corpus, GPU pack)")
    sub = data.add_subparsers(dest="data_command", metavar="{debian,pack}")
    sub.required = True
    _add_debian(sub)
    _add_pack(sub)


def _add_debian(sub: argparse._SubParsersAction) -> None:
    deb = sub.add_parser(
        "debian",
        help="build a 48 kHz stereo FLAC corpus from Debian's game-music packages",
        description=(
            "apt-get download each package, dpkg-deb -x it, keep audio of at least "
            f"{MIN_DURATION_S:.0f} s (also inside *.pk3/*.zip), drop duplicates, resample to "
            "48 kHz stereo and write DIR/{train,valid}/PKG/*.flac and DIR/manifest.{tsv,json}."
        ),
    )
    deb.add_argument("-o", "--output", required=True, type=Path, help="corpus directory DIR")
    deb.add_argument(
        "--packages",
        nargs="+",
        default=list(DEFAULT_PACKAGES),
        metavar="PKG",
        help="Debian packages to use (default: all ten in docs/data.md)",
    )
    deb.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where .deb files are downloaded (reused when present) and unpacked "
        "(default: DIR/.work)",
    )
    deb.add_argument("--force", action="store_true", help="rebuild packages already in DIR")
    deb.add_argument(
        "--keep-extracted", action="store_true", help="keep the unpacked package trees"
    )
    deb.add_argument("--no-progress", action="store_true", help="no progress bars")
    deb.set_defaults(func=run_debian)


def _add_pack(sub: argparse._SubParsersAction) -> None:
    pack = sub.add_parser(
        "pack",
        help="write a compact Ogg Vorbis subset of a corpus (for the GPU machine)",
        description=(
            "Excerpts from as many train tracks as possible (and a few valid ones), 48 kHz "
            "stereo Ogg Vorbis at the highest quality that keeps the whole folder under "
            "--max-mib, with a manifest of sources and licences."
        ),
    )
    pack.add_argument("corpus", type=Path, help="corpus directory built by `data debian`")
    pack.add_argument("-o", "--output", required=True, type=Path, help="subset directory")
    pack.add_argument("--minutes", type=float, default=60.0, help="train minutes (default 60)")
    pack.add_argument("--valid-minutes", type=float, default=3.0, help="valid minutes (default 3)")
    pack.add_argument(
        "--max-mib", type=float, default=48.0, help="cap on the whole folder, MiB (default 48)"
    )
    pack.add_argument(
        "--min-quality",
        type=float,
        default=FULL_BAND_QUALITY,
        help=f"lowest Vorbis quality to fall back to (default {FULL_BAND_QUALITY}, the lowest "
        "that keeps the band to 20 kHz; 0 low-passes at 16 kHz)",
    )
    pack.add_argument("--min-excerpt", type=float, default=10.0, help="seconds (default 10)")
    pack.add_argument("--max-excerpt", type=float, default=20.0, help="seconds (default 20)")
    pack.add_argument("--seed", type=int, default=0)
    pack.add_argument(
        "--overwrite", action="store_true", help="replace an existing pack in the output folder"
    )
    pack.add_argument("--no-progress", action="store_true", help="no progress bars")
    pack.set_defaults(func=run_pack)


@exit_status
def run_debian(args: argparse.Namespace) -> int:
    out_dir: Path = args.output
    workdir: Path = args.workdir if args.workdir is not None else out_dir / ".work"
    result = build_corpus(
        args.packages,
        out_dir,
        workdir,
        force=args.force,
        keep_extracted=args.keep_extracted,
        progress=not args.no_progress,
    )
    reports = load_package_reports(out_dir)
    hours = sum(r.seconds for r in reports) / 3600
    tracks = sum(len(r.tracks) for r in reports)
    print(f"corpus {out_dir}: {len(reports)} packages, {tracks} tracks, {hours:.2f} h")
    if result.errors:
        print("problems:", file=sys.stderr)
        for name, message in result.errors:
            print(f"  {name}: {message}", file=sys.stderr)
        return 1
    return 0


@exit_status
def run_pack(args: argparse.Namespace) -> int:
    options = PackOptions(
        minutes=args.minutes,
        valid_minutes=args.valid_minutes,
        max_mib=args.max_mib,
        min_excerpt_s=args.min_excerpt,
        max_excerpt_s=args.max_excerpt,
        seed=args.seed,
        min_quality=args.min_quality,
    )
    result = write_pack(
        args.corpus,
        args.output,
        options,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(
        f"pack {args.output}: {result.train_excerpts} train excerpts from {result.train_tracks}"
        f" tracks ({result.train_seconds / 60:.1f} min), {result.valid_excerpts} valid excerpts"
        f" ({result.valid_seconds / 60:.1f} min), Vorbis quality {result.quality:.2f},"
        f" {result.total_bytes / 2**20:.2f} MiB"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: `python -m spectrostream.data.cli data debian ...` or `debian ...`."""
    parser = argparse.ArgumentParser(prog="spectrostream")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("debian", "pack"):
        argv = ["data", *argv]
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
