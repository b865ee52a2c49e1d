"""Frozen, JSON-serialisable configuration of the SpectroStream network.

The default instance is the official 48 kHz stereo configuration
(``stft_spectrostream_40ms_generic_48khz_stereo``, 61,713,666 parameters). Strides and kernel
sizes are fixed by the architecture (they define 25 Hz frames and the 480 -> 5 bin frequency
path); widths, quantizer size and channel count are fields so that smaller variants exist.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import ConfigError, UsageError

CONFIG_VERSION = 1

# Fixed by the architecture (see ARCHITECTURE.md).
SAMPLE_RATE = 48000
N_FFT = 960
HOP_SAMPLES = 480
STFT_BINS = 480  # bins 0..479 kept, Nyquist dropped
FRAMES_PER_CODE = 4  # STFT frames per code frame (two time strides of 2)
SAMPLES_PER_CODE = HOP_SAMPLES * FRAMES_PER_CODE  # 1920 samples = 40 ms
CODE_RATE_HZ = SAMPLE_RATE // SAMPLES_PER_CODE  # 25
LATENT_BINS = 5  # frequency bins at the bottleneck

# Upper bounds on the sizes in a config. A model file's config is read before any tensor, so
# these keep a tiny hostile file from asking for terabytes; they are far above any sane model
# (the official one: widths <= 512, 64 levels of 1024 codes). num_levels is bounded by
# what an .ssc header can hold (one byte).
MAX_WIDTH = 4096
_SIZE_LIMITS = {
    "audio_channels": 16,
    "fused_channels": MAX_WIDTH,
    "embedding_dim": MAX_WIDTH,
    "num_levels": 255,
    "codebook_size": 1 << 16,
    "decoder_input_channels": MAX_WIDTH,
    "decoder_group_channels": MAX_WIDTH,
}


def _check_size(name: str, value: object, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not 1 <= value <= high:
        raise ConfigError(f"{name} must be in 1..{high}, got {value}")


def levels_for_kbps(kbps: float, kbps_per_level: float, max_levels: int) -> int:
    """The number of RVQ levels whose bit rate is closest to, and not above, ``kbps``.

    The one rule for every command and API: a rate below one level or above ``max_levels``
    levels is an error, never silently clamped.
    """
    if isinstance(kbps, bool) or not isinstance(kbps, numbers.Real) or not math.isfinite(kbps):
        raise UsageError(f"bit rate must be a finite number of kbps, got {kbps!r}")
    levels = int(min(kbps, (max_levels + 1) * kbps_per_level) / kbps_per_level + 1e-9)
    if levels < 1:
        raise UsageError(f"{kbps:g} kbps is below one quantizer level ({kbps_per_level:g} kbps)")
    if levels > max_levels:
        raise UsageError(
            f"{kbps:g} kbps is above the maximum, {max_levels * kbps_per_level:g} kbps "
            f"({max_levels} levels of {kbps_per_level:g} kbps)"
        )
    return levels


@dataclass(frozen=True)
class ModelConfig:
    """Widths and sizes of the network. Defaults are the official stereo model.

    encoder_channels: output widths of the first conv and of encoder blocks enc0..enc5
        (per audio channel, shared weights).
    fused_channels: width after the fusion point (enc6 output and the bottleneck).
    decoder_input_channels: width per frequency bin after the decoder's input layer.
    decoder_group_channels: per-audio-channel width produced by dec0 (dec0 outputs
        ``audio_channels * decoder_group_channels``).
    decoder_channels: output widths of dec1..dec6 (shared weights per audio channel).
    """

    version: int = CONFIG_VERSION
    audio_channels: int = 2
    encoder_channels: tuple[int, ...] = (32, 64, 64, 128, 128, 128, 256)
    fused_channels: int = 256
    embedding_dim: int = 256
    num_levels: int = 64
    codebook_size: int = 1024
    decoder_input_channels: int = 512
    decoder_group_channels: int = 512
    decoder_channels: tuple[int, ...] = (256, 256, 256, 128, 128, 64)
    weight_norm: bool = False

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"unsupported config version {self.version!r} (this is {CONFIG_VERSION})"
            )
        if not isinstance(self.weight_norm, bool):
            raise ConfigError(f"weight_norm must be true or false, got {self.weight_norm!r}")
        for name, count in (("encoder_channels", 7), ("decoder_channels", 6)):
            widths = getattr(self, name)
            if not isinstance(widths, tuple) or len(widths) != count:
                raise ConfigError(f"{name} needs {count} widths, got {widths!r}")
            for w in widths:
                _check_size(name, w, MAX_WIDTH)
        for name, high in _SIZE_LIMITS.items():
            _check_size(name, getattr(self, name), high)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def bits_per_code(self) -> int:
        return max(1, (self.codebook_size - 1).bit_length())

    @property
    def kbps_per_level(self) -> float:
        return CODE_RATE_HZ * self.bits_per_code / 1000.0

    @property
    def max_kbps(self) -> float:
        return self.num_levels * self.kbps_per_level

    def levels_for_kbps(self, kbps: float) -> int:
        """Levels for a total bit rate (see :func:`levels_for_kbps`: out of range is an error)."""
        return levels_for_kbps(kbps, self.kbps_per_level, self.num_levels)

    # ---- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ConfigError("model config must be a JSON object")
        if "num_quantizers" in d and "num_levels" not in d:  # its name in files before 0.2
            d = {("num_levels" if k == "num_quantizers" else k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config fields: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        try:
            return cls(**kw)
        except TypeError as e:
            raise ConfigError(str(e)) from e

    @classmethod
    def from_json(cls, s: str) -> ModelConfig:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"model config is not valid JSON: {e}") from e
        return cls.from_dict(d)

    def with_(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)


def official_config() -> ModelConfig:
    """The official 48 kHz stereo SpectroStream (61,713,666 parameters)."""
    return ModelConfig()


def small_config(audio_channels: int = 2) -> ModelConfig:
    """Half-width variant (about 28 M parameters, 16.8 M of them in the codebooks).

    Keeps the paper's rate structure: 25 Hz frames, 64 levels of 1024 codes, 256-d embedding.
    """
    return ModelConfig(
        audio_channels=audio_channels,
        encoder_channels=(16, 32, 32, 64, 64, 64, 128),
        fused_channels=128,
        decoder_input_channels=256,
        decoder_group_channels=256,
        decoder_channels=(128, 128, 128, 64, 64, 32),
    )


def tiny_config(
    audio_channels: int = 2, num_levels: int = 8, codebook_size: int = 64
) -> ModelConfig:
    """A very small network for unit tests (runs in milliseconds on a CPU)."""
    return ModelConfig(
        audio_channels=audio_channels,
        encoder_channels=(4, 4, 4, 8, 8, 8, 8),
        fused_channels=8,
        embedding_dim=16,
        num_levels=num_levels,
        codebook_size=codebook_size,
        decoder_input_channels=8,
        decoder_group_channels=8,
        decoder_channels=(8, 8, 8, 4, 4, 4),
    )
