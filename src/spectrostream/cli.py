"""Command line: ``spectrostream <command>``; one function per subcommand.

Arguments are checked at parse time by one set of rules (:func:`kbps_arg`, :func:`levels_arg`,
:func:`sample_rate_arg`) shared by every command; the model-dependent bounds (no more levels
than the model or file has) are checked before any file is touched. Errors become exit
statuses in one place, :func:`spectrostream.errors.exit_status`: 2 with one line on stderr
for anything the user can fix, 130 on Ctrl-C. A directory argument processes every matching
file below it into a mirrored output tree; under ``torchrun`` the files are split across
ranks (RANK / WORLD_SIZE). Files, directories and pipes are
:mod:`spectrostream.files`; see docs/reliability.md for what is guaranteed.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from . import bitstream
from .errors import UsageError, exit_status

STDIO = "-"
_N = TypeVar("_N", int, float)


# ---- argument rules (the same for every command) -------------------------------------------
def _number(text: str, kind: Callable[[str], _N], what: str) -> _N:
    """``text`` read as ``kind``; otherwise an argparse error that says a ``what`` was expected."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None


def _bounded_int(text: str, low: int, high: int, what: str, unit: str = "") -> int:
    """A whole number in ``low..high`` (both included); ``unit`` follows the bounds in errors."""
    value = _number(text, int, what)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be in {low}..{high}{unit}, got {value}")
    return value


def kbps_arg(text: str) -> float:
    """A finite, positive bit rate in kbps (the model or file bounds it further)."""
    value = _number(text, float, "number")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def levels_arg(text: str) -> int:
    """A whole number of RVQ levels, 1..255 (the model or file bounds it further)."""
    return _bounded_int(text, 1, bitstream.MAX_LEVELS, "whole number")


def sample_rate_arg(text: str) -> int:
    """An output sample rate in Hz that an .ssc header can also hold."""
    low, high = bitstream.MIN_SAMPLE_RATE, bitstream.MAX_SAMPLE_RATE
    return _bounded_int(text, low, high, "whole number of Hz", unit=" Hz")


