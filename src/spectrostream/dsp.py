"""STFT and inverse STFT as streaming modules (window 960, hop 480, 480 bins kept).

Frame t covers samples [480 t, 480 t + 960): no centring and no left padding, so each frame sees
480 samples ahead. The inverse overlap-adds frame m at [480 m, 480 m + 960) and emits 480 finished
samples per frame; output sample n lines up with input sample n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import HOP_SAMPLES, N_FFT, STFT_BINS
from .streaming import KEEP_MAX_FRAMES, FrameBuffer, StreamingModule

KEEP_MAX_SAMPLES = KEEP_MAX_FRAMES * HOP_SAMPLES


def analysis_window(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Periodic Hann: 0.5 - 0.5 cos(2 pi n / 960), [960]."""
    n = torch.arange(N_FFT, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * n / N_FFT)).to(dtype)


def synthesis_window(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w(n) / (w(n mod 480)^2 + w(n mod 480 + 480)^2), [960]; perfect reconstruction with OLA."""
    w = analysis_window(torch.float64)
    half = w[: N_FFT - HOP_SAMPLES] ** 2 + w[HOP_SAMPLES:] ** 2
    return (w / half.repeat(2)).to(dtype)


class STFT(StreamingModule):
    """audio [B, C, n] -> spectrum [B, C, 2, frames, 480] (re, im); state = unconsumed samples."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", analysis_window(), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        pending: FrameBuffer | None = self._load_state()
        if pending is None:
            pending = FrameBuffer.zeros(audio, -1, 0, audio.shape[-1], KEEP_MAX_SAMPLES)
        buf = pending.append(audio)
        length = buf.shape[-1]
        frames = (length - N_FFT) // HOP_SAMPLES + 1 if length >= N_FFT else 0
        b, c = buf.shape[:2]
        if frames == 0:
            spec = buf.new_zeros(b, c, 2, 0, STFT_BINS)
        else:
            used = buf[..., : (frames - 1) * HOP_SAMPLES + N_FFT].float()
            x = used.unfold(-1, N_FFT, HOP_SAMPLES) * self.window  # [B, C, frames, 960]
            z = torch.fft.rfft(x, n=N_FFT, dim=-1)[..., :STFT_BINS]
            spec = torch.stack([z.real, z.imag], dim=2)
        pending.consume(frames * HOP_SAMPLES)
        self._store_state(pending)
        return spec

    def frames_for(self, num_samples: int) -> int:
        """Offline frame count for ``num_samples`` (zero-filled past the end)."""
        return -(-num_samples // HOP_SAMPLES)


class ISTFT(StreamingModule):
    """spectrum [B, C, 2, frames, 480] -> audio [B, C, 480 frames]; state = overlap tail [B, C, 480]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", synthesis_window(), persistent=False)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        b, c, _, frames, _ = spec.shape
        tail: OverlapTail | None = self._load_state()
        if tail is None:
            tail = OverlapTail(spec.new_zeros(b, c, HOP_SAMPLES, dtype=torch.float32))
        if frames == 0:
            self._store_state(tail)
            return spec.new_zeros(b, c, 0, dtype=torch.float32)
        spec = spec.float()
        z = torch.complex(spec[:, :, 0], spec[:, :, 1])
        z = torch.nn.functional.pad(z, (0, 1))  # zero Nyquist bin
        y = torch.fft.irfft(z, n=N_FFT, dim=-1) * self.window  # [B, C, frames, 960]
        head, second = y[..., :HOP_SAMPLES], y[..., HOP_SAMPLES:]
        out = head.clone()
        out[:, :, 0] += tail.samples
        out[:, :, 1:] += second[:, :, :-1]
        tail.samples = second[:, :, -1]
        self._store_state(tail)
        return out.reshape(b, c, frames * HOP_SAMPLES)


@dataclass
class OverlapTail:
    """ISTFT state: the second half of the last frame, added to the next frame's first [B, C, 480]."""

    samples: torch.Tensor
