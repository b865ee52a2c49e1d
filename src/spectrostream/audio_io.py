"""Audio input and output: read, write, stream and resample. Audio is float32 ``[C, T]``.

Reading. WAV, FLAC, OGG (Vorbis/Opus), AIFF and whatever else libsndfile opens go through
soundfile; MP3, M4A/AAC, Opus, WebM and MKA, and anything libsndfile cannot open, go through
PyAV (FFmpeg). The extension only picks which decoder tries first (PyAV for .mp3 .m4a .aac .opus
.webm .mka); both probe the content: a ``.wav`` that libsndfile rejects is still tried with
PyAV, and MP3 data that libsndfile would open is handed to PyAV so that a file and the same bytes
on stdin decode identically. Every decoded block is checked for NaN/Inf. Channels are
returned as stored (mono is ``[1, T]``, 5.1 is ``[6, T]``); :func:`to_channels` is the one
policy for changing their number. :func:`read_range` reads a crop by seeking (training data).

``"-"`` means stdin when reading and stdout when writing; readers also take a whole file's
``bytes``. Stdin is always read to the end and buffered in memory before decoding (both
decoders probe and seek, which a pipe cannot), so block iteration over stdin bounds the decoded
audio in memory but not the input bytes.

Writing. The extension picks the format: ``.wav`` (default PCM_16, or PCM_24/PCM_32/FLOAT/
DOUBLE), ``.flac`` (PCM_16 default, PCM_24, PCM_S8), ``.ogg``/``.oga`` (Vorbis), ``.aif``/
``.aiff`` (PCM_16 default). ``"-"`` writes WAV to stdout. Samples are clipped to [-1, 1] for
every subtype except FLOAT and DOUBLE, and PCM subtypes are rounded to the nearest integer
here (libsndfile's own float -> PCM conversion floors, a -0.5 LSB bias), so the read-back error
is at most half a step (2**-16 for PCM_16).

Streaming WAV to stdout: libsndfile cannot write WAV to a non-seekable stream (it seeks back to
fix the header and writes a corrupt file into a pipe), so :class:`AudioWriter` writes stdout
WAV itself with the RIFF and data sizes set to 0xFFFFFFFF ("unknown length", as FFmpeg and SoX
do on pipes; libsndfile, FFmpeg and this module read such files to the end). If stdout is
seekable (redirected to a regular file), the sizes are patched on close.

:func:`encode_audio` gives the bytes a file would hold, in memory.

Resampling uses soxr (VHQ). The output length is ``floor(T * sr_out / sr_in + 1/2)``
(:func:`resampled_length`), which is what soxr produces; both :func:`resample` and
:class:`StreamingResampler` enforce it, and the streamed output equals the one-shot output
sample for sample (soxr is deterministic and chunking-invariant; tests check it to 1e-6).
"""

from __future__ import annotations

import io
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO, Protocol, Self, TypeVar

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

if TYPE_CHECKING:
    import av
    import av.audio.stream
    import av.container

STDIO = "-"
STDIN_NAME = "<stdin>"
STDOUT_NAME = "<stdout>"
BYTES_NAME = "<bytes>"

# What the readers take: a path, "-" for stdin, or a whole file's bytes.
AudioSource = str | Path | bytes
ArrayT = TypeVar("ArrayT")  # a numpy array or a torch tensor (to_channels takes either)

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".wav",
        ".flac",
        ".ogg",
        ".oga",
        ".mp3",
        ".m4a",
        ".aac",
        ".opus",
        ".aif",
        ".aiff",
        ".webm",
        ".mka",
    }
)

# Containers/codecs decoded with PyAV even though libsndfile might open some of them (MP3).
_PYAV_EXTENSIONS = frozenset({".mp3", ".m4a", ".aac", ".opus", ".webm", ".mka"})
_SOUNDFILE_FORMATS_HANDED_TO_PYAV = frozenset({"MP3"})

# extension -> (libsndfile major format, default subtype)
_WRITE_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".oga": ("OGG", "VORBIS"),
    ".aif": ("AIFF", "PCM_16"),
    ".aiff": ("AIFF", "PCM_16"),
}
_UNCLIPPED_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})

_READ_ALL_BLOCK_FRAMES = 1 << 18
_SEEK_PREROLL_S = 0.2  # decoded and dropped before a fast seek's target (Opus asks 80 ms)
_RESAMPLE_QUALITY = "VHQ"


