"""Pure, fixed-shape step functions of the encoder and decoder networks.

One step is one code frame (40 ms):

    encoder: spectrum [B, C, 2, 4, 480] (four STFT frames)  -> embedding [B, D, 1]
    decoder: embedding [B, D, 1]                            -> spectrum [B, C, 2, 4, 480]

``NetworkStep(net)(x, *state) -> (y, *new_state)`` runs the same layers as streaming, with
each buffering layer's pending frames passed in and returned as tensors (fixed shapes, the
fresh state is all zeros), so ``torch.onnx.export`` and ``torch.compile`` can take it. The
STFT, iSTFT, look-ahead trim and RVQ stay outside (``StreamingEncoder`` feeds the encoder
network the same whole code frames, so the two give the same embeddings).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FRAMES_PER_CODE, STFT_BINS
from .streaming import FrameBuffer, StreamingModule, is_streaming, set_streaming


class NetworkStep(nn.Module):
    """``forward(x, *state) -> (y, *state)`` for ``model.encoder`` or ``model.decoder``.

    Inputs are cast to the network's dtype (fp32 audio features into a bf16 model give bf16)."""

    def __init__(self, net: nn.Module, example: torch.Tensor) -> None:
        super().__init__()
        if is_streaming(net):
            raise RuntimeError("the network has an open stream")
        self.net = net
        self.dtype = next(net.parameters()).dtype
        self.example_shape = tuple(example.shape)
        # One step from the fresh state tells which layers buffer frames, and their shapes.
        set_streaming(net, True)
        try:
            with torch.no_grad():
                net(torch.zeros_like(example, dtype=self.dtype))
            layers = [
                (name, m)
                for name, m in net.named_modules()
                if isinstance(m, StreamingModule) and m._stream_state is not None
            ]
            self.state_names = [name for name, _ in layers]
            self.state_shapes = [tuple(m._stream_state.valid().shape) for _, m in layers]
            self._layers = [m for _, m in layers]
        finally:
            set_streaming(net, False)

    def initial_state(self) -> list[torch.Tensor]:
        """The fresh state: zeros (the causal padding), one tensor per buffering layer."""
        dev = next(self.net.parameters()).device
        return [torch.zeros(s, device=dev, dtype=self.dtype) for s in self.state_shapes]

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if tuple(x.shape) != self.example_shape or len(state) != len(self._layers):
            raise ValueError(
                f"step input must be {self.example_shape} plus {len(self._layers)} states"
            )
        if is_streaming(self.net):
            raise RuntimeError("the network has an open stream (a step would reset it)")
        set_streaming(self.net, True)
        try:
            for m, s in zip(self._layers, state, strict=True):
                m._stream_state = FrameBuffer(s.to(self.dtype), s.shape[2], 2, inplace=False)
            y = self.net(x.to(self.dtype))
            new = []
            for m, shape in zip(self._layers, self.state_shapes, strict=True):
                buf = m._stream_state.valid()
                if tuple(buf.shape) != shape:  # every layer sees whole windows at every step
                    raise RuntimeError(f"state shape changed: {tuple(buf.shape)} != {shape}")
                new.append(buf)
        finally:
            set_streaming(self.net, False)
        return (y, *new)


def encoder_step(model: nn.Module, batch: int = 1) -> NetworkStep:
    """The encoder network's step: spectrum [B, C, 2, 4, 480] -> embedding [B, D, 1]."""
    c = model.config.audio_channels
    example = torch.zeros(batch, c, 2, FRAMES_PER_CODE, STFT_BINS, device=_device(model))
    return NetworkStep(model.encoder, example)


def decoder_step(model: nn.Module, batch: int = 1) -> NetworkStep:
    """The decoder network's step: embedding [B, D, 1] -> spectrum [B, C, 2, 4, 480]."""
    example = torch.zeros(batch, model.config.embedding_dim, 1, device=_device(model))
    return NetworkStep(model.decoder, example)


def _device(model: nn.Module) -> torch.device:
    return model.quantizer.codebooks.device
