"""Encoder: spectrum [B, C, 2, T, 480] -> embeddings [B, D, T / 4] (25 Hz).

Runs per audio channel with shared weights (channels folded into the batch) down to 5 bins at
50 Hz, then fuses the channels by concatenation (channel 0's widths first) and finishes jointly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import LATENT_BINS, ModelConfig
from .layers import CausalConv2d, EncoderBlock, ResidualUnit

# (time, freq) strides of enc0..enc5 (per channel) and enc6 (fused).
GROUP_STRIDES = ((1, 2), (1, 2), (1, 3), (1, 2), (1, 2), (2, 2))
FUSED_STRIDE = (2, 1)


class EncoderHead(nn.Module):
    """Flattened [B, 5 C, N, 1] -> [B, D, N, 1]: 1x1 conv plus [ELU, 1x1, ELU, 1x1]."""

    def __init__(self, cin: int, dim: int, weight_norm: bool) -> None:
        super().__init__()
        self.conv1x1_last = CausalConv2d(cin, dim, (1, 1), weight_norm=weight_norm)
        self.shortcut_layer = nn.Module()
        self.shortcut_layer.conv1x1_b1 = CausalConv2d(cin, cin, (1, 1), weight_norm=weight_norm)
        self.shortcut_layer.conv1x1_b2 = CausalConv2d(cin, dim, (1, 1), weight_norm=weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_layer
        return self.conv1x1_last(x) + s.conv1x1_b2(F.elu(s.conv1x1_b1(F.elu(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        wn = cfg.weight_norm
        ch = cfg.encoder_channels
        self.audio_channels = cfg.audio_channels
        self.base_conv_first = CausalConv2d(2, ch[0], (7, 7), weight_norm=wn)
        self.group_blocks = [f"encoder_{i}" for i in range(len(GROUP_STRIDES))]
        for i, stride in enumerate(GROUP_STRIDES):
            self.add_module(f"encoder_{i}", EncoderBlock(ch[i], ch[i + 1], stride, wn))
        fused_in = cfg.audio_channels * ch[-1]
        self.encoder_6 = EncoderBlock(fused_in, cfg.fused_channels, FUSED_STRIDE, wn)
        self.bottleneck = ResidualUnit(cfg.fused_channels, wn)
        self.output_convs = EncoderHead(LATENT_BINS * cfg.fused_channels, cfg.embedding_dim, wn)

    def forward(self, spec: torch.Tensor, towers: Callable | None = None) -> torch.Tensor:
        """spec [B, C, 2, T, 480] -> [B, D, T / 4]; ``towers`` runs the per-channel layers in
        place of :meth:`towers` (a stream's :class:`~spectrostream.model.TowerSplit`)."""
        b, c, _, t, bins = spec.shape
        if c != self.audio_channels:
            raise ValueError(f"encoder expects {self.audio_channels} audio channels, got {c}")
        return self.joint((towers or self.towers)(spec.reshape(b * c, 2, t, bins)), b)

    def towers(self, x: torch.Tensor) -> torch.Tensor:
        """Per audio channel (channels in the batch, shared weights): [B*C, 2, T, 480] ->
        [B*C, W, T', 5]."""
        x = self.base_conv_first(x)
        for name in self.group_blocks:
            x = getattr(self, name)(x)
        return x

    def joint(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """Fusion and the joint layers: [B*C, W, T', 5] -> [B, D, T / 4]."""
        # Fusion: [B*C, W, T', 5] -> [B, C*W, T', 5].
        x = x.reshape(b, -1, x.shape[2], x.shape[3])
        x = self.bottleneck(self.encoder_6(x))
        n = x.shape[2]
        # Flatten with index f * W + w.
        x = x.permute(0, 3, 1, 2).reshape(b, x.shape[1] * x.shape[3], n, 1)
        return self.output_convs(x).squeeze(-1)