class _NotAudioError(AudioError):
    """PyAV could not open the input; ``reason`` is the message without the file name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: not a recognised audio file ({reason})")
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, from its header (and, for PyAV, its first decoded frame).

    num_frames: exact length in samples per channel when the container states it (libsndfile
        formats); None for streams decoded with PyAV, whose stated lengths include encoder
        delay/padding and are estimates.
    duration_s: num_frames / sample_rate when known, else the container's estimate, else None.
    format: short name for messages: the libsndfile format ("WAV", "FLAC", "OGG") or the
        FFmpeg decoder ("mp3float", "aac", "opus").
    """

    sample_rate: int
    channels: int
    num_frames: int | None
    duration_s: float | None
    format: str


def is_audio_file_name(path: str | Path) -> bool:
    """Whether ``path`` has one of :data:`AUDIO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def find_audio(root: str | Path) -> list[Path]:
    """Every audio file (by name) below the directory ``root``, sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and is_audio_file_name(p))


def to_channels_first(audio: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """``[T]`` -> ``[1, T]``; ``[C, T]`` unchanged; as contiguous ``dtype`` (float32).

    Accepts numpy arrays and CPU torch tensors (anything ``np.asarray`` takes). A 2-D input is
    taken to be channels-first already; nothing is guessed from the shape.
    """
    array = np.asarray(audio)
    if array.ndim == 1:
        array = array[None, :]
    elif array.ndim != 2:
        raise ValueError(f"audio must be [T] or [C, T], got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array, dtype=dtype)


def to_channels(
    audio: ArrayT, channels: int, *, downmix: bool = False, name: str = "audio"
) -> ArrayT:
    """``[..., C, T]`` -> ``[..., channels, T]``, the one channel policy (numpy or torch).

    The same count is returned as is; mono is duplicated (dual mono). More channels than
    wanted: with ``downmix`` a mono target gets the channel mean and any other target the
    first ``channels``; without it, AudioError. Any other mismatch is an AudioError
    (:func:`check_channels` tells before any audio is decoded).
    """
    have = audio.shape[-2]
    if have > 2 >= audio.shape[-1] and not (have == channels or downmix):
        raise AudioError(
            f"{name}: {have} channels of {audio.shape[-1]} samples looks like [samples, "
            "channels]; pass [channels, samples] (transpose it)"
        )
    check_channels(have, channels, downmix=downmix, name=name)
    if have == channels:
        return audio
    if have == 1:
        return audio[..., [0] * channels, :]
    if channels == 1:
        return audio.mean(axis=-2, keepdims=True)
    return audio[..., :channels, :]


def check_channels(have: int, channels: int, *, downmix: bool = False, name: str = "audio") -> None:
    """Raises AudioError unless :func:`to_channels` can turn ``have`` channels into ``channels``."""
    if have == channels or have == 1 or (downmix and have > channels):
        return
    raise AudioError(
        f"{name}: {have} channels; expected {channels} (mono is duplicated); downmix first"
    )


# --------------------------------------------------------------------------------------------
# Reading


def _load_source(path: AudioSource) -> tuple[str, Path | bytes]:
    """Returns (display name, path or bytes); rejects missing and empty input."""
    if isinstance(path, bytes):
        if not path:
            raise AudioError(f"{BYTES_NAME}: empty input (0 bytes)")
        return BYTES_NAME, path
    if str(path) == STDIO:
        data = sys.stdin.buffer.read()
        if not data:
            raise AudioError(f"{STDIN_NAME}: empty input (0 bytes)")
        return STDIN_NAME, data
    file_path = Path(path)
    name = str(file_path)
    try:
        with open(file_path, "rb") as handle:
            first_byte = handle.read(1)
    except FileNotFoundError:
        raise AudioError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise AudioError(f"{name}: is a directory, not an audio file") from None
    except OSError as error:
        raise AudioError(f"{name}: cannot open: {error.strerror or error}") from None
    if not first_byte:
        raise AudioError(f"{name}: empty file (0 bytes)")
    return name, file_path


class _Decoder(Protocol):
    sample_rate: int
    channels: int
    num_frames: int | None
    duration_s: float | None
    format: str

    def read(self, max_frames: int) -> np.ndarray: ...  # [C, m], m == 0 only at the end

    def skip(self, frames: int) -> None: ...  # exact: the next read starts at that frame

    def seek(self, frames: int) -> None: ...  # fast: by the container's index and timestamps

    def close(self) -> None: ...


def _skip_by_reading(decoder: _Decoder, frames: int) -> None:
    while frames > 0:
        got = decoder.read(min(frames, _READ_ALL_BLOCK_FRAMES)).shape[1]
        if got == 0:
            return
        frames -= got


class _SoundfileDecoder:
    def __init__(self, handle: sf.SoundFile, name: str) -> None:
        self._handle = handle
        self._name = name
        self.sample_rate = int(handle.samplerate)
        self.channels = int(handle.channels)
        self.num_frames: int | None = int(handle.frames)
        self.duration_s: float | None = self.num_frames / self.sample_rate
        self.format = str(handle.format)

    def read(self, max_frames: int) -> np.ndarray:
        try:
            block = self._handle.read(max_frames, dtype="float32", always_2d=True)
        except sf.SoundFileError as error:
            raise AudioError(f"{self._name}: decoding failed: {error}") from None
        return np.ascontiguousarray(block.T)

    def skip(self, frames: int) -> None:
        if self._handle.seekable():
            self._handle.seek(min(frames, self._handle.frames))
        else:
            _skip_by_reading(self, frames)

    seek = skip  # libsndfile seeks exactly

    def close(self) -> None:
        self._handle.close()


def _import_av() -> ModuleType:
    """PyAV, imported on first use: it takes ~0.4 s to load and most runs only need soundfile."""
    import av
    import av.error

    return av


_AVBlock = tuple[np.ndarray, int, int | None]  # (float32 [C, n], sample rate, pts)


class _PyAVDecoder:
    def __init__(self, source: Path | bytes, name: str) -> None:
        av = _import_av()
        self._name = name
        self._ffmpeg_error = av.error.FFmpegError
        try:
            # Tags are not always valid UTF-8 (e.g. Latin-1 ID3); PyAV's default is to raise.
            opened = av.open(
                io.BytesIO(source) if isinstance(source, bytes) else str(source),
                metadata_errors="replace",
            )
        except self._ffmpeg_error as error:
            raise _NotAudioError(name, _ffmpeg_reason(error)) from None
        self._container: av.container.InputContainer = opened
        self._closed = False
        try:
            streams = self._container.streams.audio
            if not streams:
                container_name = self._container.format.name
                raise _NotAudioError(name, f"no audio stream in a '{container_name}' container")
            stream = streams[0]
            self.format = str(stream.codec_context.name)
            self._stream = stream
            self._frames: Iterator[_AVBlock] | None = self._decode(stream)
            first = next(self._frames, None)
            if first is None and not (stream.codec_context.sample_rate and stream.channels):
                # FFmpeg picks some demuxers by file extension alone (e.g. ".flac"), then finds
                # nothing decodable: garbage, not an empty recording.
                raise _NotAudioError(name, f"no decodable {self.format} audio")
            if first is None:
                raise AudioError(f"{name}: contains no audio samples")
        except BaseException:
            self.close()
            raise
        self._pending: list[np.ndarray] = [first[0]]
        self._pending_frames = first[0].shape[1]
        self.channels = first[0].shape[0]
        self.sample_rate = first[1]
        self.num_frames = None
        self.duration_s = self._estimated_duration(stream)

    def _estimated_duration(self, stream: av.audio.stream.AudioStream) -> float | None:
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if self._container.duration is not None:
            return self._container.duration / 1_000_000  # AV_TIME_BASE
        return None

    def _decode(self, stream: av.audio.stream.AudioStream) -> Iterator[_AVBlock]:
        """Yields (float32 [C, n], sample rate, pts) per non-empty frame; the format must not
        change."""
        first_rate: int | None = None
        first_channels: int | None = None
        decoded = 0
        try:
            for frame in self._container.decode(stream):
                if frame.samples == 0:
                    continue
                array = _av_frame_to_array(frame)
                rate, channels = int(frame.sample_rate), array.shape[0]
                if first_rate is None:
                    first_rate, first_channels = rate, channels
                elif (rate, channels) != (first_rate, first_channels):
                    raise AudioError(
                        f"{self._name}: stream changes format mid-way "
                        f"({first_rate} Hz x {first_channels} -> {rate} Hz x {channels})"
                    )
                decoded += array.shape[1]
                yield array, rate, frame.pts
        except self._ffmpeg_error as error:
            reason = _ffmpeg_reason(error)
            if not decoded:
                raise _NotAudioError(self._name, f"FFmpeg cannot decode it: {reason}") from None
            raise AudioError(
                f"{self._name}: decoding failed after frame {decoded}: {reason}"
            ) from None

    def read(self, max_frames: int) -> np.ndarray:
        while self._pending_frames < max_frames and self._frames is not None:
            item = next(self._frames, None)
            if item is None:
                self._frames = None
            else:
                self._pending.append(item[0])
                self._pending_frames += item[0].shape[1]
        if not self._pending:
            return np.zeros((self.channels, 0), dtype=np.float32)
        joined = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending, 1)
        out, rest = joined[:, :max_frames], joined[:, max_frames:]
        self._pending = [rest] if rest.shape[1] else []
        self._pending_frames = rest.shape[1]
        return np.ascontiguousarray(out)

    def skip(self, frames: int) -> None:
        _skip_by_reading(self, frames)

    def seek(self, frames: int) -> None:
        """Seeks the container to the key frame at least :data:`_SEEK_PREROLL_S` before
        ``frames`` (lapped codecs need the previous frame to decode the next one), then drops
        decoded samples up to ``frames`` by their timestamps, zero-filling a gap if it lands
        after. As exact as the container's timestamps: VBR MP3 seeking is approximate."""
        time_base = self._stream.time_base
        seconds = frames / self.sample_rate - _SEEK_PREROLL_S
        if seconds <= _SEEK_PREROLL_S or time_base is None:  # near the start: decode up to it
            _skip_by_reading(self, frames)
            return
        origin = self._stream.start_time or 0  # the pts of frame 0 (encoder delay, pre-skip)
        target = origin + int(seconds / time_base)
        self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._decode(self._stream)
        self._pending, self._pending_frames = [], 0
        position: int | None = None
        for array, _, pts in self._frames:
            if position is None:
                position = (
                    0 if pts is None else round((pts - origin) * time_base * self.sample_rate)
                )
                if position > frames:  # landed after the target
                    self._pending.append(np.zeros((self.channels, position - frames), np.float32))
            if position + array.shape[1] > frames:
                self._pending.append(array[:, max(0, frames - position) :])
                break
            position += array.shape[1]
        self._pending_frames = sum(block.shape[1] for block in self._pending)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()


def _ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without errno/path."""
    return str(getattr(error, "strerror", None) or error)


_AV_SAMPLE_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63}


def _av_frame_to_array(frame: av.AudioFrame) -> np.ndarray:
    """An AudioFrame of any sample format -> float32 [C, n]."""
    channels = len(frame.layout.channels)
    n = frame.samples
    raw = frame.to_ndarray().reshape(-1)[: channels * n]
    planar = frame.format.is_planar
    array = raw.reshape(channels, n) if planar else raw.reshape(n, channels).T
    base = frame.format.name[:-1] if planar else frame.format.name
    if base in ("flt", "dbl"):
        return np.ascontiguousarray(array, dtype=np.float32)
    if base == "u8":
        return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if base in _AV_SAMPLE_SCALE:
        return (array.astype(np.float64) / _AV_SAMPLE_SCALE[base]).astype(np.float32)
    raise AudioError(f"unsupported decoded sample format '{frame.format.name}'")


def _open_decoder(path: AudioSource) -> tuple[str, _Decoder]:
    name, source = _load_source(path)
    if isinstance(source, Path) and source.suffix.lower() in _PYAV_EXTENSIONS:
        return name, _PyAVDecoder(source, name)
    try:
        handle = sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except sf.SoundFileError as soundfile_error:
        try:
            return name, _PyAVDecoder(source, name)
        except _NotAudioError as pyav_error:
            reasons = f"libsndfile: {_short_sf_error(soundfile_error)}; FFmpeg: {pyav_error.reason}"
            raise _NotAudioError(name, reasons) from None
    if handle.format in _SOUNDFILE_FORMATS_HANDED_TO_PYAV:
        handle.close()
        return name, _PyAVDecoder(source, name)
    decoder = _SoundfileDecoder(handle, name)
    if decoder.num_frames == 0:
        decoder.close()
        raise AudioError(f"{name}: contains no audio samples (0 frames)")
    return name, decoder


def _short_sf_error(error: sf.SoundFileError) -> str:
    text = str(error)  # "Error opening '<path>': why." or, for stdin, "... <_io.BytesIO ...>: why."
    for sep in ("': ", ">: "):
        if sep in text:
            return text.split(sep, 1)[1].rstrip(".")
    return text.rstrip(".")


class AudioReader:
    """An opened audio file that yields float32 ``[C, n]`` blocks, then closes itself.

    Every block has ``block_frames`` frames except the last, which is shorter and non-empty.
    Iterate once (like a file); use as a context manager to close early.
    Attributes: ``sample_rate``, ``channels``, ``num_frames`` (frames this reader will yield,
    or None when unknown), ``duration_s`` (see :class:`AudioInfo`), ``format``, ``name``.
    ``fast_seek``: reach ``start_frame`` by the container's index instead of decoding up to it
    (see :func:`read_range`). ``past_end_ok``: a ``start_frame`` at or past the end yields
    nothing instead of raising AudioError.
    """

    def __init__(
        self,
        path: AudioSource,
        block_frames: int,
        start_frame: int = 0,
        num_frames: int | None = None,
        *,
        fast_seek: bool = False,
        past_end_ok: bool = False,
    ) -> None:
        if block_frames <= 0:
            raise ValueError(f"block_frames must be positive, got {block_frames}")
        if start_frame < 0:
            raise ValueError(f"start_frame must be >= 0, got {start_frame}")
        if num_frames is not None and num_frames <= 0:
            raise ValueError(f"num_frames must be positive or None, got {num_frames}")
        self.name, self._decoder = _open_decoder(path)
        self.sample_rate: int = self._decoder.sample_rate
        self.channels: int = self._decoder.channels
        self.format: str = self._decoder.format
        self.duration_s: float | None = self._decoder.duration_s
        total = self._decoder.num_frames
        self.num_frames: int | None = None
        if total is not None:
            if start_frame >= total and not past_end_ok:
                self._decoder.close()
                raise AudioError(
                    f"{self.name}: start_frame {start_frame} is past the end ({total} frames)"
                )
            remaining = max(0, total - start_frame)
            self.num_frames = remaining if num_frames is None else min(remaining, num_frames)
        self._block_frames = block_frames
        self._start_frame = start_frame
        self._limit = num_frames
        self._fast_seek = fast_seek
        self._past_end_ok = past_end_ok
        self._blocks = self._generate()

    def _generate(self) -> Iterator[np.ndarray]:
        try:
            if self._start_frame and self._fast_seek:
                self._decoder.seek(self._start_frame)
            elif self._start_frame:
                self._decoder.skip(self._start_frame)
            position = self._start_frame
            produced = 0
            while self._limit is None or produced < self._limit:
                want = self._block_frames
                if self._limit is not None:
                    want = min(want, self._limit - produced)
                block = self._decoder.read(want)
                if block.shape[1] == 0:
                    break
                _check_finite(block, self.name, position)
                position += block.shape[1]
                produced += block.shape[1]
                yield block
            if produced == 0 and not self._past_end_ok:
                raise AudioError(
                    f"{self.name}: contains no audio samples at or after frame {self._start_frame}"
                )
        finally:
            self._decoder.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._blocks

    def close(self) -> None:
        self._blocks.close()
        self._decoder.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_finite(block: np.ndarray, name: str, first_frame: int) -> None:
    finite = np.isfinite(block)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.all(axis=0))[0])
        raise AudioError(f"{name}: non-finite sample (NaN or Inf) at frame {first_frame + bad}")


def iter_audio_blocks(
    path: AudioSource,
    block_frames: int,
    *,
    start_frame: int = 0,
    num_frames: int | None = None,
) -> AudioReader:
    """Opens ``path`` (or ``"-"``) for bounded-memory decoding in blocks of ``block_frames``.

    Errors about the file itself (missing, empty, not audio) raise here; decoding errors and
    NaN/Inf raise during iteration. ``start_frame``/``num_frames`` select a range in the file's
    own frames (PyAV streams decode and discard up to ``start_frame``).
    """
    return AudioReader(path, block_frames, start_frame, num_frames)


def read_audio(
    path: AudioSource,
    *,
    sample_rate: int | None = None,
    start_frame: int = 0,
    num_frames: int | None = None,
) -> tuple[np.ndarray, int]:
    """Reads a whole file (or ``"-"``) -> (float32 ``[C, T]``, sample rate).

    ``sample_rate``: resample to this rate (soxr VHQ) and return it; None keeps the file's rate.
    ``start_frame``/``num_frames``: a range in the file's own frames, before resampling.
    Raises AudioError for missing, empty, undecodable or non-finite input.
    """
    with AudioReader(path, _READ_ALL_BLOCK_FRAMES, start_frame, num_frames) as reader:
        blocks = list(reader)
        rate = reader.sample_rate
    audio = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    if sample_rate is not None:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return audio, rate


def read_range(path: AudioSource, start_frame: int, num_frames: int) -> tuple[np.ndarray, int]:
    """Frames ``[start_frame, start_frame + num_frames)`` -> (float32 ``[C, n]``, sample rate),
    for random crops of long files: ``n < num_frames`` past the end (0 at or after it).

    libsndfile formats seek exactly. PyAV streams seek the container to the key frame before
    ``start_frame`` and place samples by their timestamps instead of decoding from the start,
    so the position is as exact as the container's timestamps (VBR MP3: within a few ms).
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    with AudioReader(
        path, num_frames, start_frame, num_frames, fast_seek=True, past_end_ok=True
    ) as reader:
        blocks = [np.zeros((reader.channels, 0), np.float32), *reader]
        return np.concatenate(blocks, axis=1), reader.sample_rate


def audio_info(path: AudioSource) -> AudioInfo:
    """Header information of ``path``. For ``"-"`` this consumes stdin."""
    with AudioReader(path, _READ_ALL_BLOCK_FRAMES) as reader:
        return AudioInfo(
            sample_rate=reader.sample_rate,
            channels=reader.channels,
            num_frames=reader.num_frames,
            duration_s=reader.duration_s,
            format=reader.format,
        )


# --------------------------------------------------------------------------------------------
# Resampling


def resampled_length(num_frames: int, sr_in: int, sr_out: int) -> int:
    """``floor(num_frames * sr_out / sr_in + 1/2)`` in exact integer arithmetic (soxr's length)."""
    return (2 * num_frames * sr_out + sr_in) // (2 * sr_in)


def _check_rates(sr_in: int, sr_out: int) -> None:
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")


def fit_length(audio: np.ndarray, frames: int) -> np.ndarray:
    """[C, T] cut or zero-padded to [C, frames]."""
    if audio.shape[1] > frames:
        return audio[:, :frames]
    if audio.shape[1] < frames:
        return np.pad(audio, ((0, 0), (0, frames - audio.shape[1])))
    return audio


def resample(
    audio: np.ndarray, sr_in: int, sr_out: int, dtype: type[np.floating] = np.float32
) -> np.ndarray:
    """``[C, T]`` at ``sr_in`` -> ``[C, resampled_length(T)]`` at ``sr_out`` (soxr VHQ), as
    ``dtype`` (float32, or float64 to resample in double precision).

    Equal rates return the input as ``dtype`` (no copy if it already is).
    """
    _check_rates(sr_in, sr_out)
    audio = to_channels_first(audio, dtype)
    if sr_in == sr_out:
        return audio
    out = soxr.resample(audio.T, sr_in, sr_out, quality=_RESAMPLE_QUALITY)
    out = np.ascontiguousarray(np.asarray(out, dtype=dtype).T)
    return fit_length(out, resampled_length(audio.shape[1], sr_in, sr_out))


class StreamingResampler:
    """Chunked soxr resampling whose concatenated output equals :func:`resample`.

    ``process(block [C, n]) -> [C, m]`` any number of times, then ``flush() -> [C, m]`` once.
    soxr holds back a filter delay's worth of output until ``flush``; the total after flush is
    ``resampled_length(total input frames)`` (trimmed or zero-padded on flush to that length).
    """

    def __init__(self, sr_in: int, sr_out: int, channels: int) -> None:
        _check_rates(sr_in, sr_out)
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        self.sr_in = sr_in
        self.sr_out = sr_out
        self.channels = channels
        self._frames_in = 0
        self._frames_out = 0
        self._flushed = False
        self._stream = (
            None
            if sr_in == sr_out
            else soxr.ResampleStream(
                sr_in, sr_out, channels, dtype="float32", quality=_RESAMPLE_QUALITY
            )
        )

    def _run(self, block: np.ndarray, last: bool) -> np.ndarray:
        if self._stream is None:
            return block.copy()
        out = self._stream.resample_chunk(np.ascontiguousarray(block.T), last=last)
        return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, self.channels).T)

    def process(self, block: np.ndarray) -> np.ndarray:
        if self._flushed:
            raise RuntimeError("StreamingResampler.process() after flush()")
        block = to_channels_first(block)
        if block.shape[0] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {block.shape[0]}")
        self._frames_in += block.shape[1]
        out = self._run(block, last=False)
        self._frames_out += out.shape[1]
        return out

    def flush(self) -> np.ndarray:
        if self._flushed:
            raise RuntimeError("StreamingResampler.flush() called twice")
        self._flushed = True
        out = self._run(np.zeros((self.channels, 0), dtype=np.float32), last=True)
        wanted = resampled_length(self._frames_in, self.sr_in, self.sr_out) - self._frames_out
        if wanted < 0:
            raise RuntimeError(
                f"soxr emitted {-wanted} frames more than {self._frames_out + wanted} before flush"
            )
        out = fit_length(out, wanted)
        self._frames_out += out.shape[1]
        return out


