"""The Opus anchor: Debian's opus-tools (``opusenc``/``opusdec``) as a round trip.

``opusenc --hard-cbr --bitrate K in.wav out.opus`` then ``opusdec --rate 48000 out.opus
out.wav`` (without ``--hard-cbr`` opusenc overshoots by up to 17% on music). Opus's documented
range starts at 6 kbps (RFC 6716); opusenc 0.2 / libopus 1.3.1 accept lower targets, but the
anchor is clamped to :data:`OPUS_MIN_KBPS` and the report marks clamped cells with ``*``.
The actual bit rate is the .opus file size over the clip duration, so it includes the Ogg
container and the two header packets (about 1 kbps at these rates); ``payload_kbps`` counts
only the Opus audio packets.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectrostream.audio_io import fit_length, read_audio, write_audio
from spectrostream.errors import BaselineError

OPUS_MIN_KBPS = 6.0
OPUS_MAX_KBPS_PER_CHANNEL = 256.0
OPUS_RATE = 48000
_TIMEOUT_S = 300


@dataclass(frozen=True)
class RoundTrip:
    """One coded clip.

    audio: decoded float ``[C, T]`` at ``sample_rate``, same length as the input.
    target_kbps: the total rate asked of the coder (after clamping).
    clamped: the requested total rate was below the coder's floor and was raised.
    file_bytes: size of the whole compressed file (container and headers included).
    payload_bytes: bytes of coded audio only (no container or header).
    levels: RVQ levels used (SpectroStream only).
    """

    audio: np.ndarray
    sample_rate: int
    target_kbps: float
    clamped: bool
    file_bytes: int
    payload_bytes: int
    levels: int | None = None


def opus_tools_available() -> bool:
    """Whether ``opusenc`` and ``opusdec`` are on PATH."""
    return shutil.which("opusenc") is not None and shutil.which("opusdec") is not None


def opus_target_kbps(total_kbps: float, channels: int) -> tuple[float, bool]:
    """Returns (rate given to opusenc, whether it was clamped up to the 6 kbps floor)."""
    if total_kbps > OPUS_MAX_KBPS_PER_CHANNEL * channels:
        raise BaselineError(f"{total_kbps} kbps is above Opus's 256 kbps per channel")
    if total_kbps < OPUS_MIN_KBPS:
        return OPUS_MIN_KBPS, True
    return total_kbps, False


def ogg_packet_sizes(data: bytes) -> list[int]:
    """Sizes of the packets of a single-stream Ogg file, in order.

    Page layout (RFC 3533): "OggS", u8 version, u8 header_type, i64 granule, u32 serial,
    u32 sequence, u32 crc, u8 segments, then one u8 lacing value per segment and the data.
    A packet ends at the first lacing value below 255.
    """
    header = struct.Struct("<4sBBqIIIB")
    sizes: list[int] = []
    current = 0
    pos = 0
    while pos < len(data):
        if len(data) - pos < header.size:
            raise BaselineError("truncated Ogg page header")
        capture, _version, _type, _granule, _serial, _seq, _crc, segments = header.unpack_from(
            data, pos
        )
        if capture != b"OggS":
            raise BaselineError(f"no Ogg page at byte {pos}")
        pos += header.size
        lacing = data[pos : pos + segments]
        pos += segments
        for value in lacing:
            current += value
            if value < 255:
                sizes.append(current)
                current = 0
        pos += sum(lacing)
    if pos != len(data):
        raise BaselineError("Ogg file ends inside a page")
    return sizes


def _run(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=_TIMEOUT_S)
    except FileNotFoundError as error:
        raise BaselineError(
            f"{command[0]} not found: install opus-tools (apt-get install opus-tools)"
        ) from error
    except subprocess.CalledProcessError as error:
        stderr = error.stderr.decode(errors="replace").strip()
        raise BaselineError(f"{command[0]} failed ({error.returncode}): {stderr}") from error
    except subprocess.TimeoutExpired as error:
        raise BaselineError(f"{command[0]} timed out after {_TIMEOUT_S} s") from error


def opus_round_trip(audio: np.ndarray, sample_rate: int, total_kbps: float) -> RoundTrip:
    """Codes ``audio [C, T]`` (C = 1 or 2) with opusenc/opusdec at ``total_kbps`` (all channels).

    The input is written as 24-bit WAV (clipped to [-1, 1]); the output is 48 kHz.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise BaselineError(f"Opus round trip takes mono or stereo [C, T], got {audio.shape}")
    if sample_rate != OPUS_RATE:
        raise BaselineError(f"Opus round trip expects {OPUS_RATE} Hz input, got {sample_rate}")
    channels, num_samples = audio.shape
    target, clamped = opus_target_kbps(total_kbps, channels)
    with tempfile.TemporaryDirectory(prefix="spectrostream-opus-") as tmp:
        wav_in = Path(tmp) / "in.wav"
        coded = Path(tmp) / "coded.opus"
        wav_out = Path(tmp) / "out.wav"
        write_audio(wav_in, audio, sample_rate, subtype="PCM_24")  # clipped to [-1, 1]
        _run(
            [
                "opusenc",
                "--quiet",
                "--hard-cbr",
                "--bitrate",
                f"{target:g}",
                str(wav_in),
                str(coded),
            ]
        )
        _run(["opusdec", "--quiet", "--rate", str(OPUS_RATE), str(coded), str(wav_out)])
        data = coded.read_bytes()
        decoded, rate = read_audio(wav_out)
    if rate != OPUS_RATE:
        raise BaselineError(f"opusdec wrote {rate} Hz, expected {OPUS_RATE}")
    if decoded.shape[0] != channels:
        raise BaselineError(f"opusdec wrote {decoded.shape[0]} channels, expected {channels}")
    if abs(decoded.shape[1] - num_samples) > OPUS_RATE // 100:
        raise BaselineError(f"opusdec wrote {decoded.shape[1]} samples, expected {num_samples}")
    decoded = np.ascontiguousarray(fit_length(decoded, num_samples))
    packets = ogg_packet_sizes(data)
    if len(packets) < 3:
        raise BaselineError("Opus file has no audio packets")
    return RoundTrip(
        audio=decoded,
        sample_rate=OPUS_RATE,
        target_kbps=target,
        clamped=clamped,
        file_bytes=len(data),
        payload_bytes=sum(packets[2:]),  # packets 0 and 1 are OpusHead and OpusTags
    )
