"""Streaming state for time-causal modules.

Each stateful layer owns a small typed state. Outside streaming mode a layer starts every call
from the fresh state and discards it afterwards; the fresh state *is* the causal left padding,
so offline inference is streaming with a single chunk: one code path, nothing to drift.

While streaming, a layer's frames live in a preallocated :class:`FrameBuffer` updated in place
(new frames copied in, the unconsumed rest shifted to the front): a 40 ms step allocates no
state. Under autograd or tracing (ONNX export) the same buffer works functionally (``cat`` and
slices), so gradients and exported graphs see pure operations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# A streaming buffer larger than this many frames (a long offline chunk) is not kept between
# calls: only its unconsumed frames are, so file coding in big chunks holds no chunk-sized state.
KEEP_MAX_FRAMES = 32


@dataclass
class FrameBuffer:
    """Frames waiting for a window along ``dim`` of ``buf``: the first ``fill`` are valid.

    ``inplace`` buffers are preallocated and reused; otherwise every update makes new tensors
    (autograd, tracing, the pure step function).
    """

    buf: torch.Tensor
    fill: int
    dim: int
    inplace: bool = True
    keep_max: int = KEEP_MAX_FRAMES

    @classmethod
    def zeros(
        cls,
        like: torch.Tensor,
        dim: int,
        fill: int,
        extra: int = 0,
        keep_max: int = KEEP_MAX_FRAMES,
    ) -> FrameBuffer:
        """``fill`` zero frames (the causal padding), room for ``extra`` more; other axes as ``like``.

        A buffer that grows past ``keep_max`` frames is not kept (only its unconsumed frames).
        """
        shape = list(like.shape)
        shape[dim] = fill + extra
        return cls(like.new_zeros(shape), fill, dim, _may_update_in_place(like), keep_max)

    def valid(self) -> torch.Tensor:
        return self.buf.narrow(self.dim, 0, self.fill)

    def append(self, x: torch.Tensor, elu: bool = False) -> torch.Tensor:
        """Add the frames of ``x`` (through ELU if asked); returns the valid frames (a view).

        ELU is computed on ``x`` itself, then copied: faster than writing it into the strided
        slot (measured), and the same bits as the functional path.
        """
        n = x.shape[self.dim]
        new = torch.nn.functional.elu(x) if elu else x
        if not (self.inplace and _may_update_in_place(x)):
            self.buf = torch.cat([self.valid(), new], self.dim) if self.fill else new
            self.fill += n
            self.inplace = False
            return self.buf
        total = self.fill + n
        stale = self.buf.is_inference() and not torch.is_inference_mode_enabled()
        if total > self.buf.shape[self.dim] or stale:
            grown = list(x.shape)
            grown[self.dim] = total
            old, self.buf = self.valid(), x.new_empty(grown)
            self.buf.narrow(self.dim, 0, self.fill).copy_(old)
        self.buf.narrow(self.dim, self.fill, n).copy_(new)
        self.fill = total
        return self.buf.narrow(self.dim, 0, total)

    def consume(self, n: int) -> None:
        """Drop the first ``n`` valid frames; the rest move to the front."""
        rest = self.fill - n
        if not self.inplace:
            self.buf = self.buf.narrow(self.dim, n, rest)
        elif self.buf.shape[self.dim] > self.keep_max:
            self.buf = self.buf.narrow(self.dim, n, rest).clone()
        elif rest and n:
            src = self.buf.narrow(self.dim, n, rest)
            self.buf.narrow(self.dim, 0, rest).copy_(src.clone() if n < rest else src)
        self.fill = rest

    def clone(self) -> FrameBuffer:
        return FrameBuffer(self.buf.clone(), self.fill, self.dim, self.inplace, self.keep_max)


def tensor_version(t: torch.Tensor) -> int:
    """In-place update counter, for caches keyed on a tensor; 0 for inference tensors (a model
    built under ``torch.inference_mode`` has no counter)."""
    return 0 if t.is_inference() else t._version


def _may_update_in_place(x: torch.Tensor) -> bool:
    # torch.compile: the functional path (inductor cannot trace the preallocated buffers).
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not (x.requires_grad and torch.is_grad_enabled())


def clone_state(state: Any) -> Any:
    """A deep copy of a layer state (tensors cloned), so snapshots survive in-place updates."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, FrameBuffer):
        return state.clone()
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(
            state,
            **{f.name: clone_state(getattr(state, f.name)) for f in dataclasses.fields(state)},
        )
    return state


class StreamingModule(nn.Module):
    """A module whose output depends on earlier calls while streaming is on."""

    def __init__(self) -> None:
        super().__init__()
        self._streaming = False
        self._stream_state: Any = None

    def _load_state(self) -> Any:
        """State to continue from, or None for the fresh (zero-padding) state."""
        return self._stream_state if self._streaming else None

    def _store_state(self, state: Any) -> None:
        if self._streaming:
            self._stream_state = state

    def reset(self) -> None:
        """Back to the fresh state (the next call starts a new stream)."""
        self._stream_state = None


def _streaming_children(module: nn.Module) -> list[StreamingModule]:
    return [m for m in module.modules() if isinstance(m, StreamingModule)]


def set_streaming(module: nn.Module, enabled: bool) -> None:
    """Turn streaming on or off for every streaming layer below ``module``; resets the state."""
    for m in _streaming_children(module):
        m._streaming = enabled
        m.reset()


def is_streaming(module: nn.Module) -> bool:
    return any(m._streaming for m in _streaming_children(module))


def reset(module: nn.Module) -> None:
    """Fresh state for every streaming layer below ``module`` (streaming stays on)."""
    for m in _streaming_children(module):
        m.reset()


@contextmanager
def streaming(module: nn.Module) -> Iterator[None]:
    """``with streaming(model):`` every call continues from the previous one."""
    if is_streaming(module):
        raise RuntimeError("module is already streaming (one stream per module at a time)")
    set_streaming(module, True)
    try:
        yield
    finally:
        set_streaming(module, False)


def get_state(module: nn.Module) -> dict[str, Any]:
    """Snapshot (a copy) of every layer's streaming state below ``module``, by module name."""
    return {
        name: clone_state(m._stream_state)
        for name, m in module.named_modules()
        if isinstance(m, StreamingModule)
    }


def set_state(module: nn.Module, state: dict[str, Any]) -> None:
    """Restore a :func:`get_state` snapshot (copied: the snapshot can be restored again)."""
    mods = {n: m for n, m in module.named_modules() if isinstance(m, StreamingModule)}
    if set(mods) != set(state):
        raise ValueError("state snapshot does not match this module's streaming layers")
    for name, m in mods.items():
        m._stream_state = clone_state(state[name])