# --------------------------------------------------------------------------------------------
# Writing


def _write_format(path: str | Path, subtype: str | None) -> tuple[str, str]:
    """(libsndfile format, subtype) for a target path or ``"-"`` (WAV)."""
    if str(path) == STDIO:
        major, default = _WRITE_FORMATS[".wav"]
        name = STDOUT_NAME
    else:
        suffix = Path(path).suffix.lower()
        if suffix not in _WRITE_FORMATS:
            known = ", ".join(sorted(_WRITE_FORMATS))
            raise AudioError(f"{path}: cannot write '{suffix or 'no extension'}'; use {known}")
        major, default = _WRITE_FORMATS[suffix]
        name = str(path)
    chosen = default if subtype is None else subtype.upper()
    if not sf.check_format(major, chosen):
        raise AudioError(f"{name}: subtype '{chosen}' is not valid for {major}")
    return major, chosen


def _check_parent(path: str | Path) -> None:
    parent = Path(path).parent
    if not parent.is_dir():
        raise AudioError(f"{path}: directory '{parent}' does not exist")


def _prepare_frames(audio: np.ndarray, subtype: str, name: str) -> np.ndarray:
    """[C, T] -> [T, C] ready for libsndfile: finite, clipped unless FLOAT/DOUBLE, and integer
    samples for PCM subtypes (see :func:`_quantize`)."""
    audio = to_channels_first(audio)
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: refusing to write NaN or Inf samples")
    frames = audio.T
    if subtype in _UNCLIPPED_SUBTYPES:
        return np.ascontiguousarray(frames)
    frames = np.clip(frames, -1.0, 1.0)
    if subtype in _PCM_BITS:
        return _quantize(frames, _PCM_BITS[subtype])
    return np.ascontiguousarray(frames)


