"""Multi-scale STFT discriminators (one per window length, no shared weights).

Each discriminator sees, per audio channel, the complex STFT as three planes (re, im, |X|),
laid out [B*C, 3, frames, bins] like the codec's own spectra (time first). Delayed fusion:
the first layers run per audio channel with shared weights (channel folded into the batch),
then the channel groups are concatenated and the late layers run jointly.

Convs use symmetric zero padding. Normalization: ``LayerNorm2d`` after every conv (before the
activation): a layer norm over all non-batch dims [C, T, F] with a per-channel affine (the same
function as ``GroupNorm(1, C)``), which works for any number of frames (a per-element LayerNorm
would need a fixed T). It is written with ``var_mean`` and elementwise ops rather than
GroupNorm because GroupNorm(1, C) reduces each example with one thread block, runs in float32
under autocast and was the largest single cost of a training step on an H200.

Widths (W = base width, C = audio channels), frequency/time strides in brackets:
    per channel:  3 -> W (1,1), k 3x7;  W -> W (t1,f2);  W -> W (t2,f2)
    joint:        C*W -> 2W (1,2);  2W -> 2W (2,2);  2W -> 4W (1,2);  4W -> 4W (1,1)
    logits:       4W -> 1, k 3x3
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv(
    cin: int, cout: int, stride: tuple[int, int], kernel: tuple[int, int] | None = None
) -> nn.Conv2d:
    """Kernel 3 on unstrided axes, 4 on stride-2 axes; symmetric padding (k - s) // 2."""
    if kernel is None:
        kernel = (3 if stride[0] == 1 else 4, 3 if stride[1] == 1 else 4)
    pad = ((kernel[0] - stride[0]) // 2, (kernel[1] - stride[1]) // 2)
    return nn.Conv2d(cin, cout, kernel, stride, pad)


class LayerNorm2d(nn.Module):
    """Normalize [B, C, T, F] over (C, T, F) per example; per-channel scale and shift.

    Statistics are accumulated in float32 by ``var_mean`` whatever the input dtype; the output
    keeps the input dtype (bf16 under autocast), so no float32 copies of the maps are made.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
        scale = torch.rsqrt(var + self.eps) * self.weight.to(x.dtype)[None, :, None, None]
        return (x - mean) * scale + self.bias.to(x.dtype)[None, :, None, None]


class _Layer(nn.Module):
    """conv -> LayerNorm2d -> LeakyReLU(0.2)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.norm = LayerNorm2d(conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class ConvStack(nn.Module):
    """[B*C, 3, T, F] spectra -> (logits [B, 1, T', F'], feature maps, batch first).

    Separate from the STFT so that it alone can be compiled (inductor has no complex ops).
    """

    def __init__(self, audio_channels: int, w: int) -> None:
        super().__init__()
        self.early = nn.ModuleList(
            [
                _Layer(_conv(3, w, (1, 1), (3, 7))),
                _Layer(_conv(w, w, (1, 2))),
                _Layer(_conv(w, w, (2, 2))),
            ]
        )
        self.late = nn.ModuleList(
            [
                _Layer(_conv(audio_channels * w, 2 * w, (1, 2))),
                _Layer(_conv(2 * w, 2 * w, (2, 2))),
                _Layer(_conv(2 * w, 4 * w, (1, 2))),
                _Layer(_conv(4 * w, 4 * w, (1, 1))),
            ]
        )
        self.out = _conv(4 * w, 1, (1, 1))

    def forward(self, x: torch.Tensor, b: int, c: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats: list[torch.Tensor] = []
        for layer in self.early:
            x = layer(x)
            feats.append(x.reshape(b, c, *x.shape[1:]))  # batch first, for real/fake splits
        x = x.reshape(b, c * x.shape[1], x.shape[2], x.shape[3])  # fusion
        for layer in self.late:
            x = layer(x)
            feats.append(x)
        return self.out(x), feats


class STFTDiscriminator(nn.Module):
    """audio [B, C, T] -> (logits [B, 1, T', F'], feature maps, each with batch first).

    Early (per-channel) maps are [B, C, W, T', F'], late maps [B, W', T', F'].
    """

    def __init__(self, window: int, audio_channels: int = 2, base_width: int = 32) -> None:
        super().__init__()
        self.window, self.hop, self.audio_channels = window, window // 2, audio_channels
        w = base_width
        self.register_buffer(
            "stft_window", torch.hann_window(window, periodic=True), persistent=False
        )
        self.stack = ConvStack(audio_channels, w)

    def spectrum(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, C, T] -> [B*C, 3, frames, bins] (re, im, |X|), float32."""
        b, c, t = audio.shape
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spec = torch.stft(
                audio.float().reshape(b * c, t),
                self.window,
                self.hop,
                window=self.stft_window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            re, im = spec.real, spec.imag
            mag = torch.sqrt((re.square() + im.square()).clamp_min(1e-10))
            return torch.stack([re, im, mag], dim=1).transpose(2, 3)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, _ = audio.shape
        if c != self.audio_channels:
            raise ValueError(f"discriminator expects {self.audio_channels} channels, got {c}")
        x = self.spectrum(audio)
        if _is_cl(self):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stack(x, b, c)


def _is_cl(module: STFTDiscriminator) -> bool:
    w = module.stack.early[0].conv.weight
    return w.is_contiguous(memory_format=torch.channels_last)


class MultiScaleSTFTDiscriminator(nn.Module):
    """One STFT discriminator per window; returns (logits per scale, feature maps per scale)."""

    def __init__(
        self,
        windows: Sequence[int] = (128, 256, 512, 1024, 2048, 4096),
        audio_channels: int = 2,
        base_width: int = 32,
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(w, audio_channels, base_width) for w in windows
        )

    def forward(self, audio: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, feats = [], []
        for d in self.discriminators:
            lg, ft = d(audio)
            logits.append(lg)
            feats.append(ft)
        return logits, feats
