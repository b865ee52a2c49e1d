"""Objective quality metrics: ViSQOL v3 (speech and audio mode), log-mel distance, SI-SDR and
stereo image errors (inter-channel level difference, inter-channel coherence).

Every function takes float audio ``[C, T]`` (reference first, estimate second), both at the same
sample rate and of the same length; :func:`match_length` trims or zero-pads an estimate.
Multi-channel numbers are computed per channel and averaged, as the SpectroStream paper does
for ViSQOL. Definitions (also in docs/quality.md):

- ViSQOL speech mode: each channel resampled to 16 kHz (soxr VHQ), scored with the deep-lattice
  MOS mapping (``use_lattice_model=True``, the C++ default), mean over channels. On music the
  lattice score of an identical pair is not a constant: it depends on the clip (about 3.7 to
  4.7 on the 15 evaluation clips), so reports also give that per-clip ceiling.
- ViSQOL audio mode: each channel at 48 kHz, SVR mapping; an identical pair scores 4.732.
- Mel distance: STFT with a periodic Hann window of 2048 samples, hop 512, no centring (the
  signal is zero-padded at the end to whole frames); 128 triangular filters with peak 1, equally
  spaced on the HTK mel scale from 0 Hz to sr/2, applied to the magnitude (not power); then
  mean over channels, filters and frames of ``|log10(max(M_ref, 1e-5)) - log10(max(M_est,
  1e-5))|``. Scaling the estimate by 2 gives log10(2) = 0.301.
- SI-SDR (dB): per channel, both signals with their mean removed: ``a = <s, e> / <s, s>``,
  ``10 log10(|a s|^2 / |e - a s|^2)``; the noise energy is floored at 1e-20 times the target
  energy, so identical signals give 200 dB rather than infinity.
- Stereo image (2-channel audio only): the same STFT; bins grouped into 32 bands whose edges are
  equally spaced on the mel scale from 0 Hz to sr/2 (bands that would be empty are merged). A
  time-frequency tile is one band in one frame (ILD) or in a block of 16 frames (ICC, 171 ms at
  48 kHz). Tiles count when the reference's tile energy (L + R) is within 50 dB of its loudest
  tile. ILD = ``10 log10((E_L + eps) / (E_R + eps))``, eps = 1e-10 x loudest tile, clipped to
  +-30 dB; ILD error = mean |ILD_ref - ILD_est| over counted tiles (dB).
  ICC of a tile = ``sum_k |sum_t L R*| / sqrt(sum |L|^2 sum |R|^2)`` (per-bin cross-spectrum
  magnitude, so a pure inter-channel delay still reads as coherent), in [0, 1]; ICC error =
  mean |ICC_ref - ICC_est| over counted tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from spectrostream.audio_io import fit_length, resample, to_channels_first
from spectrostream.errors import MetricError

VISQOL_SPEECH_RATE = 16000
VISQOL_AUDIO_RATE = 48000
VISQOL_AUDIO_IDENTICAL = 4.732  # audio-mode score of an identical pair (SVR mapping)

STFT_SIZE = 2048
STFT_HOP = 512
MEL_FILTERS = 128
MEL_FLOOR = 1e-5
STEREO_BANDS = 32
ICC_BLOCK_FRAMES = 16
ACTIVE_RANGE_DB = 50.0
ILD_CLIP_DB = 30.0


def comb_share(estimate: np.ndarray) -> float:
    """Share of the decoded audio's energy that repeats in every 10 ms codec frame, mean over
    channels (``spectrostream.metrics.comb_share``, float64). Raises MetricError for clips
    shorter than one 960-sample frame."""
    import torch

    from ..metrics import comb_share as share

    values = share(torch.from_numpy(np.asarray(estimate, np.float64)))
    if bool(torch.isnan(values).any()):
        raise MetricError("the clip is too short for the fixed-comb share (960 samples)")
    return float(values.mean())


# --------------------------------------------------------------------------------------------
# Shapes


def as_channels_first(audio: np.ndarray) -> np.ndarray:
    """``[T]`` or ``[C, T]`` -> float64 ``[C, T]``; MetricError if empty or of another rank."""
    shape = np.shape(audio)
    if len(shape) not in (1, 2) or shape[-1] == 0:
        raise MetricError(f"audio must be non-empty [T] or [C, T], got shape {shape}")
    return to_channels_first(audio, np.float64)


def match_length(estimate: np.ndarray, num_samples: int) -> np.ndarray:
    """Trims or zero-pads ``estimate [C, T']`` at the end to ``[C, num_samples]``."""
    return fit_length(as_channels_first(estimate), num_samples)


def _pair(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = as_channels_first(reference)
    est = as_channels_first(estimate)
    if ref.shape != est.shape:
        raise MetricError(f"reference {ref.shape} and estimate {est.shape} differ in shape")
    return ref, est


# --------------------------------------------------------------------------------------------
# SI-SDR


def si_sdr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB, mean over channels (``spectrostream.metrics.si_sdr``, float64).

    Raises MetricError if a reference channel is all zeros (SI-SDR is undefined there).
    """
    import torch  # deferred: this module (and evaluation.cli) imports without torch

    from ..metrics import si_sdr

    ref, est = _pair(reference, estimate)
    if np.any(~np.any(ref != 0.0, axis=1)):
        raise MetricError("SI-SDR is undefined for a silent reference channel")
    values = si_sdr(torch.from_numpy(ref), torch.from_numpy(est)).numpy()
    # 0 / 0 (estimate orthogonal to the reference, no noise either) scores 0 dB.
    return float(np.mean(np.nan_to_num(values, nan=0.0)))


def harmonic_corr(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """Harmonic fine-structure correlation, mean over channels
    (``spectrostream.metrics.harmonic_correlation``, float64). Raises MetricError for clips
    shorter than its 4096-sample window."""
    import torch

    from ..metrics import harmonic_correlation

    ref, est = _pair(reference, estimate)
    values = harmonic_correlation(torch.from_numpy(ref), torch.from_numpy(est), sample_rate)
    if bool(torch.isnan(values).any()):
        raise MetricError("the clip is too short for the harmonic correlation (4096 samples)")
    return float(values.mean())


def envelope_db(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """Band-envelope distance (dB), mean over channels (``spectrostream.metrics.
    envelope_distance``, float64). Raises MetricError for clips shorter than its window."""
    import torch

    from ..metrics import ENVELOPE_N_FFT, envelope_distance

    ref, est = _pair(reference, estimate)
    values = envelope_distance(torch.from_numpy(ref), torch.from_numpy(est), sample_rate)
    if bool(torch.isnan(values).any()):
        raise MetricError(
            f"the clip is too short for the band-envelope distance ({ENVELOPE_N_FFT} samples)"
        )
    return float(values.mean())


# --------------------------------------------------------------------------------------------
# STFT, mel


def stft_magnitude_and_phase(audio: np.ndarray) -> np.ndarray:
    """``[C, T]`` -> complex ``[C, STFT_SIZE // 2 + 1, frames]`` (Hann, hop 512, no centring)."""
    audio = as_channels_first(audio)
    num_samples = audio.shape[1]
    frames = max(1, math.ceil(max(num_samples - STFT_SIZE, 0) / STFT_HOP) + 1)
    padded_len = (frames - 1) * STFT_HOP + STFT_SIZE
    padded = np.pad(audio, ((0, 0), (0, padded_len - num_samples)))
    window = np.hanning(STFT_SIZE + 1)[:-1]  # periodic Hann
    index = np.arange(STFT_SIZE)[None, :] + STFT_HOP * np.arange(frames)[:, None]
    framed = padded[:, index] * window  # [C, frames, STFT_SIZE]
    return np.fft.rfft(framed, axis=-1).transpose(0, 2, 1)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int) -> np.ndarray:
    """``[MEL_FILTERS, STFT_SIZE // 2 + 1]`` triangular filters, peak 1, HTK mel, 0..sr/2
    (``spectrostream.metrics.mel_filterbank``, float64)."""
    import torch

    from ..metrics import mel_filterbank as shared_mel_filterbank

    fb = shared_mel_filterbank(STFT_SIZE, MEL_FILTERS, sample_rate, dtype=torch.float64)
    filters = np.ascontiguousarray(fb.numpy().T)
    filters.setflags(write=False)
    return filters


def mel_distance(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """Mean absolute log10-mel-magnitude difference (see module docstring)."""
    ref, est = _pair(reference, estimate)
    filters = mel_filterbank(sample_rate)
    ref_mel = filters @ np.abs(stft_magnitude_and_phase(ref))
    est_mel = filters @ np.abs(stft_magnitude_and_phase(est))
    diff = np.log10(np.maximum(ref_mel, MEL_FLOOR)) - np.log10(np.maximum(est_mel, MEL_FLOOR))
    return float(np.mean(np.abs(diff)))


# --------------------------------------------------------------------------------------------
# Stereo image


@dataclass(frozen=True)
class StereoErrors:
    """ild_error_db: mean |ILD difference| in dB; icc_error: mean |ICC difference| (0..1)."""

    ild_error_db: float
    icc_error: float


@lru_cache(maxsize=8)
def stereo_band_edges(sample_rate: int) -> tuple[int, ...]:
    """STFT bin indices ``b_0 = 0 < b_1 < ... < b_n = bins``; band i is ``[b_i, b_i+1)``."""
    bins = STFT_SIZE // 2 + 1
    import torch

    from ..metrics import hz_to_mel, mel_to_hz

    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64)).item()
    edges_hz = mel_to_hz(torch.linspace(0.0, top, STEREO_BANDS + 1, dtype=torch.float64)).numpy()
    edges = np.round(edges_hz / (sample_rate / STFT_SIZE)).astype(int)
    edges[-1] = bins
    return tuple(sorted({int(e) for e in edges}))


def _band_sum(values: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Sums ``[..., bins, X]`` over each band -> ``[..., bands, X]``."""
    return np.add.reduceat(values, np.asarray(edges[:-1]), axis=-2)


def _block_sum(values: np.ndarray, block: int) -> np.ndarray:
    """Sums ``[..., frames]`` over consecutive blocks of ``block`` frames (last one partial)."""
    starts = np.arange(0, values.shape[-1], block)
    return np.add.reduceat(values, starts, axis=-1)


def _ild_db(energy: np.ndarray, eps: float) -> np.ndarray:
    ild = 10.0 * np.log10((energy[0] + eps) / (energy[1] + eps))
    return np.clip(ild, -ILD_CLIP_DB, ILD_CLIP_DB)


def _icc(spec: np.ndarray, edges: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Returns (ICC ``[bands, blocks]``, L+R energy ``[bands, blocks]``) of ``[2, bins, t]``."""
    cross = np.abs(_block_sum(spec[0] * np.conj(spec[1]), ICC_BLOCK_FRAMES))  # [bins, blocks]
    power = _block_sum(np.abs(spec) ** 2, ICC_BLOCK_FRAMES)  # [2, bins, blocks]
    band_cross = _band_sum(cross, edges)
    band_power = _band_sum(power, edges)
    denom = np.sqrt(band_power[0] * band_power[1])
    icc = np.where(denom > 0, band_cross / np.where(denom > 0, denom, 1.0), 0.0)
    return np.clip(icc, 0.0, 1.0), band_power[0] + band_power[1]


def stereo_image_errors(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int
) -> StereoErrors:
    """ILD and ICC errors of 2-channel audio (see module docstring).

    Raises MetricError for audio that is not 2-channel or a digitally silent reference.
    """
    ref, est = _pair(reference, estimate)
    if ref.shape[0] != 2:
        raise MetricError(f"stereo image metrics need 2 channels, got {ref.shape[0]}")
    edges = stereo_band_edges(sample_rate)
    ref_spec = stft_magnitude_and_phase(ref)
    est_spec = stft_magnitude_and_phase(est)

    ref_energy = _band_sum(np.abs(ref_spec) ** 2, edges)  # [2, bands, frames]
    est_energy = _band_sum(np.abs(est_spec) ** 2, edges)
    ref_total = ref_energy[0] + ref_energy[1]
    peak = float(ref_total.max())
    if peak <= 0.0:
        raise MetricError("stereo image metrics are undefined for a silent reference")
    eps = 1e-10 * peak
    active = ref_total >= peak * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)
    ild_diff = np.abs(_ild_db(ref_energy, eps) - _ild_db(est_energy, eps))
    ild_error = float(np.mean(ild_diff[active]))

    ref_icc, ref_block_energy = _icc(ref_spec, edges)
    est_icc, _ = _icc(est_spec, edges)
    block_peak = float(ref_block_energy.max())
    block_active = ref_block_energy >= block_peak * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)
    icc_error = float(np.mean(np.abs(ref_icc - est_icc)[block_active]))
    return StereoErrors(ild_error_db=ild_error, icc_error=icc_error)