# PCM subtype -> (bits kept, dtype handed to libsndfile, left shift into that dtype)
_PCM_BITS: dict[str, tuple[int, str, int]] = {
    "PCM_S8": (8, "int16", 8),
    "PCM_U8": (8, "int16", 8),
    "PCM_16": (16, "int16", 0),
    "PCM_24": (24, "int32", 8),
    "PCM_32": (32, "int32", 0),
}


def _quantize(frames: np.ndarray, spec: tuple[int, str, int]) -> np.ndarray:
    """Float in [-1, 1] -> integers rounded to nearest, full scale 2**(bits-1), clipped to
    [-2**(bits-1), 2**(bits-1) - 1], shifted into int16/int32 so libsndfile stores them exactly.

    libsndfile's own float -> PCM conversion floors (a -0.5 LSB bias), hence this step.
    """
    bits, dtype, shift = spec
    scale = float(2 ** (bits - 1))
    ints = np.clip(np.rint(frames.astype(np.float64) * scale), -scale, scale - 1)
    return np.ascontiguousarray(ints.astype(dtype) << shift)


def write_audio(
    path: str | Path,
    audio: np.ndarray,
    sample_rate: int,
    subtype: str | None = None,
    *,
    compression_level: float | None = None,
) -> None:
    """Writes ``[C, T]`` (or mono ``[T]``) float audio; format from the extension, ``"-"`` = WAV.

    See the module docstring for formats, default subtypes and clipping. ``compression_level``
    (0..1) is libsndfile's: for Vorbis it is 1 - quality, for FLAC the effort.
    """
    target: str | io.BytesIO = io.BytesIO() if str(path) == STDIO else str(path)
    _encode(target, path, audio, sample_rate, subtype, compression_level)
    if isinstance(target, io.BytesIO):
        sys.stdout.buffer.write(target.getvalue())
        sys.stdout.buffer.flush()


