"""Causal 2D convolutions over [B, C, time, freq]: time is streamed, frequency is padded "same".

Time padding is "semicausal": left = max(k - s, 0) frames of zeros (the fresh streaming state),
and the right padding of the reference (k - 1 - left) is never needed because inputs are whole
multiples of the stride. Frequency padding for a regular conv totals k - s, split
(p // 2, p - p // 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from .streaming import FrameBuffer, StreamingModule, tensor_version

# CPU inference: oneDNN convolutions whose weights are reordered to oneDNN's blocked layout
# ("prepacked") once per weight version, not on every call. Streaming runs each conv on a few
# frames, where the per-call reorder of the weights costs more than the convolution itself.
# ``PREPACK_CPU = False`` restores the stock per-call path (benchmark baseline).
PREPACK_CPU = True
_MKLDNN_OPS = all(
    hasattr(torch.ops.mkldnn, op)
    for op in (
        "_convolution_pointwise",
        "_convolution_transpose_pointwise",
        "_reorder_convolution_weight",
        "_reorder_convolution_transpose_weight",
    )
)


@contextmanager
def stock_convs() -> Iterator[None]:
    """Inside: every conv takes the stock PyTorch path (no prepacked oneDNN weights), e.g. to
    trace a graph of plain ``aten.convolution`` ops for a compiler. Not thread-safe."""
    global PREPACK_CPU
    old, PREPACK_CPU = PREPACK_CPU, False
    try:
        yield
    finally:
        PREPACK_CPU = old


# Only short inputs (streaming steps) use prepacked copies: for long chunks the per-call reorder
# is amortised, and the copies would add up to the model's size to the peak memory of file coding.
PREPACK_MAX_FRAMES = 16


def _prepacked_path(x: torch.Tensor, conv: nn.Module) -> bool:
    """True for short CPU float32 inference inputs (no autograd), without weight norm."""
    return (
        PREPACK_CPU
        and x.shape[-2] <= PREPACK_MAX_FRAMES
        and _MKLDNN_OPS
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and not parametrize.is_parametrized(conv)
    )


class _PackedWeight:
    """Prepacked copies of a conv weight, rebuilt when the weight changes (in place or moved).

    oneDNN picks the blocked layout for the input shape (a 1x1 conv on one frame gets another
    layout than on fifty), and a mismatched layout is reordered again on every call, so copies
    are kept per input shape: the most recent ``MAX_SHAPES`` (a stream's steady step shape and
    an offline shape). Not module tensors: no state_dict entry, nothing to deep-copy or pickle.
    """

    MAX_SHAPES = 2

    def __init__(self) -> None:
        self.key: tuple = ()
        self.packed: dict[tuple[int, ...], torch.Tensor] = {}

    def get(
        self,
        w: torch.Tensor,
        shape: tuple[int, ...],
        pack: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        key = (w.data_ptr(), tensor_version(w), tuple(w.shape))
        if key != self.key:
            self.packed.clear()
            self.key = key
        hit = self.packed.pop(shape, None)
        if hit is None:
            hit = pack(w.detach().contiguous())
            while len(self.packed) >= self.MAX_SHAPES:
                self.packed.pop(next(iter(self.packed)))
        self.packed[shape] = hit  # most recent last
        return hit

    def __deepcopy__(self, memo: dict) -> _PackedWeight:
        return _PackedWeight()

    def __getstate__(self) -> dict:
        return {"key": (), "packed": {}}


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and results) with prepacked oneDNN weights for CPU inference."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._packed = _PackedWeight()

    def _conv_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.padding_mode != "zeros" or self.groups != 1 or not _prepacked_path(x, self):
            return super()._conv_forward(x, weight, bias)
        pad, stride, dil = list(self.padding), list(self.stride), list(self.dilation)
        w = self._packed.get(
            weight,
            tuple(x.shape),
            lambda w: torch.ops.mkldnn._reorder_convolution_weight(
                w, pad, stride, dil, 1, list(x.shape)
            ),
        )
        return torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(), w, bias, pad, stride, dil, 1, "none", [], ""
        )


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with prepacked oneDNN weights for CPU inference."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._packed = _PackedWeight()

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (
            output_size is not None
            or any(self.output_padding)
            or self.groups != 1
            or not _prepacked_path(x, self)
        ):
            return super().forward(x, output_size)
        pad, stride, dil = list(self.padding), list(self.stride), list(self.dilation)
        zero = [0, 0]
        w = self._packed.get(
            self.weight,
            tuple(x.shape),
            lambda w: torch.ops.mkldnn._reorder_convolution_transpose_weight(
                w, pad, zero, stride, dil, 1, list(x.shape)
            ),
        )
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x.contiguous(), w, self.bias, pad, zero, stride, dil, 1, "none", [], ""
        )


# Streaming steps of a conv with few output channels (the decoder's last: 2 planes) run faster
# with the step's output frames folded into the channels: one output frame of cout x n channels
# whose kernel spans the whole window (oneDNN is slow for cout < 8; 16 -> 2 channels, 7 x 7, a
# 40 ms step: 0.19 against 0.43 ms). Same products, summed in another order.
FOLD_MAX_COUT = 4
FOLD_MAX_FRAMES = 8


def _has_hooks(module: nn.Module) -> bool:
    """Forward (pre-)hooks on ``module`` or on every module: a folded conv does not call it."""
    glob = nn.modules.module
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or getattr(glob, "_global_forward_hooks", None)
        or getattr(glob, "_global_forward_pre_hooks", None)
    )


def fold_time(
    weight: torch.Tensor, bias: torch.Tensor | None, n: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Conv weight [Cout, Cin, k_t, k_f] (time stride 1) -> the weight [Cout n, Cin, n - 1 + k_t,
    k_f] (and bias) of one conv that gives its n output frames as channels (c, t)."""
    cout, cin, kt, kf = weight.shape
    folded = weight.new_zeros(cout, n, cin, n - 1 + kt, kf)
    for t in range(n):
        folded[:, t, :, t : t + kt] = weight
    return folded.reshape(cout * n, cin, n - 1 + kt, kf), (
        None if bias is None else bias.repeat_interleave(n)
    )


