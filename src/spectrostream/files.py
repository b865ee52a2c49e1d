"""Files around the codec: audio and ``.ssc`` files, directories, stdin and stdout.

Guarantees (docs/reliability.md states them for users):
- An output file appears complete or not at all: it is written to a unique temporary file in
  the target's directory (``tempfile.mkstemp``), fsynced, then renamed over the target
  (``os.replace``). Two writers of one path each win whole; a failure leaves no partial file.
- No output is ever an input: a target that is an input (same path, hard link or symlink to
  it) or that two inputs would share is refused before anything is written.
- Directory naming keeps the whole source name: ``a.flac`` -> ``a.flac.ssc`` (encode) and
  ``a.flac.wav`` (roundtrip); decode strips ``.ssc`` and adds ``.wav`` (``a.flac.ssc`` ->
  ``a.flac.wav``, ``a.ssc`` -> ``a.wav``). ``a.wav`` and ``a.flac`` never collide.
- A batch codes every file it can; failures are collected in a :class:`BatchReport`.
Numpy meets torch here, at the file boundary: readers and resamplers give numpy blocks.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from . import audio_io, bitstream
from .atomic import atomic_path
from .codec import CHUNK_SAMPLES, Codec
from .config import SAMPLE_RATE, SAMPLES_PER_CODE
from .errors import (
    AudioError,
    BatchError,
    BitstreamError,
    OutputError,
    SpectroStreamError,
    describe_os_error,
)

STDIO = "-"
ProgressFn = Callable[[int], None]


@contextmanager
def binary_output(target: str | Path) -> Iterator[BinaryIO]:
    """An open binary output: stdout for ``"-"``, else an atomic file (see :func:`atomic_path`)."""
    if str(target) == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        yield f


@contextmanager
def binary_input(source: str | Path) -> Iterator[BinaryIO]:
    """An open binary input: stdin for ``"-"``, else the file (one-line errors for the rest)."""
    if str(source) == STDIO:
        yield sys.stdin.buffer
        return
    if os.path.isdir(source):
        raise OSError(errno.EISDIR, "is a directory, not an .ssc file", str(source))
    with open(source, "rb") as f:
        yield f


@contextmanager
def naming_input(name: str) -> Iterator[None]:
    """``BitstreamError``s inside name the input once (``name: not an .ssc file ...``)."""
    try:
        yield
    except BitstreamError as e:
        if str(e).startswith(f"{name}: "):
            raise
        raise BitstreamError(f"{name}: {e}") from None


# ---- plans: which input goes to which output ----------------------------------------------
@dataclass(frozen=True)
class Naming:
    """How a command names outputs in directory mode (see the module docstring)."""

    wanted: Callable[[Path], bool]
    output: Callable[[str], str]


def _encoded(name: str) -> str:
    return name + bitstream.SUFFIX


def _decoded(name: str) -> str:
    return name.removesuffix(bitstream.SUFFIX) + ".wav"


ENCODE = Naming(audio_io.is_audio_file_name, _encoded)
DECODE = Naming(lambda p: p.suffix.lower() == bitstream.SUFFIX, _decoded)
ROUNDTRIP = Naming(audio_io.is_audio_file_name, lambda name: name + ".wav")


def rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def plan(src: str, dst: str, naming: Naming) -> list[tuple[str, str]]:
    """(input, output) pairs: one file, or a directory mirrored into ``dst`` (this rank's
    share under torchrun), checked by :func:`check_plan` before anything is written."""
    if src == STDIO or not os.path.isdir(src):
        into_folder = os.path.isdir(dst) or dst.endswith(("/", os.sep))  # "out/": a folder
        if dst != STDIO and src != STDIO and into_folder:
            dst = os.path.join(dst, naming.output(os.path.basename(src)))
        check_plan([(src, dst)])
        return [(src, dst)]
    if dst == STDIO:
        raise OutputError(f"{src} is a directory: give an output directory, not -")
    root, out = Path(src), Path(dst)
    inside = out.resolve() != root.resolve() and out.resolve().is_relative_to(root.resolve())
    files = sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and naming.wanted(f) and not (inside and _below(f, out))
    )
    if not files:
        raise AudioError(f"{src}: no matching files below this directory")
    every = [(str(f), str(out / f.relative_to(root).parent / naming.output(f.name))) for f in files]
    check_plan(every)  # every rank checks the whole plan, so all ranks refuse alike
    rank, world = rank_world()
    return every[rank::world]


def _below(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _inodes(paths: Iterable[str]) -> dict[tuple[int, int], str]:
    """(device, inode) -> path of each existing file (a link and its target share one)."""
    found = {}
    for path in paths:
        if path != STDIO and os.path.exists(path):
            st = os.stat(path)
            found[(st.st_dev, st.st_ino)] = path
    return found


def _refuse_input(dst: str, inputs: dict[tuple[int, int], str]) -> None:
    if dst != STDIO and os.path.exists(dst):
        st = os.stat(dst)
        if (st.st_dev, st.st_ino) in inputs:
            raise OutputError(
                f"{dst}: refusing to overwrite the input {inputs[st.st_dev, st.st_ino]}"
            )


def check_output_not_input(dst: str, inputs: Iterable[str]) -> None:
    """Refuse one output that is any of several inputs (path, hard link or symlink)."""
    _refuse_input(dst, _inodes(inputs))


def check_plan(pairs: list[tuple[str, str]]) -> None:
    """Refuse outputs that are inputs (path, hard link or symlink) or that two inputs share."""
    inputs = _inodes(src for src, _ in pairs)
    seen: dict[str, str] = {}
    clashes = []
    for src, dst in pairs:
        if dst == STDIO:
            continue
        key = os.path.normcase(os.path.abspath(dst))
        if key in seen:
            clashes.append(f"{seen[key]} and {src} -> {dst}")
        seen[key] = src
        _refuse_input(dst, inputs)
    if clashes:
        raise OutputError(f"outputs would collide: {'; '.join(clashes[:5])}")


def check_ssc_target(dst: str, force: bool) -> None:
    """``.ssc`` bytes go to ``-`` or a non-audio name unless forced (``x.wav`` would look like
    audio that no player can read)."""
    if dst != STDIO and audio_io.is_audio_file_name(dst) and not force:
        raise OutputError(
            f"{dst}: refusing to write .ssc data to an audio file name (use a {bitstream.SUFFIX} "
            "name, or --force)"
        )


# ---- encoding and decoding files ----------------------------------------------------------
def open_for_model(src: str | Path, channels: int) -> audio_io.AudioReader:
    """Open an audio file (or "-") for a model coding ``channels`` channels (mono or that many)."""
    reader = audio_io.AudioReader(src, block_frames=CHUNK_SAMPLES)
    try:
        audio_io.check_channels(reader.channels, channels, name=reader.name)
    except AudioError:
        reader.close()
        raise
    return reader


def model_blocks(
    reader: audio_io.AudioReader, channels: int, progress: ProgressFn | None = None
) -> Iterator[torch.Tensor]:
    """The audio a model codes, block by block: 48 kHz [channels, n] tensors, mono as
    dual-mono. ``progress`` gets the number of source frames of each block read."""
    resampler = audio_io.StreamingResampler(reader.sample_rate, SAMPLE_RATE, reader.channels)
    for block in reader:
        if progress is not None:
            progress(block.shape[1])
        yield torch.from_numpy(audio_io.to_channels(resampler.process(block), channels))
    yield torch.from_numpy(audio_io.to_channels(resampler.flush(), channels))


def read_for_model(src: str | Path, channels: int) -> tuple[torch.Tensor, audio_io.AudioInfo]:
    """A whole file as :func:`encode_file` codes it: (48 kHz [channels, T48], the source's info
    with the number of frames actually read)."""
    frames = [0]
    with open_for_model(src, channels) as reader:
        x = torch.cat(list(model_blocks(reader, channels, frames.append)), dim=1)
        n, sr = sum(frames), reader.sample_rate
        info = audio_io.AudioInfo(sr, reader.channels, n, n / sr, reader.format)
    return x, info


def encode_file(
    codec: Codec,
    src: str | Path,
    dst: BinaryIO,
    kbps: float | None = None,
    levels: int | None = None,
    progress: ProgressFn | None = None,
) -> bitstream.StreamHeader:
    """Encode an audio file (or "-") to an open binary output, block by block."""
    n = codec.levels_for(kbps, levels)
    with open_for_model(src, codec.channels) as reader:
        header = codec.header_for(reader.sample_rate, reader.channels, reader.num_frames, n)
        writer = bitstream.StreamWriter(dst, header)
        total = 0

        def count(frames: int) -> None:
            nonlocal total
            total += frames
            if progress is not None:
                progress(frames)

        blocks = (b[None] for b in model_blocks(reader, codec.channels, count))
        for codes in codec.encode_blocks(blocks, n):
            writer.write(codes[0].numpy())
        if total == 0:
            raise AudioError(f"{reader.name}: no samples")
        writer.close(total)
    return header


@dataclass(frozen=True)
class Decoded:
    """What :func:`decode_file` wrote: the header, the true length of the original, the
    seconds written, and for a salvaged stream the error that cut it short."""

    header: bitstream.StreamHeader
    num_samples: int | None
    seconds: float
    damage: str | None = None


def decode_file(
    codec: Codec,
    src: BinaryIO,
    dst: str | Path,
    sample_rate: int | None = None,
    progress: ProgressFn | None = None,
    subtype: str | None = None,
    salvage: bool = False,
    name: str = "input",
) -> Decoded:
    """Decode an .ssc stream (open binary input) to an audio file (or "-"), packet by packet.

    A damaged stream (cut short, or a CRC error) is an error naming how much before the damage
    was intact; with ``salvage`` every intact packet is decoded and ``damage`` says why it stops.
    """
    with naming_input(name):
        reader = bitstream.StreamReader(src, expected_model_id=codec.model_id)
        codec.check_header(reader.header)
    header = reader.header
    sr = header.sample_rate if sample_rate is None else int(sample_rate)
    source = _Packets(reader, name, salvage, progress)
    with audio_io.AudioWriter(dst, sr, header.channels, subtype=subtype) as out:
        owed = functools.partial(source.frames_owed, sample_rate=sr)
        written = _write_decoded(codec, iter(source), out, header.channels, sr, owed)
        if source.damage and written == 0:
            raise BitstreamError(f"{name}: {source.damage}; nothing before the damage is intact")
    return Decoded(header, reader.num_samples, written / sr, source.damage)


class _Packets:
    """The code packets of a stream as [1, L, n] tensors; damage is an error naming what is
    intact, or (``salvage``) the end of the stream, recorded in ``damage``."""

    def __init__(
        self,
        reader: bitstream.StreamReader,
        name: str,
        salvage: bool,
        progress: ProgressFn | None,
    ) -> None:
        self.reader, self.name, self.salvage, self.progress = reader, name, salvage, progress
        self.damage: str | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        reader = self.reader
        try:
            for codes in reader:
                if self.progress is not None:
                    self.progress(codes.shape[1])
                yield torch.from_numpy(codes)[None]
        except BitstreamError as e:
            if not self.salvage:
                intact = max(0, reader.num_frames - 1) / reader.header.frame_rate
                kept = (
                    f"the first {intact:.2f} s before the damage are intact (--salvage decodes them)"
                    if intact
                    else "nothing before the damage is intact"
                )
                raise BitstreamError(f"{self.name}: {e}; {kept}") from None
            self.damage = str(e)

    def frames_owed(self, written: int, available: int, sample_rate: int) -> int:
        """Output frames still owed: the original length, but never invented past the damage."""
        reader = self.reader
        if reader.num_samples is None:
            return available
        total = audio_io.resampled_length(
            reader.num_samples, reader.header.sample_rate, sample_rate
        )
        owed = max(0, total - written)
        return min(owed, available) if self.damage else owed


def _write_decoded(
    codec: Codec,
    packets: Iterator[torch.Tensor],
    out: audio_io.AudioWriter,
    channels: int,
    sr: int,
    tail_frames: Callable[[int, int], int],
) -> int:
    """Decode, resample and write; hold back the last frames until ``tail_frames(written,
    available)`` says how many the stream owes. Returns the frames written."""
    resampler = audio_io.StreamingResampler(SAMPLE_RATE, sr, codec.channels)
    holdback = audio_io.resampled_length(3 * SAMPLES_PER_CODE, SAMPLE_RATE, sr) + 64
    pending = np.zeros((channels, 0), dtype=np.float32)
    written = 0
    for audio48 in codec.decode_chunks(packets):
        block = torch.from_numpy(resampler.process(audio48[0].numpy()))
        pending = np.concatenate([pending, codec.restore_channels(block, channels).numpy()], 1)
        cut = pending.shape[1] - holdback
        if cut > 0:
            out.write(pending[:, :cut])
            written += cut
            pending = pending[:, cut:]
    tail = codec.restore_channels(torch.from_numpy(resampler.flush()), channels).numpy()
    tail = np.concatenate([pending, tail], axis=1)
    want = tail_frames(written, tail.shape[1])
    out.write(audio_io.fit_length(tail, want))
    return written + want


# ---- batches ------------------------------------------------------------------------------
@dataclass
class BatchReport:
    """What a command did to each file; written as JSON by ``--report PATH``."""

    command: str
    files: list[dict[str, object]] = field(default_factory=list)

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(str(f["input"]), str(f["error"])) for f in self.files if f["status"] == "failed"]

    def to_json(self) -> str:
        failed = len(self.failures)
        summary = {"ok": len(self.files) - failed, "failed": failed}
        return json.dumps({"command": self.command, **summary, "files": self.files}, indent=2)

    def write(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(self.to_json() + "\n")


def run_batch(
    command: str,
    pairs: list[tuple[str, str]],
    work: Callable[[str, str], dict[str, object] | None],
    report_path: str | None = None,
) -> BatchReport:
    """Run ``work(input, output)`` on every pair. A single pair fails as usual; in a batch a
    failing file is recorded and the rest still run. Raises BatchError at the end if any
    failed (after writing the report)."""
    if report_path is not None:  # the report is an output too: never an input, never shared
        check_plan([*pairs, ("--report", str(report_path))])
        if os.path.isdir(report_path):
            raise OutputError(f"{report_path}: is a directory; --report needs a file name")
    report = BatchReport(command)
    for src, dst in pairs:
        try:
            info = work(src, dst) or {}
        except (SpectroStreamError, OSError) as e:
            if len(pairs) == 1 or isinstance(e, BrokenPipeError):
                if report_path is not None:
                    report.files.append(_failed(src, dst, e))
                    report.write(report_path)
                raise
            report.files.append(_failed(src, dst, e))
            continue
        report.files.append({"input": src, "output": dst, "status": "ok", **info})
    if report_path is not None:
        report.write(report_path)
    failures = report.failures
    if failures:
        for src, message in failures:
            named = message if message.startswith(src) else f"{src}: {message}"
            print(f"spectrostream: failed: {named}", file=sys.stderr)
        raise BatchError(
            f"{len(failures)} of {len(pairs)} files failed (listed above); the other outputs "
            "are complete",
            failures,
        )
    return report


def _failed(src: str, dst: str, error: Exception) -> dict[str, object]:
    message = describe_os_error(error) if isinstance(error, OSError) else str(error)
    return {"input": src, "output": dst, "status": "failed", "error": message}