def encode_audio(
    audio: np.ndarray,
    sample_rate: int,
    suffix: str = ".wav",
    subtype: str | None = None,
    *,
    compression_level: float | None = None,
) -> bytes:
    """The bytes :func:`write_audio` would write to a file ending in ``suffix``, in memory."""
    buffer = io.BytesIO()
    _encode(buffer, f"<memory>{suffix}", audio, sample_rate, subtype, compression_level)
    return buffer.getvalue()


def _encode(
    target: str | io.BytesIO,
    path: str | Path,
    audio: np.ndarray,
    sample_rate: int,
    subtype: str | None,
    compression_level: float | None,
) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    major, chosen = _write_format(path, subtype)
    name = STDOUT_NAME if str(path) == STDIO else str(path)
    frames = _prepare_frames(audio, chosen, name)
    if isinstance(target, str):
        _check_parent(path)
    options = {} if compression_level is None else {"compression_level": compression_level}
    try:
        sf.write(target, frames, sample_rate, format=major, subtype=chosen, **options)
    except (sf.SoundFileError, OSError) as error:
        raise AudioError(f"{name}: cannot write: {error}") from None


# Stdout WAV header, little endian: "RIFF" u32 riff_size "WAVE" | "fmt " u32 16, u16 format_tag
# (1 PCM, 3 IEEE float), u16 channels, u32 sample_rate, u32 byte_rate, u16 block_align,
# u16 bits | "data" u32 data_size. Unknown sizes are 0xFFFFFFFF.
_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_UNKNOWN_SIZE = 0xFFFFFFFF
_STREAM_WAV_SUBTYPES = {"PCM_16": (1, 16), "PCM_24": (1, 24), "PCM_32": (1, 32), "FLOAT": (3, 32)}