def semicausal_left(kernel: int, stride: int) -> int:
    return max(kernel - stride, 0)


class _TimeWindowed(StreamingModule):
    """Buffers time frames so that each output sees a full window of ``kernel_t`` frames.

    The state is a :class:`FrameBuffer` of the frames not yet consumed; it starts as ``left``
    zero frames. Layers without left padding whose input fills whole windows keep no state.
    """

    def __init__(self, kernel_t: int, stride_t: int, left: int) -> None:
        super().__init__()
        self.kernel_t, self.stride_t, self.left = kernel_t, stride_t, left
        self._passthrough = left == 0 and kernel_t == stride_t

    def _window(
        self, x: torch.Tensor, elu: bool = False
    ) -> tuple[torch.Tensor, int, FrameBuffer | None]:
        """Adds x [B, C, T, F] (ELU applied if asked) -> (whole windows, count, state to advance)."""
        state: FrameBuffer | None = self._load_state()
        t = x.shape[2]
        if state is None and self._passthrough and t % self.stride_t == 0:
            return (F.elu(x) if elu else x), t // self.stride_t, None
        if state is None:
            state = FrameBuffer.zeros(x, 2, self.left, t)
        buf = state.append(x, elu)
        length = buf.shape[2]
        n = (length - self.kernel_t) // self.stride_t + 1 if length >= self.kernel_t else 0
        return buf.narrow(2, 0, max(0, (n - 1) * self.stride_t + self.kernel_t)), n, state

    def _advance(self, state: FrameBuffer | None, n: int) -> None:
        """After the windows are used: drop the ``n`` outputs' frames from the state."""
        if state is None:
            return
        state.consume(n * self.stride_t)
        self._store_state(None if self._passthrough and state.fill == 0 else state)