def _positive_int(text: str) -> int:
    """``--threads``: digits only, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _levels_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--kbps", type=kbps_arg, help="total bit rate (0.25 kbps per level; default: all)"
    )
    g.add_argument("--levels", type=levels_arg, help="number of RVQ levels (1..64)")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="model .safetensors path, or a name: magenta-rt (Google's weights, downloaded once "
        "from the Hugging Face Hub) or default (a placeholder) (default: %(default)s)",
    )
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) for magenta-rt")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda[:N] or mps (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="convolution precision; the RVQ search is always fp32 (default: %(default)s)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="int8 convolutions on the CPU, with the model's calibration file "
        "(MODEL.int8.json; see calibrate-int8)",
    )


def _load_codec(args: argparse.Namespace):
    from .codec import load
    from .device import rank_device

    device = rank_device(args.device)
    if args.int8 and device == "auto":
        device = "cpu"  # int8 runs on the CPU: auto must not pick a GPU
    return load(args.model, revision=args.revision, device=device, dtype=args.dtype, int8=args.int8)


def _report_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--report", metavar="PATH", help="write a JSON summary of every file (ok or failed)"
    )


def _progress(total: int | None, desc: str, unit: str) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        disable=None,
        leave=False,
        file=sys.stderr,
    )


# ---- encode / decode / roundtrip ----------------------------------------------------------
def run_encode(args: argparse.Namespace) -> int:
    from . import audio_io, files

    pairs = files.plan(args.input, args.output, files.ENCODE)
    for _, dst in pairs:
        files.check_ssc_target(dst, args.force)
    codec = _load_codec(args)
    levels = codec.levels_for(args.kbps, args.levels)

    def one(src: str, dst: str) -> dict[str, object]:
        total = audio_io.audio_info(src).num_frames if src != STDIO else None
        with _progress(total, Path(src).name, "smp") as bar, files.binary_output(dst) as out:
            header = files.encode_file(codec, src, out, levels=levels, progress=bar.update)
        return {"levels": header.num_levels}

    files.run_batch("encode", pairs, one, args.report)
    return 0


def _input_name(src: str) -> str:
    """How messages name an input: its path, or ``<stdin>`` for ``-``."""
    from .audio_io import STDIN_NAME

    return STDIN_NAME if src == STDIO else src


def run_decode(args: argparse.Namespace) -> int:
    from . import files

    pairs = files.plan(args.input, args.output, files.DECODE)
    codec = _load_codec(args)

    def one(src: str, dst: str) -> dict[str, object]:
        name = _input_name(src)
        with (
            files.binary_input(src) as f,
            _progress(None, Path(src).name, "frame") as bar,
            files.atomic_path(dst) as tmp,
        ):
            result = files.decode_file(
                codec, f, tmp, args.sr, progress=bar.update, salvage=args.salvage, name=name
            )
        if result.damage is not None:
            print(
                f"spectrostream: {name}: salvaged {result.seconds:.2f} s ({result.damage})",
                file=sys.stderr,
            )
        return {"seconds": round(result.seconds, 3), "salvaged": result.damage is not None}

    files.run_batch("decode", pairs, one, args.report)
    return 0


def run_roundtrip(args: argparse.Namespace) -> int:
    from . import files

    pairs = files.plan(args.input, args.output, files.ROUNDTRIP)
    codec = _load_codec(args)
    levels = codec.levels_for(args.kbps, args.levels)

    def one(src: str, dst: str) -> dict[str, object]:
        buf = io.BytesIO()
        files.encode_file(codec, src, buf, levels=levels)
        size = buf.tell()
        buf.seek(0)
        with files.atomic_path(dst) as tmp:
            result = files.decode_file(codec, buf, tmp, sample_rate=args.sr, name=_input_name(src))
        secs = result.num_samples / result.header.sample_rate
        kbps = 8 * size / secs / 1000 if secs else 0.0
        print(
            f"{_input_name(src)}: {size} bytes, {kbps:.2f} kbps actual, {result.header.num_levels} levels",
            file=sys.stderr,
        )
        return {"bytes": size, "kbps": round(kbps, 3), "levels": result.header.num_levels}

    files.run_batch("roundtrip", pairs, one, args.report)
    return 0


def run_tokenize(args: argparse.Namespace) -> int:
    from . import files
    from .tokenize import TokenizeError, tokenize

    codec = _load_codec(args)
    rank, world = files.rank_world()
    try:
        report = tokenize(
            codec,
            args.input,
            args.output,
            codec.levels_for(args.kbps, args.levels),
            batch=args.batch,
            workers=args.workers,
            shard_files=args.shard_files,
            rank=rank,
            world=world,
        )
    except TokenizeError as e:
        raise UsageError(str(e)) from e
    print(
        f"{args.output}: {report.shards_written} shards written, {report.shards_skipped} already "
        f"done; {report.files} files ({report.audio_seconds / 3600:.2f} h) coded on {codec.device}",
        file=sys.stderr,
    )
    for name, error in report.failed:  # the reader's message names the file already: once
        reason = error.split(f"{name}: ", 1)[-1]
        print(f"spectrostream: could not read {name}: {reason}", file=sys.stderr)
    return 0


# ---- bitstream tools ----------------------------------------------------------------------
def run_info(args: argparse.Namespace) -> int:
    from .files import binary_input, naming_input
    from .weights import model_attribution

    with binary_input(args.input) as f, naming_input(_input_name(args.input)):
        data = f.read()
        header, codes = bitstream.decode_stream(data)
    print(bitstream.describe(header, codes.shape[1], len(data)))
    if (attribution := model_attribution(header.model_id)) is not None:
        print(f"weights:     {attribution}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from .weights import list_models

    for m in list_models():
        where = "not downloaded" if m.path is None else f"{m.size_bytes / 2**20:.1f} MiB, {m.path}"
        rev = f" (revision {m.revision[:12]})" if m.revision else ""
        print(f"{m.name:<11} {m.license:<10} {where}{rev}\n{'':<11} {m.description}")
    return 0


def run_transcode(args: argparse.Namespace) -> int:
    from . import files

    if args.kbps is None and args.levels is None:
        raise UsageError("transcode needs --kbps or --levels")
    files.check_ssc_target(args.output, args.force)
    files.check_plan([(args.input, args.output)])
    with (
        files.binary_input(args.input) as fin,
        files.binary_output(args.output) as fout,
        files.naming_input(_input_name(args.input)),
    ):
        bitstream.transcode_stream(fin, fout, levels=args.levels, kbps=args.kbps)
    return 0


def run_convert_official(args: argparse.Namespace) -> int:
    from .codec import Codec
    from .files import check_plan
    from .official import import_official
    from .weights import official_model_id

    for src in (args.encoder, args.decoder, args.quantizer, args.checkpoint):
        if src is not None:  # the output is never one of the inputs
            check_plan([(src, args.output)])
    model, parts = import_official(
        args.encoder, args.checkpoint, decoder=args.decoder, quantizer=args.quantizer
    )
    state = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in parts}
    codec = Codec(model, model_id=official_model_id(state, model.config), parts=parts)
    codec.save(args.output, fp16=args.fp16)
    print(
        f"wrote {args.output}: parts {', '.join(parts)}, model id {codec.model_id}", file=sys.stderr
    )
    return 0


def run_calibrate_int8(args: argparse.Namespace) -> int:
    import torch

    from . import audio_io
    from .codec import int8_calibration_path, load, write_int8_calibration
    from .files import check_output_not_input
    from .weights import resolve_model

    paths = _audio_files(args.audio)
    model_file = resolve_model(args.model, args.revision)
    out = args.output or int8_calibration_path(model_file)
    check_output_not_input(str(out), [*paths, str(model_file)])
    codec = load(args.model, revision=args.revision, device="cpu")
    clips = []
    for path in paths:
        info = audio_io.audio_info(path)
        want = round(args.seconds * info.sample_rate)
        total = info.num_frames or round((info.duration_s or 0) * info.sample_rate)
        start = max(0, (total - want) // 2)  # the middle: past any intro silence
        audio, sr = audio_io.read_range(path, start, want)
        if audio.shape[1] >= sr // 10:  # skip what is too short to say anything
            clips.append(torch.from_numpy(audio_io.resample(audio, sr, codec.sample_rate)))
    if not clips:
        raise UsageError("no audio long enough to calibrate on (0.1 s or more per file)")
    source = f"{len(clips)} clips of {args.seconds:g} s (middle): " + ", ".join(
        Path(p).name for p in paths
    )
    calibration = codec.calibrate_int8(
        clips, source=source, budget_db=args.budget_db, probe_clips=args.probe_clips
    )
    write_int8_calibration(calibration, out)
    print(
        f"wrote {out}: {len(calibration.ranges) - len(calibration.fp32_layers)} int8 layers, "
        f"{len(calibration.fp32_layers)} kept float32",
        file=sys.stderr,
    )
    return 0


def _audio_files(inputs: list[str]) -> list[str]:
    """Audio files named, or found below named directories (sorted); none is a UsageError."""
    from .audio_io import find_audio

    found: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(str(f) for f in find_audio(p))
        elif p.is_file():
            found.append(item)
        else:
            raise UsageError(f"{item}: no such file or directory")
    if not found:
        raise UsageError(f"no audio files in {', '.join(inputs)}")
    return found


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="spectrostream", description="SpectroStream neural audio codec (48 kHz stereo)."
    )
    parser.add_argument("--version", action="version", version=f"spectrostream {__version__}")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        help="CPU threads (default: 1 unless 2+ cores are idle; see docs/benchmarks.md)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_coding_commands(sub)
    _add_tokenize_command(sub)
    _add_bitstream_commands(sub)
    _add_convert_official_command(sub)
    _add_calibrate_int8_command(sub)
    _add_optional_commands(sub)
    return parser


def _add_coding_commands(sub: argparse._SubParsersAction) -> None:
    """encode, decode, roundtrip: audio <-> .ssc, one file or a directory tree."""
    p = sub.add_parser("encode", help="audio file or directory -> .ssc")
    p.add_argument("input", help="audio file, directory, or - for stdin")
    _output_arg(p, ".ssc file, directory (a.flac -> a.flac.ssc), or - for stdout")
    _levels_args(p)
    _model_arg(p)
    _device_args(p)
    p.add_argument("--force", action="store_true", help="allow .ssc data under an audio file name")
    _report_arg(p)
    p.set_defaults(func=run_encode)

    p = sub.add_parser("decode", help=".ssc file or directory -> audio")
    p.add_argument("input", help=".ssc file, directory, or - for stdin")
    _output_arg(p, "audio file (.wav/.flac/.ogg), directory (a.flac.ssc -> a.flac.wav), or - (WAV)")
    p.add_argument("--sr", type=sample_rate_arg, help="output sample rate (default: the original)")
    p.add_argument(
        "--salvage",
        action="store_true",
        help="decode every intact packet of a cut or damaged file and say how much was recovered",
    )
    _model_arg(p)
    _device_args(p)
    _report_arg(p)
    p.set_defaults(func=run_decode)

    p = sub.add_parser("roundtrip", help="encode and decode in one go (listening tests)")
    p.add_argument("input", help="audio file, directory, or - for stdin")
    _output_arg(p, "audio file, directory (a.flac -> a.flac.wav), or - (WAV)")
    p.add_argument("--sr", type=sample_rate_arg, help="output sample rate (default: the original)")
    _levels_args(p)
    _model_arg(p)
    _device_args(p)
    _report_arg(p)
    p.set_defaults(func=run_roundtrip)


def _output_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    """OUTPUT after the input, or as ``-o OUTPUT`` (how tokenize, export and eval spell it)."""
    p.add_argument("output", nargs="?", help=help_text)
    p.add_argument(
        "-o", "--output", dest="output_option", metavar="OUTPUT", help="the output, as an option"
    )
    p.set_defaults(output_parser=p)


def _one_output(args: argparse.Namespace) -> None:
    """Merge ``-o`` into the positional output; a usage error (exit status 2) when the output
    is missing or given twice."""
    if not hasattr(args, "output_option"):
        return
    given = [o for o in (args.output, args.output_option) if o is not None]
    if len(given) != 1:
        what = "is missing" if not given else "is given twice (after the input and with -o)"
        args.output_parser.error(f"the output {what}")
    args.output = given[0]


def _add_tokenize_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="every audio file below DIR -> code shards (LM training)")
    p.add_argument("input", metavar="DIR", help="folder searched recursively for audio files")
    p.add_argument("-o", "--output", required=True, help="output folder for the shards")
    _levels_args(p)
    _model_arg(p)
    _device_args(p)
    p.add_argument("--batch", type=int, default=16, help="clips coded at once (default: 16)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="audio decoding processes (default: 4, at most the number of CPUs)",
    )
    p.add_argument("--shard-files", type=int, default=256, help="files per shard (default: 256)")
    p.set_defaults(func=run_tokenize)


def _add_bitstream_commands(sub: argparse._SubParsersAction) -> None:
    """info, models, transcode: no audio is coded."""
    p = sub.add_parser("info", help="describe an .ssc file")
    p.add_argument("input", help=".ssc file, or - for stdin")
    p.set_defaults(func=run_info)

    p = sub.add_parser("models", help="list the named models, and which are on this machine")
    p.set_defaults(func=run_models)

    p = sub.add_parser("transcode", help="keep fewer RVQ levels of an .ssc file, without decoding")
    p.add_argument("input", help=".ssc file, or - for stdin")
    _output_arg(p, ".ssc file, or - for stdout")
    _levels_args(p)
    p.add_argument("--force", action="store_true", help="allow .ssc data under an audio file name")
    p.set_defaults(func=run_transcode)


def _add_convert_official_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-official", help="import Google's released weights")
    p.add_argument("--encoder", help="encoder.safetensors (params/encoder/...)")
    p.add_argument("--decoder", help="decoder.safetensors (resources/spectrostream/)")
    p.add_argument("--quantizer", help="quantizer.safetensors (resources/spectrostream/)")
    p.add_argument(
        "--checkpoint", help="mrt2_*.safetensors (params/soundstream/...): decoder and quantizer"
    )
    p.add_argument("-o", "--output", required=True, help="output model .safetensors")
    p.add_argument("--fp16", action="store_true", help="store weights in float16")
    p.set_defaults(func=run_convert_official)


def _add_calibrate_int8_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate-int8", help="calibrate a model's int8 convolutions on music (for --int8)"
    )
    p.add_argument("audio", nargs="+", help="audio files or directories of real music")
    _model_arg(p)
    p.add_argument("-o", "--output", help="calibration file (default: MODEL.int8.json beside it)")
    p.add_argument(
        "--seconds", type=float, default=4.0, help="seconds from the middle of each file (4)"
    )
    p.add_argument(
        "--budget-db",
        type=float,
        default=35.0,
        help="keep the most sensitive layers float32 until the rest's estimated noise is this "
        "far below the signal (default: %(default)s)",
    )
    p.add_argument(
        "--probe-clips",
        type=_positive_int,
        default=4,
        help="clips (the first N) for the per-layer sensitivity runs, the slow part (4)",
    )
    p.set_defaults(func=run_calibrate_int8)


def _add_optional_commands(sub: argparse._SubParsersAction) -> None:
    """evaluate, train, data, export-onnx: each module adds its own; skipped when an optional
    extra it needs (e.g. tensorboard) is not installed."""
    for module in ("evaluation.cli", "train.cli", "data.cli", "onnx_export"):
        try:
            mod = __import__(f"spectrostream.{module}", fromlist=["add_parser"])
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("spectrostream"):
                continue
            raise
        mod.add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    """Parse and run one command; the exit status comes from :func:`errors.exit_status`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _one_output(args)
    if getattr(args, "threads", None) is not None:
        from .runtime import set_threads  # imports torch: only when asked

        set_threads(args.threads)
    return exit_status(args.func)(args)


if __name__ == "__main__":
    sys.exit(main())
