"""Training losses: multi-scale mel distance, linear log-magnitude STFT, waveform and band
cosines, hinge GAN, feature matching, auxiliary L1s, SI-SDR.

Every function here computes in float32 with autocast disabled, whatever the caller runs under.
Reductions:
- mel: per scale s, the L1 norm over the 64 mel bins plus alpha_s times the L2 norm of the log
  difference over the mel bins, each averaged over frames, channels and batch (SoundStream's
  per-frame norms); summed over scales.
- adversarial and feature matching: averaged over discriminators (and over layers for features),
  each term a mean over its elements ("normalized by size").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HOP_SAMPLES, N_FFT, SAMPLE_RATE
from ..metrics import ENVELOPE_PER_OCTAVE, envelope_distance, frames_stft, mel_filterbank
from ..metrics import si_sdr as _si_sdr


@contextmanager
def fp32(device: torch.device) -> Iterator[None]:
    """Disable autocast for the enclosed block (inputs must be cast to float32 by the caller)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


class MelSpectrogram(nn.Module):
    """Magnitude mel spectrogram: audio [B, C, T] -> [B, C, n_mels, frames]; window s, hop s/4."""

    def __init__(self, n_fft: int, n_mels: int = 64) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("fb", mel_filterbank(n_fft, n_mels), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        b, c, t = audio.shape
        with fp32(audio.device):
            spec = torch.stft(
                audio.float().reshape(b * c, t),
                self.n_fft,
                self.hop,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            mag = torch.sqrt((spec.real.square() + spec.imag.square()).clamp_min(1e-10))
            mel = torch.einsum("nft,fm->nmt", mag, self.fb)
        return mel.reshape(b, c, mel.shape[1], mel.shape[2])


class MultiScaleMelLoss(nn.Module):
    """sum_s  mean ||S_s(x) - S_s(y)||_1 + sqrt(s / 2) mean ||log S_s(x) - log S_s(y)||_2."""

    def __init__(
        self,
        scales: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
        n_mels: int = 64,
        log_floor: float = 1e-5,
    ) -> None:
        super().__init__()
        self.mels = nn.ModuleList(MelSpectrogram(s, n_mels) for s in scales)
        self.alphas = [math.sqrt(s / 2) for s in scales]
        self.log_floor = log_floor

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (reference), y (reconstruction): [B, C, T] -> scalar."""
        total = x.new_zeros((), dtype=torch.float32)
        with fp32(x.device):
            for mel, alpha in zip(self.mels, self.alphas, strict=True):
                sx, sy = mel(x.float()), mel(y.float())
                l1 = (sx - sy).abs().sum(dim=2).mean()
                dlog = torch.log(sx.clamp_min(self.log_floor)) - torch.log(
                    sy.clamp_min(self.log_floor)
                )
                l2 = torch.sqrt(dlog.square().sum(dim=2) + 1e-8).mean()
                total = total + l1 + alpha * l2
        return total


def discriminator_hinge(
    real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]
) -> torch.Tensor:
    """mean over discriminators of mean(relu(1 - D(x))) + mean(relu(1 + D(G(x))))."""
    with fp32(real_logits[0].device):
        terms = [
            F.relu(1 - r.float()).mean() + F.relu(1 + f.float()).mean()
            for r, f in zip(real_logits, fake_logits, strict=True)
        ]
        return torch.stack(terms).mean()


def generator_adversarial(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """mean over discriminators of mean(relu(1 - D(G(x))))."""
    with fp32(fake_logits[0].device):
        return torch.stack([F.relu(1 - f.float()).mean() for f in fake_logits]).mean()


def feature_matching(
    real_feats: Sequence[Sequence[torch.Tensor]], fake_feats: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """L1 between D's intermediate maps on real and fake, mean per map, averaged over all maps."""
    with fp32(real_feats[0][0].device):
        terms = [
            (r.detach().float() - f.float()).abs().mean()
            for rs, fs in zip(real_feats, fake_feats, strict=True)
            for r, f in zip(rs, fs, strict=True)
        ]
        return torch.stack(terms).mean()


def codec_stft(a: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> complex STFT [B * C, 481, frames] at the codec's own resolution (960 / 480,
    periodic Hann, no centring), in float32."""
    return frames_stft(a.float(), N_FFT, HOP_SAMPLES)


def stft_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 on the complex STFT (re and im) at the codec's own resolution (n_fft 960, hop 480)."""
    with fp32(x.device):
        return (torch.view_as_real(codec_stft(x)) - torch.view_as_real(codec_stft(y))).abs().mean()


def waveform_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with fp32(x.device):
        return (x.float() - y.float()).abs().mean()


def si_sdr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """SI-SDR in dB per [B, C] signal, [B, C, T] -> [B, C] (``spectrostream.metrics.si_sdr``,
    float32, eps 1e-8 so that silence and zero outputs keep finite gradients)."""
    with fp32(reference.device):
        return _si_sdr(reference.float(), estimate.float(), eps=1e-8)


def sdr_loss(x: torch.Tensor, y: torch.Tensor, scale_invariant: bool = False) -> torch.Tensor:
    """Negative SDR in dB, mean over [B, C] signals; ``scale_invariant`` gives negative SI-SDR.

    Scale-dependent SDR is 10 log10(|x|^2 / |x - y|^2): it asks for the right waveform, phase
    and level included, and weighs a quiet crop like a loud one.
    """
    if scale_invariant:
        return -si_sdr(x, y).mean()
    with fp32(x.device):
        xf, yf = x.float(), y.float()
        num = xf.square().sum(-1) + 1e-8
        den = (xf - yf).square().sum(-1) + 1e-8
        return -(10 * torch.log10(num / den)).mean()


def cosine_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of the mean-removed waveforms, mean over [B, C] signals.

    Scale-invariant like SI-SDR, but where SI-SDR in dB has the gradient ~ 1 / <x, y>, which
    explodes and takes the sign of the correlation for outputs that barely correlate with their
    input (every output early in training: the least correlated example of a batch then sets
    the direction), this one's gradient is bounded by 2 / ||y|| and always points towards +x.
    """
    with fp32(x.device):
        xf = x.float() - x.float().mean(-1, keepdim=True)
        yf = y.float() - y.float().mean(-1, keepdim=True)
        dot = (xf * yf).sum(-1)
        cos = dot / (xf.norm(dim=-1) * yf.norm(dim=-1) + 1e-8)
        return (1 - cos).mean()


class LogMagnitudeLoss(nn.Module):
    """Mean |log|X_s| - log|Y_s||| over linear-frequency STFTs (window s, hop s/4), averaged
    over scales. At s = 2048-4096 (11.7-23.4 Hz bins) it resolves the harmonics of a note and
    the valleys between them, which the mel distance's 64 bands average away; magnitudes are
    floored at ``floor`` (as the mel distance's logs are) so silent bins do not dominate.
    """

    def __init__(self, scales: Sequence[int] = (1024, 2048, 4096), floor: float = 1e-5) -> None:
        super().__init__()
        self.scales, self.floor = tuple(scales), floor
        for s in self.scales:
            window = torch.hann_window(s, periodic=True)
            self.register_buffer(f"window_{s}", window, persistent=False)

    def _logmag(self, a: torch.Tensor, s: int) -> torch.Tensor:
        window = getattr(self, f"window_{s}")
        spec = torch.stft(a, s, s // 4, window=window, center=True, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        return 0.5 * torch.log(power.clamp_min(self.floor**2))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (reference), y (reconstruction): [B, C, T] -> scalar."""
        with fp32(x.device):
            xf, yf = x.float().flatten(0, 1), y.float().flatten(0, 1)
            terms = [(self._logmag(xf, s) - self._logmag(yf, s)).abs().mean() for s in self.scales]
            return torch.stack(terms).mean()


BAND_EDGES_HZ = (0, 250, 500, 1000, 2000, 4000, 8000, 24000)


def band_cosine_loss(
    x: torch.Tensor, y: torch.Tensor, edges_hz: Sequence[float] = BAND_EDGES_HZ
) -> torch.Tensor:
    """1 - cosine similarity of the complex codec STFTs (960 / 480) band by band (octaves),
    averaged over bands with equal weight: the waveform cosine of ``cosine_loss`` per band, so
    the bass, which holds most of music's energy, does not decide it alone. Bands where the
    reference is silent (below 1e-4 of its loudest band) are left out."""
    with fp32(x.device):
        return _band_cosine(codec_stft(x), codec_stft(y), edges_hz)


def phase_advance_loss(
    x: torch.Tensor, y: torch.Tensor, axis: str = "time", edges_hz: Sequence[float] = BAND_EDGES_HZ
) -> torch.Tensor:
    """The band cosine (``band_cosine_loss``) of the phase-advance fields of the codec STFTs
    instead of the STFTs: X[t] conj(X[t - 1]) along ``axis = "time"`` (its angle is the
    instantaneous frequency: where a partial sits within its bin) or X[k] conj(X[k - 1])
    along ``"freq"`` (the group delay: where a transient sits within its frame). Each field is
    scaled to the magnitude sqrt(|X[t]| |X[t - 1]|), so its energy is on the STFT's scale.

    It asks for coherent partials and transients without asking for the absolute phase: a
    constant phase offset per bin (time) or per frame (freq) leaves it unchanged, and so does
    the level of each band (APCodec's instantaneous-frequency and group-delay terms, as cosines)."""
    if axis not in ("time", "freq"):
        raise ValueError(f"axis must be 'time' or 'freq', got {axis!r}")
    with fp32(x.device):
        zx, zy = codec_stft(x), codec_stft(y)  # [N, 481, frames]
        return _band_cosine(_advance(zx, axis), _advance(zy, axis), edges_hz)


def _advance(z: torch.Tensor, axis: str) -> torch.Tensor:
    d = z[..., 1:] * z[..., :-1].conj() if axis == "time" else z[:, 1:] * z[:, :-1].conj()
    # |d| with an epsilon inside the root: d = 0 (digital silence) keeps a finite gradient.
    return d * torch.rsqrt((d.real.square() + d.imag.square() + 1e-24).sqrt())


def _band_cosine(zx: torch.Tensor, zy: torch.Tensor, edges_hz: Sequence[float]) -> torch.Tensor:
    """1 - cos of complex fields [N, bins, frames] per band of ``edges_hz``, bands weighted
    equally, bands 40 dB below the reference's loudest left out; mean over N."""
    hz_per_bin = SAMPLE_RATE / N_FFT
    terms, weights = [], []
    for lo, hi in itertools.pairwise(edges_hz):
        a, b = round(lo / hz_per_bin), round(hi / hz_per_bin) + (hi == edges_hz[-1])
        bx, by = zx[:, a:b], zy[:, a:b]
        dot = (bx * by.conj()).real.sum((1, 2))
        nx = bx.abs().square().sum((1, 2))
        ny = by.abs().square().sum((1, 2))
        # The epsilon sits inside the root: a band that is exactly silent in the
        # reference (a crop of digital silence) has nx = 0, and d sqrt(nx ny) / d ny is
        # then 0 / 0 = NaN, which a step once wrote into every weight.
        terms.append(1 - dot / torch.sqrt(nx * ny + 1e-16))
        weights.append(nx)
    e = torch.stack(weights)  # [bands, N]
    active = (e > 1e-4 * e.amax(0, keepdim=True)).float()
    per_signal = (torch.stack(terms) * active).sum(0) / active.sum(0).clamp_min(1)
    return per_signal.mean()


def stationary_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared distance of the complex codec STFTs (960 / 480) averaged over every frame of
    every signal in the batch, relative to the reference's mean frame energy. A decoder that
    adds the same complex value to a bin whatever the input plays a fixed comb of tones at
    multiples of the 100 Hz frame rate (docs/training.md, "Round 4"); averaging over the batch
    as well as the frames keeps that pattern and shrinks music's own average (random phases)
    to about 1 / (signals x frames) of its energy, so the loss sees the pattern, not the crop."""
    with fp32(x.device):
        zx, zy = codec_stft(x), codec_stft(y)  # [N, 481, frames]
        diff = (zy.mean((0, 2)) - zx.mean((0, 2))).abs().square().sum()
        return diff / (zx.abs().square().mean((0, 2)).sum() + 1e-8)


def envelope_loss(
    x: torch.Tensor, y: torch.Tensor, per_octave: int | Sequence[int] = ENVELOPE_PER_OCTAVE
) -> torch.Tensor:
    """Mean absolute dB difference of band energies (1 / ``per_octave`` octave) per 21 ms frame
    (the metric ``spectrostream.metrics.envelope_distance``), averaged over the batch and
    channels: the time-varying spectral envelope, which ViSQOL hears first (docs/training.md,
    "Round 5"). Several band widths give the mean of the distances at each ("Round 14")."""
    widths = (per_octave,) if isinstance(per_octave, int) else tuple(per_octave)
    with fp32(x.device):
        x, y = x.float(), y.float()
        total = sum(envelope_distance(x, y, per_octave=w).mean() for w in widths)
        return total / len(widths)


def compressed_stft_loss(x: torch.Tensor, y: torch.Tensor, power: float = 0.3) -> torch.Tensor:
    """Mean squared error of |X|^p e^(i angle X) at the codec's STFT (960 / 480), plus the same
    on the compressed magnitudes alone; compression lifts quiet bins, the complex term is phase.
    """
    with fp32(x.device):

        def spec(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = codec_stft(a)
            # Magnitudes are floored at 1e-2 (about -90 dB of a full-scale sine's peak bin)
            # before compression: d|X|^p/d|X| grows as |X|^(p - 1), and without a floor
            # near-silent bins dominated the gradient (a run diverged that way).
            mag = (z.real.square() + z.imag.square() + 1e-4).sqrt()
            comp = mag**power
            return torch.view_as_real(z * (comp / mag)), comp

        zx, mx = spec(x)
        zy, my = spec(y)
        return (zx - zy).square().sum(-1).mean() + (mx - my).square().mean()