# --------------------------------------------------------------------------------------------
# ViSQOL


class VisqolScorer:
    """ViSQOL v3 (package ``visqol``, pure Python) in speech (lattice) and audio mode.

    Building one loads the SVR and lattice models; the first score in a fresh environment also
    JIT-compiles numba kernels (about 30 s, cached on disk afterwards).
    """

    def __init__(self) -> None:
        try:
            from visqol import VisqolApi
        except ImportError as error:
            raise MetricError(
                "ViSQOL needs the eval extra: pip install visqol-python numba ai-edge-litert"
            ) from error
        self._speech = VisqolApi()
        self._speech.create(mode="speech", use_lattice_model=True)
        self._audio = VisqolApi()
        self._audio.create(mode="audio")

    def speech(self, reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> list[float]:
        """Per-channel speech-mode MOS (lattice): each channel resampled to 16 kHz."""
        return self._per_channel(self._speech, VISQOL_SPEECH_RATE, reference, estimate, sample_rate)

    def audio(self, reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> list[float]:
        """Per-channel audio-mode MOS at 48 kHz (input at another rate is resampled)."""
        return self._per_channel(self._audio, VISQOL_AUDIO_RATE, reference, estimate, sample_rate)

    @staticmethod
    def _per_channel(
        api: Any, rate: int, reference: np.ndarray, estimate: np.ndarray, sample_rate: int
    ) -> list[float]:
        ref, est = _pair(reference, estimate)
        scores = []
        for r, e in zip(ref, est, strict=True):
            r_at, e_at = _resample(r, sample_rate, rate), _resample(e, sample_rate, rate)
            scores.append(float(api.measure_from_arrays(r_at, e_at, rate).moslqo))
        return scores


def _resample(channel: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """One channel ``[T]`` -> float64 ``[T']`` (audio_io's resampler, in double precision)."""
    return resample(channel, rate_in, rate_out, dtype=np.float64)[0]
