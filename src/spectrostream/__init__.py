"""SpectroStream: a full-band 48 kHz stereo neural audio codec in PyTorch."""

import os

# Before torch loads OpenMP: waiting threads sleep instead of spinning (see runtime.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


from .codec import Codec, load
from .config import ModelConfig, official_config, small_config, tiny_config
from .model import SpectroStream, StreamingDecoder, StreamingEncoder

__version__ = "0.1.0"
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