class _WavStreamWriter:
    """Writes WAV to a possibly non-seekable binary stream (see module docstring)."""

    def __init__(self, stream: BinaryIO, sample_rate: int, channels: int, subtype: str) -> None:
        if subtype not in _STREAM_WAV_SUBTYPES:
            known = ", ".join(_STREAM_WAV_SUBTYPES)
            raise AudioError(f"{STDOUT_NAME}: streaming WAV supports {known}, not '{subtype}'")
        self._stream = stream
        self._tag, self._bits = _STREAM_WAV_SUBTYPES[subtype]
        self._sample_rate = sample_rate
        self._channels = channels
        self._data_bytes = 0
        self._header_at = stream.tell() if stream.seekable() else None
        stream.write(self._header(_UNKNOWN_SIZE))

    def _header(self, data_size: int) -> bytes:
        block_align = self._channels * self._bits // 8
        riff_size = _UNKNOWN_SIZE if data_size == _UNKNOWN_SIZE else data_size + 36
        return _WAV_HEADER.pack(
            b"RIFF",
            riff_size,
            b"WAVE",
            b"fmt ",
            16,
            self._tag,
            self._channels,
            self._sample_rate,
            self._sample_rate * block_align,
            block_align,
            self._bits,
            b"data",
            data_size,
        )

    def write(self, frames: np.ndarray) -> None:
        """frames: [T, C] as :func:`_prepare_frames` returns them for this subtype."""
        if self._tag == 3:
            payload = frames.astype("<f4").tobytes()
        elif self._bits == 24:  # int32 holding 24-bit values << 8: keep the top three bytes
            payload = frames.astype("<i4").view(np.uint8).reshape(-1, 4)[:, 1:].tobytes()
        else:
            payload = frames.astype("<i2" if self._bits == 16 else "<i4").tobytes()
        self._stream.write(payload)
        self._data_bytes += len(payload)

    def close(self) -> None:
        if self._header_at is not None and self._data_bytes + 36 < _UNKNOWN_SIZE:
            end = self._stream.tell()
            self._stream.seek(self._header_at)
            self._stream.write(self._header(self._data_bytes))
            self._stream.seek(end)
        self._stream.flush()


