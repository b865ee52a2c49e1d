"""Streaming state for time-causal modules.

Each stateful layer owns its state. Outside streaming mode a layer starts every call from the
fresh state and discards the state afterwards; the fresh state *is* the causal left padding, so
offline inference is streaming with a single chunk: one code path, nothing to drift.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


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


def _streaming_children(module: nn.Module) -> list[StreamingModule]:
    return [m for m in module.modules() if isinstance(m, StreamingModule)]


def set_streaming(module: nn.Module, enabled: bool) -> None:
    """Turn streaming on or off for every streaming layer below ``module``; resets the state."""
    for m in _streaming_children(module):
        m._streaming = enabled
        m._stream_state = None


def is_streaming(module: nn.Module) -> bool:
    return any(m._streaming for m in _streaming_children(module))


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
    """Snapshot of every layer's streaming state (tensors are shared, not copied)."""
    return {
        name: m._stream_state
        for name, m in module.named_modules()
        if isinstance(m, StreamingModule)
    }


def set_state(module: nn.Module, state: dict[str, Any]) -> None:
    for name, m in module.named_modules():
        if isinstance(m, StreamingModule):
            m._stream_state = state[name]
