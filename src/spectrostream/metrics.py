"""Signal math shared by training and evaluation: SI-SDR, the HTK mel filterbank and the
harmonic fine-structure correlation, the fixed-comb share, the band-envelope distance.

One definition each, used by ``train/losses.py`` (torch, float32, differentiable) and
``evaluation/metrics.py`` (float64 numbers for reports).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .config import SAMPLE_RATE

SI_SDR_NOISE_FLOOR = 1e-20
ENVELOPE_N_FFT = 1024  # 21 ms at 48 kHz, hop 256 (5.3 ms)
ENVELOPE_RANGE_DB = 60.0
ENVELOPE_PER_OCTAVE = 6  # sixth-octave bands: ViSQOL hears detail a third octave averages away
ENVELOPE_FLOOR = 1e-8  # band power; a full-scale sine's is ~6.5e4 at n_fft 1024


def si_sdr(reference: torch.Tensor, estimate: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Scale-invariant SDR in dB over the last axis, [..., T] -> [...]; differentiable.

    Both signals have their mean removed; the target is the projection of the estimate on the
    reference, a = <e, r> / <r, r>, and SI-SDR = 10 log10(|a r|^2 / |e - a r|^2). The noise
    energy is floored at 1e-20 times the target energy (identical signals give 200 dB, not
    infinity). ``eps`` is added to both energies (training uses 1e-8 so that silence and
    zero outputs give finite gradients; evaluation uses 0). Computed in at least float32.
    """
    dtype = torch.promote_types(reference.dtype, torch.float32)
    r = reference.to(dtype)
    e = estimate.to(dtype)
    r = r - r.mean(-1, keepdim=True)
    e = e - e.mean(-1, keepdim=True)
    scale = (e * r).sum(-1, keepdim=True) / (r.square().sum(-1, keepdim=True) + eps)
    target = scale * r
    t_energy = target.square().sum(-1)
    n_energy = torch.maximum((e - target).square().sum(-1), SI_SDR_NOISE_FLOOR * t_energy)
    return 10 * torch.log10((t_energy + eps) / (n_energy + eps))


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int,
    n_mels: int,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = 0.0,
    f_max: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Triangular HTK-mel filters with peak 1 (unnormalized), [n_fft // 2 + 1, n_mels].

    Filter edges are equally spaced on the mel scale from f_min to f_max (default sr / 2); bin
    k sits at k sr / n_fft. With short windows some filters fall between bins and are all zero.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    f64 = torch.float64
    freqs = torch.arange(n_fft // 2 + 1, dtype=f64) * (sample_rate / n_fft)
    lo, hi = hz_to_mel(torch.tensor(f_min, dtype=f64)), hz_to_mel(torch.tensor(f_max, dtype=f64))
    pts = mel_to_hz(torch.linspace(lo.item(), hi.item(), n_mels + 2, dtype=f64))
    lower, center, upper = pts[:-2], pts[1:-1], pts[2:]
    up = (freqs[:, None] - lower[None]) / (center - lower)[None]
    down = (upper[None] - freqs[:, None]) / (upper - center)[None]
    return torch.clamp(torch.minimum(up, down), min=0.0).to(dtype)


def harmonic_correlation(
    reference: torch.Tensor,
    estimate: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 4096,
    band_hz: tuple[float, float] = (100.0, 6000.0),
    smooth_bins: int = 9,
) -> torch.Tensor:
    """Does the estimate have the reference's harmonics? [..., T] -> [...], in -1..1.

    Per frame (Hann window ``n_fft``, hop n_fft / 4; 11.7 Hz bins at 48 kHz) the log magnitude
    minus its moving average over ``smooth_bins`` bins is the fine structure: harmonic peaks and
    the valleys between them, with the spectral envelope removed. Its correlation between
    reference and estimate over the bins in ``band_hz`` is averaged over frames, weighted by the
    reference's energy in the band. 1: the same partials; about 0: an envelope without partials
    (noise shaped like the input, which the mel distance and SI-SDR do not tell apart from a
    muffled codec). Signals shorter than ``n_fft`` give NaN.
    """
    dtype = torch.promote_types(reference.dtype, torch.float32)
    r, e = reference.to(dtype), estimate.to(dtype)
    lead = r.shape[:-1]
    if r.shape[-1] < n_fft:
        return torch.full(lead, float("nan"), dtype=dtype)
    bins = (int(band_hz[0] * n_fft / sample_rate), int(band_hz[1] * n_fft / sample_rate) + 1)
    fr, energy = _fine_structure(r, n_fft, bins, smooth_bins)
    fe, _ = _fine_structure(e, n_fft, bins, smooth_bins)
    num = (fr * fe).sum(-1)
    den = torch.sqrt(fr.square().sum(-1) * fe.square().sum(-1)).clamp_min(1e-20)
    corr = (num / den * energy).sum(-1) / energy.sum(-1).clamp_min(1e-30)
    return corr.reshape(lead)


def frames_stft(a: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """[..., T] -> complex STFT [N, n_fft / 2 + 1, frames] (the leading axes flattened to N):
    periodic Hann window ``n_fft``, hop ``hop``, no centring, in ``a``'s dtype."""
    window = torch.hann_window(n_fft, periodic=True, dtype=a.dtype, device=a.device)
    return torch.stft(
        a.reshape(-1, a.shape[-1]), n_fft, hop, window=window, center=False, return_complex=True
    )


TOP_BAND_HZ = 16500.0  # clear of the 16 kHz where Vorbis at quality 0 low-passes ("Round 9")


def top_band_db(
    reference: torch.Tensor,
    estimate: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    low_hz: float = TOP_BAND_HZ,
    n_fft: int = ENVELOPE_N_FFT,
) -> torch.Tensor:
    """Energy of ``estimate`` above ``low_hz`` over the reference's, in dB: [..., T] -> [...].

    0 is right; a decoder trained on low-passed audio reads tens of dB below (after two GPU
    rounds on a 16 kHz Vorbis pack, scripts/band_report.py read -29 to -36 dB above 16 kHz).
    NaN where the reference has (almost) nothing there (more than ENVELOPE_RANGE_DB below its
    whole energy) or is shorter than ``n_fft``.
    """
    dtype = torch.promote_types(reference.dtype, torch.float32)
    lead = reference.shape[:-1]
    if reference.shape[-1] < n_fft:
        return torch.full(lead, float("nan"), dtype=dtype)
    top = round(low_hz * n_fft / sample_rate)
    power_r = frames_stft(reference.to(dtype), n_fft, n_fft // 4).abs().square()
    power_e = frames_stft(estimate.to(dtype), n_fft, n_fft // 4)[:, top:].abs().square()
    pr, pe = power_r[:, top:].sum((1, 2)), power_e.sum((1, 2))
    present = pr > power_r.sum((1, 2)) * 10 ** (-ENVELOPE_RANGE_DB / 10)
    ratio = torch.where(present, pe / pr.clamp_min(1e-30), torch.nan)
    return (10 * torch.log10(ratio.clamp_min(1e-30))).reshape(lead)


def comb_share(audio: torch.Tensor, n_fft: int = 960, hop: int = 480) -> torch.Tensor:
    """Share of a signal's energy that repeats in every frame: [..., T] -> [...], 0..1.

    STFT (periodic Hann ``n_fft``, hop ``hop``, no centring; the codec's own at 48 kHz); the
    energy of each bin's time average (the component with the same complex value in every
    frame, which plays as a fixed comb of tones at multiples of sample_rate / hop) over the mean
    frame energy. Music reads about 1 / frames (random phases average out); a decoder that adds
    an input-independent frame pattern reads more. Only bins from the comb's first tone
    (sample_rate / hop, bin n_fft / hop) up count as comb: below it a DC offset is constant in
    every frame too (one eval clip carries a DC step of -42 dBFS, and a model that kept it read
    as a comb 17 times v2's). Signals shorter than ``n_fft`` give NaN.
    """
    dtype = torch.promote_types(audio.dtype, torch.float32)
    a = audio.to(dtype)
    lead = a.shape[:-1]
    if a.shape[-1] < n_fft:
        return torch.full(lead, float("nan"), dtype=dtype)
    spec = frames_stft(a, n_fft, hop)
    fixed = spec.mean(-1).abs().square()[..., n_fft // hop :].sum(-1)
    total = spec.abs().square().mean(-1).sum(-1)
    return (fixed / total.clamp_min(1e-30)).reshape(lead)


def _fine_structure(
    a: torch.Tensor, n_fft: int, bins: tuple[int, int], smooth_bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., T] -> (log magnitude minus its moving average over frequency, mean-removed per
    frame, [N, frames, bins]; energy per frame in the bins, [N, frames])."""
    spec = frames_stft(a, n_fft, n_fft // 4)
    lo, hi = bins
    power = spec.abs().square()[:, lo:hi]  # [N, F, frames]
    frames_first = (0.5 * torch.log(power + 1e-12)).transpose(1, 2)  # [N, frames, F]
    flat = frames_first.reshape(-1, 1, hi - lo)
    pad = smooth_bins // 2
    envelope = F.avg_pool1d(F.pad(flat, (pad, pad), mode="replicate"), smooth_bins, stride=1)
    detail = frames_first - envelope.reshape(frames_first.shape)
    return detail - detail.mean(-1, keepdim=True), power.sum(1)


def octave_bands(
    n_fft: int, sample_rate: int = SAMPLE_RATE, per_octave: int = 3, f_lo: float = 50.0
) -> torch.Tensor:
    """[n_fft / 2 + 1, bands] 0/1 matrix: the bins from ``f_lo`` to sr / 2 in bands of
    1 / ``per_octave`` octave (edges f_lo 2^(k / per_octave), rounded to bins; a band narrower
    than a bin merges into the next)."""
    nyquist_bin = n_fft // 2
    count = math.ceil(per_octave * math.log2(sample_rate / 2 / f_lo))
    edges = [round(f_lo * 2 ** (k / per_octave) * n_fft / sample_rate) for k in range(count + 1)]
    edges = sorted({max(1, min(e, nyquist_bin + 1)) for e in edges} | {nyquist_bin + 1})
    bands = torch.zeros(nyquist_bin + 1, len(edges) - 1)
    for j, (lo, hi) in enumerate(itertools.pairwise(edges)):
        bands[lo:hi, j] = 1.0
    return bands


def envelope_distance(
    reference: torch.Tensor,
    estimate: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = ENVELOPE_N_FFT,
    range_db: float = ENVELOPE_RANGE_DB,
    per_octave: int = ENVELOPE_PER_OCTAVE,
) -> torch.Tensor:
    """Mean absolute dB difference of band energies per frame: [..., T] -> [...].

    STFT (periodic Hann ``n_fft``, hop n_fft / 4, no centring), power summed in the bands of
    :func:`octave_bands` (1 / ``per_octave`` octave), 10 log10(P + floor) with the floor
    ``range_db`` below the reference's loudest band-frame (at least ENVELOPE_FLOOR); every band
    and frame counts alike, as in ViSQOL's dB spectrogram. The time-varying spectral envelope
    at sixth-octave detail: a decoder that gets it wrong scores near ViSQOL's floor whatever
    its phase (docs/quality.md). Differentiable (the training loss ``loss.envelope``).
    Signals shorter than ``n_fft`` give NaN.
    """
    dtype = torch.promote_types(reference.dtype, torch.float32)
    r, e = reference.to(dtype), estimate.to(dtype)
    lead = r.shape[:-1]
    if r.shape[-1] < n_fft:
        return torch.full(lead, float("nan"), dtype=dtype)
    bands = octave_bands(n_fft, sample_rate, per_octave).to(dtype=dtype, device=r.device)
    pr = torch.einsum("nft,fb->nbt", frames_stft(r, n_fft, n_fft // 4).abs().square(), bands)
    pe = torch.einsum("nft,fb->nbt", frames_stft(e, n_fft, n_fft // 4).abs().square(), bands)
    loudest = pr.detach().amax(dim=(1, 2), keepdim=True)
    floor = (loudest * 10 ** (-range_db / 10)).clamp_min(ENVELOPE_FLOOR)
    diff = 10 * (torch.log10(pe + floor) - torch.log10(pr + floor))
    return diff.abs().mean((1, 2)).reshape(lead)
