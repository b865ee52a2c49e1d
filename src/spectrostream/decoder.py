"""Decoder: embeddings [B, D, N] -> spectrum [B, C, 2, 4 N, 480], before the look-ahead trim.

Runs jointly at 5 bins up to dec0, then splits the channels (channel 0 = first
``decoder_group_channels`` widths) and continues per audio channel with shared weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import LATENT_BINS, ModelConfig
from .layers import CausalConv2d, DecoderBlock, ResidualUnit
from .streaming import StreamingModule

# (kernel, stride) of dec1..dec6, (time, freq).
GROUP_BLOCKS = (
    ((4, 4), (2, 2)),
    ((3, 4), (1, 2)),
    ((3, 4), (1, 2)),
    ((3, 6), (1, 3)),
    ((3, 4), (1, 2)),
    ((3, 4), (1, 2)),
)
JOINT_BLOCK = ((4, 3), (2, 1))


class DecoderHead(nn.Module):
    """[B, D, N, 1] -> [B, 5 W, N, 1]: 1x1 conv plus [1x1, ELU, 1x1]."""

    def __init__(self, dim: int, cout: int, weight_norm: bool) -> None:
        super().__init__()
        self.conv1x1_first = CausalConv2d(dim, cout, (1, 1), weight_norm=weight_norm)
        self.shortcut_layer = nn.Module()
        self.shortcut_layer.conv1x1_b1 = CausalConv2d(dim, cout, (1, 1), weight_norm=weight_norm)
        self.shortcut_layer.conv1x1_b2 = CausalConv2d(cout, cout, (1, 1), weight_norm=weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_layer
        return self.conv1x1_first(x) + s.conv1x1_b2(F.elu(s.conv1x1_b1(x)))


class OutputLayer(nn.Module):
    def __init__(self, cin: int, weight_norm: bool) -> None:
        super().__init__()
        self.base_conv_last = CausalConv2d(cin, 2, (7, 7), weight_norm=weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_conv_last(F.elu(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        wn = cfg.weight_norm
        width = cfg.decoder_input_channels
        self.audio_channels = cfg.audio_channels
        self.input_layer = DecoderHead(cfg.embedding_dim, LATENT_BINS * width, wn)
        self.input_layers_residual_unit = ResidualUnit(width, wn, a_first=True)
        group = cfg.decoder_group_channels
        self.decoder_0 = DecoderBlock(width, cfg.audio_channels * group, *JOINT_BLOCK, wn)
        widths = (group, *cfg.decoder_channels)
        self.group_blocks = [f"decoder_{i + 1}" for i in range(len(GROUP_BLOCKS))]
        for i, (kernel, stride) in enumerate(GROUP_BLOCKS):
            self.add_module(
                f"decoder_{i + 1}", DecoderBlock(widths[i], widths[i + 1], kernel, stride, wn)
            )
        self.output_layer = OutputLayer(widths[-1], wn)

    def forward(self, emb: torch.Tensor, towers: Callable | None = None) -> torch.Tensor:
        """emb [B, D, N] -> spectrum [B, C, 2, 4 N, 480] (untrimmed); ``towers`` as in
        :meth:`Encoder.forward`."""
        x = (towers or self.towers)(self.joint(emb))  # [B*C, 2, T, 480]
        return x.reshape(emb.shape[0], self.audio_channels, 2, x.shape[2], x.shape[3])

    def joint(self, emb: torch.Tensor) -> torch.Tensor:
        """The joint layers and the split: emb [B, D, N] -> [B*C, W, 2 N, 5]."""
        b, _, n = emb.shape
        x = self.input_layer(emb.unsqueeze(-1))  # [B, 5 W, N, 1], index f * W + w
        x = x.reshape(b, LATENT_BINS, x.shape[1] // LATENT_BINS, n).permute(0, 2, 3, 1)
        x = self.decoder_0(self.input_layers_residual_unit(x))
        c = self.audio_channels
        return x.reshape(b * c, x.shape[1] // c, x.shape[2], x.shape[3])  # split

    def towers(self, x: torch.Tensor) -> torch.Tensor:
        """Per audio channel (channels in the batch, shared weights): [B*C, W, T, 5] ->
        [B*C, 2, T, 480]."""
        for name in self.group_blocks:
            x = getattr(self, name)(x)
        return self.output_layer(x)


class LookaheadTrim(StreamingModule):
    """Drops the first ``frames`` time frames of a stream (the decoder's one-code-frame look-ahead)."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        todo = self._load_state()
        todo = self.frames if todo is None else todo
        drop = min(todo, spec.shape[3])
        self._store_state(todo - drop)
        return spec[:, :, :, drop:]
