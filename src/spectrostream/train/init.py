"""Data-free initialisation for a fresh training model (LSUV-style scaling).

PyTorch's default init leaves the SpectroStream network badly scaled for audio: the latent
is mostly input-independent bias (96% of its energy on music for the quarter-width model) and
the decoded waveform is ~150x too quiet. ``calibrate`` zeroes every bias, then scales each
conv's weight (the weight-norm magnitude g when present), in network order, so that its output
has unit standard deviation on a fixed synthetic signal (1/f noise at -20 dBFS RMS); the last
conv is scaled so that the decoded waveform has the input's RMS.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import SAMPLE_RATE
from ..model import SpectroStream


def calibration_signal(channels: int, seconds: float = 0.64, seed: int = 0) -> torch.Tensor:
    """1/f (pink) noise [1, C, T] with RMS 0.1, deterministic."""
    g = torch.Generator().manual_seed(seed)
    n = round(seconds * SAMPLE_RATE)
    spec = torch.randn(channels, n // 2 + 1, 2, generator=g)
    f = torch.arange(n // 2 + 1, dtype=torch.float32).clamp_min(1.0)
    z = torch.view_as_complex(spec) / f.sqrt()
    x = torch.fft.irfft(z, n=n)
    return (0.1 * x / x.square().mean().sqrt())[None]


def _scale(conv: nn.Module, s: float) -> None:
    if parametrize.is_parametrized(conv, "weight"):
        conv.parametrizations.weight.original0.mul_(s)
    else:
        conv.weight.mul_(s)


@torch.no_grad()
def calibrate(model: SpectroStream) -> None:
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    for m in convs:
        if m.bias is not None:
            m.bias.zero_()
    x = calibration_signal(model.config.audio_channels)
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        seen["out"] = out

    for conv in convs[:-1]:
        h = conv.register_forward_hook(hook)
        try:
            model.decode_embeddings(model.encode_embeddings(x))
        finally:
            h.remove()
        std = float(seen["out"].std())
        if std > 0:
            _scale(conv, 1.0 / std)
    y = model.decode_embeddings(model.encode_embeddings(x))
    rms_y = float(y.square().mean().sqrt())
    if rms_y > 0:
        _scale(convs[-1], float(x.square().mean().sqrt()) / rms_y)