class CausalConv2d(_TimeWindowed):
    """Conv2d, kernel (k_t, k_f), stride (s_t, s_f); [B, Cin, T, F] -> [B, Cout, T/s_t, F/s_f]."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int] = (3, 3),
        stride: tuple[int, int] = (1, 1),
        weight_norm: bool = False,
    ) -> None:
        kt, kf = kernel
        st, sf = stride
        super().__init__(kt, st, semicausal_left(kt, st))
        pad_f = kf - sf
        self.pad_f = (pad_f // 2, pad_f - pad_f // 2)
        self.kernel_f, self.stride_f, self.cout = kf, sf, cout
        # Symmetric frequency padding is done by the conv itself (no padded copy).
        self.pad_inside = self.pad_f[0] == self.pad_f[1]
        padding = (0, self.pad_f[0]) if self.pad_inside else (0, 0)
        self.conv = Conv2d(cin, cout, kernel, stride, padding)
        if weight_norm:
            parametrizations.weight_norm(self.conv)
        self._folded: tuple = ((), None, None)  # (key, weight, bias) of fold_time

    def out_bins(self, bins: int) -> int:
        return (bins + sum(self.pad_f) - self.kernel_f) // self.stride_f + 1

    def forward(self, x: torch.Tensor, elu: bool = False) -> torch.Tensor:
        """x [B, Cin, T, F] -> conv(ELU(x) if ``elu`` else x); ELU is fused into the buffering."""
        buf, n, state = self._window(x, elu)
        if n == 0:
            y = x.new_zeros(x.shape[0], self.cout, 0, self.out_bins(x.shape[3]))
        else:
            buf = buf if self.pad_inside else F.pad(buf, self.pad_f)
            fold = self._fold_frames(buf, n)
            y = self._folded_conv(buf, n, fold) if fold > 1 else self.conv(buf)
        self._advance(state, n)
        return y

    def _fold_frames(self, buf: torch.Tensor, n: int) -> int:
        """How many of the n output frames one folded output frame holds (FOLD_MAX_COUT): all
        n for a short CPU window (a stream step), FOLD_MAX_FRAMES for a long one that it
        divides (offline and training: 16 -> 2 channels, 7 x 7, 8 x 64 x 480 frames x bins,
        forward and backward 2.2x faster); 1: no fold."""
        if not (
            isinstance(self.conv, Conv2d)  # the float conv, weight norm or not (not int8)
            and self.cout <= FOLD_MAX_COUT < self.conv.in_channels
            and self.stride_t == 1
            and buf.device.type == "cpu"
            and not _has_hooks(self.conv)  # observers (int8 and init calibration) see it run
        ):
            return 1
        if 1 < n <= FOLD_MAX_FRAMES:
            return n
        return FOLD_MAX_FRAMES if n % FOLD_MAX_FRAMES == 0 else 1

    def _folded_weight(self, frames: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fold_time of the weight: cached for inference, built in the graph for training
        (and under weight norm, whose weight is recomputed on every access)."""
        w, b = self.conv.weight, self.conv.bias
        if torch.is_grad_enabled() or parametrize.is_parametrized(self.conv):
            return fold_time(w, b, frames)
        key = (w.data_ptr(), tensor_version(w), w.dtype, frames)
        key += () if b is None else (b.data_ptr(), tensor_version(b))
        if self._folded[0] != key:
            self._folded = (key, *fold_time(w.detach(), None if b is None else b.detach(), frames))
        return self._folded[1], self._folded[2]

    def _folded_conv(self, buf: torch.Tensor, n: int, frames: int) -> torch.Tensor:
        """The conv with ``frames`` output frames folded into the channels (time stride
        ``frames``), unfolded again: [B, cout, n, F]."""
        w, b = self._folded_weight(frames)
        if frames == n:  # one folded frame: the module's own (prepacked) conv
            y = self.conv._conv_forward(buf, w, b)
            return y.reshape(y.shape[0], self.cout, n, y.shape[3])
        y = F.conv2d(buf, w, b, (frames, self.stride_f), self.conv.padding)
        y = y.reshape(y.shape[0], self.cout, frames, n // frames, y.shape[3])
        return y.transpose(2, 3).reshape(y.shape[0], self.cout, n, y.shape[4])


class CausalConvTranspose2d(StreamingModule):
    """Transposed conv, kernel (k_t, k_f), stride (s_t, s_f): [B, Cin, T, F] -> [B, Cout, T s_t, F s_f].

    Reference semantics: zero-stuff by the stride, pad (k - 1, s - 1) in time and "same" in
    frequency (total k + s - 2, left ceil(total / 2), or k - 1 if s > k - 1), correlate with the
    stored kernel. Here: ``conv_transpose2d`` with the kernel flipped on both axes (the flip is
    done once, by the importer), then a crop. Fully causal in time; the state is a
    :class:`FrameBuffer` of the last ceil((k_t - 1) / s_t) input frames.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        kt, kf = kernel
        st, sf = stride
        self.kernel_t, self.stride_t, self.stride_f, self.cout = kt, st, sf, cout
        self.context = -(-(kt - 1) // st)
        total_f = kf + sf - 2
        left_f = kf - 1 if sf > kf - 1 else -(-total_f // 2)
        crop_f = kf - 1 - left_f
        # Only the kept output is computed: the conv's own padding crops min(left, right) on
        # both ends of each axis, a slice the rest. Full output (time) (T_in - 1) s_t + k_t, kept
        # from context * s_t, k_t - s_t spare on the right; (freq) crop_f left, k_f - s_f - crop_f
        # right.
        t0 = self.context * st
        pad_t = min(t0, max(kt - st, 0))
        pad_f = min(crop_f, max(kf - sf - crop_f, 0))
        self.start_t, self.start_f = t0 - pad_t, crop_f - pad_f
        self.conv = ConvTranspose2d(cin, cout, kernel, stride, padding=(pad_t, pad_f))
        if weight_norm:
            parametrizations.weight_norm(self.conv, dim=1)

    def forward(self, x: torch.Tensor, elu: bool = False) -> torch.Tensor:
        """x [B, Cin, T, F] -> conv_transpose(ELU(x) if ``elu`` else x), the kept frames."""
        b, _, t, bins = x.shape
        if t == 0:
            return x.new_zeros(b, self.cout, 0, bins * self.stride_f)
        state: FrameBuffer | None = self._load_state()
        if state is None:
            state = FrameBuffer.zeros(x, 2, self.context, t)
        y = self.conv(state.append(x, elu))
        state.consume(t)
        self._store_state(state)
        t0, f0 = self.start_t, self.start_f
        return y[:, :, t0 : t0 + t * self.stride_t, f0 : f0 + bins * self.stride_f]


class CausalAvgPool2d(_TimeWindowed):
    """Average pool with kernel = stride = (s_t, s_f), dividing by the full pool size."""

    def __init__(self, stride: tuple[int, int]) -> None:
        super().__init__(stride[0], stride[0], 0)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buf, n, state = self._window(x)
        if n == 0:
            y = x.new_zeros(x.shape[0], x.shape[1], 0, x.shape[3] // self.stride[1])
        else:
            y = F.avg_pool2d(buf, self.stride, self.stride)
        self._advance(state, n)
        return y


def _kernel_name(prefix: str, kernel: tuple[int, int], suffix: str = "") -> str:
    return f"{prefix}_{kernel[0]}x{kernel[1]}{suffix}"


class Shortcut(nn.Module):
    """Encoder shortcut: average pool by the stride (if any), then a 1x1 conv (if widths differ)."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int], weight_norm: bool) -> None:
        super().__init__()
        self.pool = CausalAvgPool2d(stride) if stride != (1, 1) else None
        self.conv1x1 = (
            CausalConv2d(cin, cout, (1, 1), weight_norm=weight_norm) if cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.conv1x1 is not None:
            x = self.conv1x1(x)
        return x


class EncoderBlock(nn.Module):
    """ELU, conv 3x3 (cin -> cin), ELU, resample conv with stride s (cin -> cout); plus shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: tuple[int, int],
        weight_norm: bool = False,
        mid: int | None = None,
    ) -> None:
        super().__init__()
        kernel = (max(3, 2 * stride[0]), max(3, 2 * stride[1]))
        mid = cin if mid is None else mid
        self.resample_name = _kernel_name("conv2d", kernel, "_a")
        self.conv2d_3x3 = CausalConv2d(cin, mid, (3, 3), weight_norm=weight_norm)
        self.add_module(self.resample_name, CausalConv2d(mid, cout, kernel, stride, weight_norm))
        self.shortcut_layer = Shortcut(cin, cout, stride, weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2d_3x3(x, elu=True)
        y = getattr(self, self.resample_name)(y, elu=True)
        return y + self.shortcut_layer(x)


class ResidualUnit(nn.Module):
    """ELU, conv 3x3, ELU, conv 3x3 (same width); identity shortcut.

    The official names are ``conv2d_3x3`` and ``conv2d_3x3_a``; the encoder's bottleneck applies
    ``conv2d_3x3`` first, the decoder's input unit ``conv2d_3x3_a`` first (checked against the
    parity fixture), hence ``a_first``.
    """

    def __init__(self, channels: int, weight_norm: bool = False, a_first: bool = False) -> None:
        super().__init__()
        self.a_first = a_first
        self.conv2d_3x3 = CausalConv2d(channels, channels, (3, 3), weight_norm=weight_norm)
        self.conv2d_3x3_a = CausalConv2d(channels, channels, (3, 3), weight_norm=weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.conv2d_3x3, self.conv2d_3x3_a
        if self.a_first:
            first, second = second, first
        return x + second(first(x, elu=True), elu=True)


class RepeatShortcut(nn.Module):
    """Decoder shortcut: 1x1 conv (if widths differ), then nearest-neighbour repeat by the stride."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int], weight_norm: bool) -> None:
        super().__init__()
        self.stride = stride
        self.conv1x1 = (
            CausalConv2d(cin, cout, (1, 1), weight_norm=weight_norm) if cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv1x1 is not None:
            x = self.conv1x1(x)
        st, sf = self.stride
        if st == sf == 1:
            return x
        b, c, t, f = x.shape  # one copy: [B, C, T, 1, F, 1] broadcast to the repeats
        return x[:, :, :, None, :, None].expand(b, c, t, st, f, sf).reshape(b, c, t * st, f * sf)


class DecoderBlock(nn.Module):
    """ELU, transposed conv with stride s (cin -> cout), ELU, conv 3x3 (cout -> cout); plus shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        self.up_name = _kernel_name("conv2dtranspose", kernel)
        self.add_module(self.up_name, CausalConvTranspose2d(cin, cout, kernel, stride, weight_norm))
        self.conv2d_3x3 = CausalConv2d(cout, cout, (3, 3), weight_norm=weight_norm)
        self.shortcut_layer = RepeatShortcut(cin, cout, stride, weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = getattr(self, self.up_name)(x, elu=True)
        y = self.conv2d_3x3(y, elu=True)
        return y + self.shortcut_layer(x)
