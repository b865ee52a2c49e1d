"""Command line: ``spectrostream <command>``; one function per subcommand.

User mistakes (bad files, bad arguments, missing model) print one line and exit with status 2.
A directory argument processes every audio file below it into a mirrored output tree; under
``torchrun`` the files are split across ranks (RANK / WORLD_SIZE).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from . import audio_io, bitstream
from .audio_io import AudioError
from .config import ConfigError
from .official import ModelError
from .runtime import set_threads

STDIO = "-"
USER_ERRORS = (AudioError, bitstream.BitstreamError, ModelError, ConfigError)


class UsageError(ValueError):
    """A wrong combination of command-line arguments."""


def _fail(msg: str) -> int:
    print(f"spectrostream: error: {msg}", file=sys.stderr)
    return 2


@contextmanager
def _open_out(path: str):
    if path == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def _open_in(path: str):
    if path == STDIO:
        yield sys.stdin.buffer
        return
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"{path}: no such file")
    with open(p, "rb") as f:
        yield f


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _pairs(src: str, dst: str, want: Callable[[Path], bool], suffix: str) -> list[tuple[str, str]]:
    """(input, output) pairs: one file, or a directory mirrored into ``dst`` (this rank's share)."""
    p = Path(src)
    if src != STDIO and p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and want(f))
        if not files:
            raise AudioError(f"{src}: no matching files below this directory")
        rank, world = _rank_world()
        return [
            (str(f), str(Path(dst) / f.relative_to(p).with_suffix(suffix)))
            for f in files[rank::world]
        ]
    return [(src, dst)]


def _levels_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kbps", type=float, help="total bit rate (0.25 kbps per level; default: all)")
    g.add_argument("--levels", type=int, help="number of RVQ levels (1..64)")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="model .safetensors path or built-in name (default: %(default)s)",
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
def _encode_one(codec, src: str, dst: str, kbps: float | None, levels: int | None) -> None:
    total = None
    if src != STDIO:
        info = audio_io.audio_info(src)
        total = info.num_frames
    with _progress(total, Path(src).name, "smp") as bar, _open_out(dst) as out:
        codec.encode_file(src, out, kbps=kbps, levels=levels, progress=bar.update)


