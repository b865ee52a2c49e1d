"""SpectroStream: a full-band 48 kHz stereo neural audio codec in PyTorch.

The names below load on first use (PEP 562), so ``import spectrostream.bitstream`` (the
torch-free format layer) and the command line's light subcommands do not import torch.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

# Before torch loads OpenMP: waiting threads sleep instead of spinning (see runtime.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from .codec import Codec, load
    from .config import ModelConfig, official_config, small_config, tiny_config
    from .model import SpectroStream, StreamingDecoder, StreamingEncoder

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "Codec": "codec",
    "load": "codec",
    "ModelConfig": "config",
    "official_config": "config",
    "small_config": "config",
    "tiny_config": "config",
    "SpectroStream": "model",
    "StreamingDecoder": "model",
    "StreamingEncoder": "model",
}

__all__ = [
    "Codec",
    "ModelConfig",
    "SpectroStream",
    "StreamingDecoder",
    "StreamingEncoder",
    "__version__",
    "load",
    "official_config",
    "small_config",
    "tiny_config",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