class AudioWriter:
    """Streams ``[C, n]`` blocks to a file or ``"-"`` (WAV on stdout) in bounded memory.

    ``with AudioWriter(path, sample_rate, channels) as writer: writer.write(block)``.
    Formats, subtypes and clipping as :func:`write_audio`; stdout supports PCM_16, PCM_24,
    PCM_32 and FLOAT and writes an unknown-length header when stdout is a pipe.
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: int,
        channels: int,
        subtype: str | None = None,
    ) -> None:
        if sample_rate <= 0 or channels <= 0:
            raise ValueError(
                f"need positive sample_rate and channels, got {sample_rate}, {channels}"
            )
        major, self.subtype = _write_format(path, subtype)
        self.sample_rate = sample_rate
        self.channels = channels
        self.frames_written = 0
        self._to_stdout = str(path) == STDIO
        self.name = STDOUT_NAME if self._to_stdout else str(path)
        self._sink: sf.SoundFile | _WavStreamWriter
        if self._to_stdout:
            self._sink = _WavStreamWriter(sys.stdout.buffer, sample_rate, channels, self.subtype)
        else:
            _check_parent(path)
            try:
                self._sink = sf.SoundFile(
                    str(path),
                    "w",
                    samplerate=sample_rate,
                    channels=channels,
                    subtype=self.subtype,
                    format=major,
                )
            except (sf.SoundFileError, OSError) as error:
                raise AudioError(f"{self.name}: cannot write: {error}") from None
        self._closed = False

    def write(self, block: np.ndarray) -> None:
        """Appends ``[C, n]`` (or ``[n]`` when mono) float samples."""
        if self._closed:
            raise RuntimeError(f"{self.name}: write() after close()")
        frames = _prepare_frames(block, self.subtype, self.name)
        if frames.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {frames.shape[1]}")
        self._sink.write(frames)
        self.frames_written += frames.shape[0]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sink.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
