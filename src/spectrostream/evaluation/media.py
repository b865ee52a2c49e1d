"""The media of an evaluation: listening copies and spectrogram PNGs of each clip and cell.

Spectrograms: mid channel ``(L + R) / 2`` (or the mono channel), STFT 2048/512 Hann, linear
frequency 0 to 24 kHz, 80 dB range below the clip's peak, magma colour map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spectrostream.atomic import atomic_path
from spectrostream.audio_io import write_audio
from spectrostream.evaluation.metrics import stft_magnitude_and_phase

LISTEN_SUBTYPES = {"ogg": "VORBIS", "flac": "PCM_16"}  # listening format -> libsndfile subtype
SPECTROGRAM_ROWS = 128
SPECTROGRAM_MAX_COLUMNS = 480
SPECTROGRAM_RANGE_DB = 80.0
VORBIS_COMPRESSION_LEVEL = 0.3  # libsndfile: Vorbis quality 0.7, about 200 kbps stereo


def write_listening_audio(path: Path, audio: np.ndarray, sample_rate: int, fmt: str) -> None:
    """Writes ``audio [C, T]`` as Ogg Vorbis (``fmt="ogg"``) or 16-bit FLAC, clipped to +-1."""
    if fmt not in LISTEN_SUBTYPES:
        raise ValueError(f"unknown listening format {fmt!r}")
    level = VORBIS_COMPRESSION_LEVEL if fmt == "ogg" else None
    with atomic_path(path) as tmp:
        write_audio(tmp, audio, sample_rate, LISTEN_SUBTYPES[fmt], compression_level=level)


def spectrogram_image(audio: np.ndarray) -> np.ndarray:
    """``[C, T]`` -> dB image ``[SPECTROGRAM_ROWS, <= SPECTROGRAM_MAX_COLUMNS]`` (low rows first)."""
    mid = np.mean(np.asarray(audio, dtype=np.float64), axis=0, keepdims=True)
    power = np.abs(stft_magnitude_and_phase(mid)[0, :-1]) ** 2  # [1024, frames]
    power = power.reshape(SPECTROGRAM_ROWS, -1, power.shape[1]).mean(axis=1)
    group = -(-power.shape[1] // SPECTROGRAM_MAX_COLUMNS)
    columns = -(-power.shape[1] // group)
    padded = np.pad(power, ((0, 0), (0, columns * group - power.shape[1])))
    power = padded.reshape(SPECTROGRAM_ROWS, columns, group).max(axis=2)
    peak = float(power.max())
    db = 10.0 * np.log10(np.maximum(power, max(peak, 1e-20) * 1e-12))
    top = 10.0 * np.log10(max(peak, 1e-20))
    return np.clip(db, top - SPECTROGRAM_RANGE_DB, top)


def write_spectrogram(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Writes a PNG spectrogram of ``audio [C, T]`` (see module docstring)."""
    from matplotlib.image import imsave

    del sample_rate  # the axis is always 0 .. sr/2; kept for a uniform call
    image = spectrogram_image(audio)
    with atomic_path(path) as tmp:
        imsave(
            tmp,
            image,
            cmap="magma",
            origin="lower",
            vmin=float(image.max()) - SPECTROGRAM_RANGE_DB,
            vmax=float(image.max()),
        )
