"""Experimental int8 inference: static int8 convolutions calibrated on audio (CPU only).

Every ``CausalConv2d`` except the first (spectrum in) and last (spectrum out) runs as an int8
convolution: per-channel symmetric int8 weights, per-tensor uint8 activations whose ranges are
observed while running the model on calibration audio, PyTorch's ``x86`` quantized engine
(VNNI where the CPU has it). Input and output stay float32 (quantize, conv, dequantize), so the
streaming state, the residual adds, the transposed convs and the RVQ stay float32. Judged by
quality (SNR against float32), not parity: the codes differ.

    model = quantize_int8(copy.deepcopy(codec.model), calibration_audio)  # [1, C, T] at 48 kHz
"""

from __future__ import annotations

import warnings

import torch
import torch.ao.nn.quantized as nnq
from torch import nn

from .layers import CausalConv2d


class Int8Conv2d(nn.Module):
    """A float Conv2d's int8 twin: float in, float out, int8 inside."""

    def __init__(
        self, conv: nn.Conv2d, in_range: tuple[float, float], out_range: tuple[float, float]
    ):
        super().__init__()
        w = conv.weight.detach().float()
        scales = (w.abs().amax((1, 2, 3)) / 127).clamp_min(1e-12)
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated upstream
            qw = torch.quantize_per_channel(w, scales.double(), zeros, 0, torch.qint8)
            self.qconv = nnq.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding
            )
            self.qconv.set_weight_bias(qw, None if conv.bias is None else conv.bias.detach())
        self.in_scale, self.in_zero = _affine(*in_range)
        self.qconv.scale, self.qconv.zero_point = _affine(*out_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = torch.quantize_per_tensor(x, self.in_scale, self.in_zero, torch.quint8)
        return self.qconv(xq).dequantize()


def _affine(lo: float, hi: float) -> tuple[float, int]:
    """uint8 affine (scale, zero point) covering [lo, hi] (and 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255
    return scale, round(-lo / scale)


def int8_convs(model: nn.Module) -> dict[str, CausalConv2d]:
    """The layers made int8: all causal convs but the first and the last."""
    skip = {"encoder.base_conv_first", "decoder.output_layer.base_conv_last"}
    return {n: m for n, m in model.named_modules() if isinstance(m, CausalConv2d) and n not in skip}


@torch.no_grad()
def quantize_int8(model: nn.Module, audio: torch.Tensor) -> nn.Module:
    """Calibrate on ``audio`` [B, C, T] (48 kHz; offline round trip, all levels) and replace
    the convs in place. Returns ``model``."""
    if "x86" not in torch.backends.quantized.supported_engines:
        raise RuntimeError("int8 needs PyTorch's x86 quantized engine")
    torch.backends.quantized.engine = "x86"
    layers = int8_convs(model)
    ranges: dict[str, list[float]] = {}

    def observe(name: str):
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            r = ranges.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            x = args[0]
            r[0], r[1] = min(r[0], float(x.min())), max(r[1], float(x.max()))
            r[2], r[3] = min(r[2], float(out.min())), max(r[3], float(out.max()))

        return hook

    hooks = [m.conv.register_forward_hook(observe(n)) for n, m in layers.items()]
    try:
        model(audio)
    finally:
        for h in hooks:
            h.remove()
    for name, m in layers.items():
        r = ranges[name]
        m.conv = Int8Conv2d(m.conv, (r[0], r[1]), (r[2], r[3]))
    return model
