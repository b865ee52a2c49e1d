"""Pure, fixed-shape step functions of the encoder and decoder networks.

One step is one code frame (40 ms):

    encoder: spectrum [B, C, 2, 4, 480] (four STFT frames)  -> embedding [B, D, 1]
    decoder: embedding [B, D, 1]                            -> spectrum [B, C, 2, 4, 480]

``NetworkStep(net)(x, *state) -> (y, *new_state)`` runs the same layers as streaming, with
each buffering layer's pending frames passed in and returned as tensors (fixed shapes, the
fresh state is all zeros), so ``torch.onnx.export`` and ``torch.compile`` can take it. The
STFT, iSTFT, look-ahead trim and RVQ stay outside (``StreamingEncoder`` feeds the encoder
network the same whole code frames, so the two give the same embeddings).

:class:`CompiledStep` is that step traced to a graph of ATen ops and compiled by inductor (C++,
frozen weights), run on the state of a network that is streaming: ``StreamingEncoder(...,
compiled=True)`` and ``StreamingDecoder(..., compiled=True)`` use it for 40 ms steps.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from . import quantizer as rvq
from .config import FRAMES_PER_CODE, STFT_BINS
from .layers import stock_convs
from .streaming import FrameBuffer, StreamingModule, is_streaming, set_streaming, tensor_version


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


class CompiledStep:
    """A network's one-code-frame step compiled by inductor, driving the network's own state.

    Built while the network is not streaming (it runs one step from the fresh state to trace);
    called while it streams: ``step(x) -> y`` reads each buffering layer's state, runs the
    compiled graph and stores the new states back in the layers, so ``get_state``, ``set_state``
    and ``reset`` of the stream, and eager calls in between, keep working. The graph has fixed
    shapes (``example``'s) and no Python in it, so it compiles once and never recompiles.

    The compiled convolutions and ELUs round differently from eager ones (outputs differ by
    ~1e-6 relative; codes can differ at a near tie of two codewords). If compiling fails (no
    C++ compiler, an unsupported torch), :attr:`compiled` is False (with a warning) and calls
    run the traced graph eagerly; the streams then use their layers instead.
    """

    def __init__(self, step: NetworkStep) -> None:
        self.step = step
        self.example_shape = step.example_shape
        self._zeros = step.initial_state()
        dev = next(step.net.parameters()).device
        example = torch.zeros(self.example_shape, dtype=step.dtype, device=dev)
        from torch.fx.experimental.proxy_tensor import make_fx

        with torch.no_grad(), stock_convs():
            graph = make_fx(self._dense_step)(example, *self._zeros)
        # The traced weights are plain tensor attributes; as (frozen) parameters inductor folds
        # them into prepacked oneDNN convolutions with fused adds.
        for node in graph.graph.nodes:
            if node.op == "get_attr":
                t = getattr(graph, node.target)
                delattr(graph, node.target)
                graph.register_parameter(node.target, nn.Parameter(t, requires_grad=False))
        self.fn: Callable[..., tuple[torch.Tensor, ...]] = graph
        # the states this graph last stored in the layers, and the tensors they held
        self._handed: list[tuple[FrameBuffer, torch.Tensor]] = []
        self.compiled = False
        try:
            import torch._inductor.config as inductor_config

            fn = torch.compile(graph, backend="inductor", fullgraph=True, dynamic=False)
            with inductor_config.patch(freezing=True):
                self._run(fn, example, self._zeros)  # compiles now
            self.fn, self.compiled = fn, True
        except Exception as e:  # noqa: BLE001 (any compiler failure: fall back, say why)
            warnings.warn(f"torch.compile of the streaming step failed, running eagerly: {e}")

    def _dense_step(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The step with row-major outputs: the next step's inputs, as the graph expects."""
        return tuple(t.contiguous() for t in self.step(x, *state))

    @staticmethod
    def _run(
        fn: Callable[..., tuple[torch.Tensor, ...]], x: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        """Calls ``fn`` with contiguous inference tensors under inference mode: inputs that
        differ only in strides or autograd keys would otherwise make dynamo recompile."""
        with torch.inference_mode():
            return fn(*[_dense_input(t) for t in (x, *state)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x of ``example``'s shape -> the network's output; advances the layers' states."""
        if tuple(x.shape) != self.example_shape:
            raise ValueError(
                f"compiled step input must be {self.example_shape}, got {tuple(x.shape)}"
            )
        layers = self.step._layers
        handed = self._handed
        if handed and all(
            m._stream_state is b and b.buf is t and b.fill == t.shape[2]
            for m, (b, t) in zip(layers, handed, strict=True)
        ):
            # the layers still hold this graph's own outputs, untouched (dense inference tensors)
            with torch.inference_mode():
                out = self.fn(_dense_input(x.to(self.step.dtype)), *[t for _, t in handed])
        else:
            state = [
                z if m._stream_state is None else m._stream_state.valid()
                for m, z in zip(layers, self._zeros, strict=True)
            ]
            out = self._run(self.fn, x.to(self.step.dtype), state)
        self._handed = [(FrameBuffer(t, t.shape[2], 2, inplace=False), t) for t in out[1:]]
        for m, (b, _) in zip(layers, self._handed, strict=True):
            m._stream_state = b
        return out[0]


def _dense_input(t: torch.Tensor) -> torch.Tensor:
    return t if _dense(t) else t.clone(memory_format=torch.contiguous_format)


def _dense(t: torch.Tensor) -> bool:
    """An inference tensor with the row-major strides of its shape (size-1 axes included)."""
    if not t.is_inference():
        return False
    expected, stride = [], 1
    for n in reversed(t.shape):
        expected.append(stride)
        stride *= n
    return tuple(reversed(expected)) == t.stride()


# Compiled steps per model, kept while the model lives (not copied with it).
_COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, CompiledStep]] = (
    weakref.WeakKeyDictionary()
)


def compiled_step(model: nn.Module, part: str, batch: int = 1) -> CompiledStep:
    """The compiled step of ``model.encoder`` or ``model.decoder`` (``part``) for ``batch``,
    compiled on first use (tens of seconds) and reused until the model's weights change."""
    if part not in ("encoder", "decoder"):
        raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")
    net = getattr(model, part)
    weights = tuple((p.data_ptr(), tensor_version(p)) for p in net.parameters())
    cache = _COMPILED.setdefault(model, {})
    key = (part, batch, weights)
    if key not in cache:
        for old in [k for k in cache if k[:2] == key[:2]]:
            del cache[old]
        make = encoder_step if part == "encoder" else decoder_step
        cache[key] = CompiledStep(make(model, batch))
    return cache[key]


class CompiledSearch:
    """The first pass of the exact CPU RVQ search of one frame (a 40 ms step), compiled by
    inductor: for each of ``levels`` levels the float32 scores of every codeword (the ranking's
    bias ||c_k||^2 minus x . c_k over the ranking's codewords, float16 where the CPU search
    ranks in float16; x = 2 x residual), their argmin, and the residual update x - 2 c in
    float32, as ``quantizer._argmin_levels`` does them, in one call instead of ``levels``
    products and their bookkeeping. ``quantizer._search_frame`` then proves every argmin the
    float64-nearest as before (the scores obey the same error bound: float32 sums in any
    order), so the codes are the exact search's. If compiling fails, :attr:`compiled` is False
    (with a warning) and the stream searches eagerly."""

    def __init__(self, quantizer: nn.Module, levels: int) -> None:
        from torch.fx.experimental.proxy_tensor import make_fx

        self.levels = levels
        tab = self.tables = quantizer.search_tables().exact
        rows = quantizer.codebooks.detach().float()[:levels]
        ranked = rows.half() if tab.half is not None else rows
        # copied codewords (``quantizer._copies``) are left out of the read: bias only
        live = [torch.from_numpy(np.flatnonzero(b < rvq.COPY_BIAS)) for b in tab.bias[:levels]]
        bias = torch.from_numpy(tab.bias[:levels])
        self._args = (
            torch.cat([r[i] for r, i in zip(ranked, live, strict=True)]),
            torch.cat([b[i] for b, i in zip(bias, live, strict=True)]),
            torch.cat(live),
            rows.contiguous(),
        )
        sizes = tuple(int(i.numel()) for i in live)
        step = functools.partial(_greedy_levels, sizes=sizes, size=rows.shape[1])
        self.compiled = False
        try:
            with torch.no_grad():  # traced: its own code, so its own compile cache
                graph = make_fx(step)(torch.zeros(rows.shape[2]), *self._args)
            self._run = torch.compile(graph, backend="inductor", fullgraph=True, dynamic=False)
            self(np.zeros(rows.shape[2], np.float32))  # compiles now
            self.compiled = True
        except Exception as e:  # noqa: BLE001 (any compiler failure: fall back, say why)
            warnings.warn(f"torch.compile of the RVQ search failed, searching eagerly: {e}")

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x [D] float32 (2 x embedding) -> codes [levels], scores [levels, K] and each
        level's input [levels, D] (numpy, writable)."""
        with torch.inference_mode():
            codes, scores, inputs = self._run(torch.from_numpy(x), *self._args)
        return codes.numpy(), scores.numpy(), inputs.numpy()


def _greedy_levels(
    x: torch.Tensor,
    ranked: torch.Tensor,
    bias: torch.Tensor,
    index: torch.Tensor,
    rows: torch.Tensor,
    sizes: tuple[int, ...],
    size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first pass (``CompiledSearch``): ``ranked`` [sum(sizes), D], ``bias`` and ``index``
    [sum(sizes)] hold each level's ranked codewords, biases and codebook indices in turn (
    ``sizes[l]`` of ``size`` per level), ``rows`` [L, size, D] the float32 codebooks."""
    codes, scores, inputs = [], [], []
    start = 0
    for level, n in enumerate(sizes):
        inputs.append(x)
        part = slice(start, start + n)
        s = bias[part] - (x[None, :] * ranked[part].float()).sum(1)
        s = torch.full((size,), rvq.COPY_BIAS).index_copy(0, index[part], s)
        code = s.argmin().reshape(1)
        codes.append(code)
        scores.append(s)
        x = x - 2.0 * torch.index_select(rows[level], 0, code)[0]
        start += n
    return torch.cat(codes), torch.stack(scores), torch.stack(inputs)


# Compiled searches per quantizer, kept while it lives.
_SEARCHES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, CompiledSearch]] = (
    weakref.WeakKeyDictionary()
)


def compiled_search(quantizer: nn.Module, levels: int) -> CompiledSearch | None:
    """The compiled first pass for ``levels`` levels of ``quantizer``'s exact CPU search,
    compiled on first use (tens of seconds for 64 levels) and reused until the codebooks
    change; None where the exact CPU search is not in use or compiling failed."""
    tab = quantizer.search_tables().exact  # rebuilt when the codebooks change
    if not rvq.EXACT_CPU_SEARCH or tab is None:
        return None
    cache = _SEARCHES.setdefault(quantizer, {})
    for stale in [k for k, v in cache.items() if v.tables is not tab]:
        del cache[stale]
    if levels not in cache:
        cache[levels] = CompiledSearch(quantizer, levels)
    search = cache[levels]
    return search if search.compiled else None