@contextmanager
def _audio_out(path: str):
    """Yields where to write an audio file; a file appears complete or not at all."""
    if path == STDIO:
        yield path
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".partial-{target.name}")  # keeps the extension (it picks the format)
    try:
        yield str(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _decode_one(codec, src: str, dst: str, sr: int | None) -> None:
    with (
        _open_in(src) as f,
        _progress(None, Path(src).name, "frame") as bar,
        _audio_out(dst) as out,
    ):
        codec.decode_file(f, out, sample_rate=sr, progress=bar.update)


def run_encode(args: argparse.Namespace) -> int:
    from .codec import load

    codec = load(args.model)
    pairs = _pairs(args.input, args.output, audio_io.is_audio_file_name, bitstream.SUFFIX)
    for src, dst in tqdm(pairs, desc="files", disable=len(pairs) == 1 or None, file=sys.stderr):
        _encode_one(codec, src, dst, args.kbps, args.levels)
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from .codec import load

    codec = load(args.model)
    pairs = _pairs(args.input, args.output, lambda f: f.suffix == bitstream.SUFFIX, ".wav")
    for src, dst in tqdm(pairs, desc="files", disable=len(pairs) == 1 or None, file=sys.stderr):
        _decode_one(codec, src, dst, args.sr)
    return 0


def run_roundtrip(args: argparse.Namespace) -> int:
    import io

    from .codec import load

    codec = load(args.model)
    pairs = _pairs(args.input, args.output, audio_io.is_audio_file_name, ".wav")
    for src, dst in tqdm(pairs, desc="files", disable=len(pairs) == 1 or None, file=sys.stderr):
        buf = io.BytesIO()
        codec.encode_file(src, buf, kbps=args.kbps, levels=args.levels)
        size = buf.tell()
        buf.seek(0)
        with _audio_out(dst) as out:
            header = codec.decode_file(buf, out, sample_rate=args.sr)
        if header.num_samples:
            secs = header.num_samples / header.sample_rate
            print(
                f"{src}: {size} bytes, {8 * size / secs / 1000:.2f} kbps actual, "
                f"{header.num_levels} levels",
                file=sys.stderr,
            )
    return 0


# ---- bitstream tools ----------------------------------------------------------------------
def run_info(args: argparse.Namespace) -> int:
    with _open_in(args.input) as f:
        data = f.read()
    header, codes = bitstream.decode_stream(data)
    print(bitstream.describe(header, codes.shape[1], len(data)))
    return 0


def run_transcode(args: argparse.Namespace) -> int:
    if args.kbps is None and args.levels is None:
        raise UsageError("transcode needs --kbps or --levels")
    with _open_in(args.input) as fin:
        reader = bitstream.StreamReader(fin)
        h = reader.header
        per_level = bitstream.kbps_for_levels(1, h.frame_rate, h.codebook_size)
        levels = args.levels if args.levels is not None else int(args.kbps / per_level + 1e-9)
        if not 1 <= levels <= h.num_levels:
            raise UsageError(
                f"the file has {h.num_levels} levels ({per_level:g} kbps each); "
                f"cannot keep {levels}"
            )
        new = bitstream.StreamHeader(
            sample_rate=h.sample_rate,
            channels=h.channels,
            num_samples=h.num_samples,
            num_levels=levels,
            frame_rate=h.frame_rate,
            codebook_size=h.codebook_size,
            model_id=h.model_id,
        )
        with _open_out(args.output) as fout:
            writer = bitstream.StreamWriter(fout, new)
            for codes in reader:
                writer.write(codes[:levels])
            writer.close(reader.num_samples)
    return 0


def run_convert_official(args: argparse.Namespace) -> int:
    from .codec import Codec
    from .official import import_official

    model, parts = import_official(args.encoder, args.checkpoint)
    codec = Codec(model, parts=parts)
    codec.save(args.output, fp16=args.fp16)
    print(
        f"wrote {args.output}: parts {', '.join(parts)}, model id {codec.model_id}", file=sys.stderr
    )
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


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

    p = sub.add_parser("encode", help="audio file or directory -> .ssc")
    p.add_argument("input", help="audio file, directory, or - for stdin")
    p.add_argument("output", help=".ssc file, directory, or - for stdout")
    _levels_args(p)
    _model_arg(p)
    p.set_defaults(func=run_encode)

    p = sub.add_parser("decode", help=".ssc file or directory -> audio")
    p.add_argument("input", help=".ssc file, directory, or - for stdin")
    p.add_argument("output", help="audio file (.wav/.flac/.ogg), directory, or - (WAV on stdout)")
    p.add_argument("--sr", type=int, help="output sample rate (default: the original)")
    _model_arg(p)
    p.set_defaults(func=run_decode)

    p = sub.add_parser("roundtrip", help="encode and decode in one go (listening tests)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--sr", type=int, help="output sample rate (default: the original)")
    _levels_args(p)
    _model_arg(p)
    p.set_defaults(func=run_roundtrip)

    p = sub.add_parser("info", help="describe an .ssc file")
    p.add_argument("input")
    p.set_defaults(func=run_info)

    p = sub.add_parser("transcode", help="keep fewer RVQ levels of an .ssc file, without decoding")
    p.add_argument("input")
    p.add_argument("output")
    _levels_args(p)
    p.set_defaults(func=run_transcode)

    p = sub.add_parser("convert-official", help="import Google's released weights")
    p.add_argument("--encoder", help="encoder.safetensors (params/encoder/...)")
    p.add_argument("--checkpoint", help="mrt2_*.safetensors (params/soundstream/...)")
    p.add_argument("-o", "--output", required=True, help="output model .safetensors")
    p.add_argument("--fp16", action="store_true", help="store weights in float16")
    p.set_defaults(func=run_convert_official)

    for module in ("evaluation.cli", "train.cli", "data.cli", "onnx_export"):
        try:
            mod = __import__(f"spectrostream.{module}", fromlist=["add_parser"])
        except ModuleNotFoundError as e:  # optional extras (e.g. tensorboard) not installed
            if not (e.name or "").startswith("spectrostream"):
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:  # else load() applies the default (inference only)
        set_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except (*USER_ERRORS, UsageError) as e:
        return _fail(str(e))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        return _fail(f"{e.filename}: {e.strerror}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
