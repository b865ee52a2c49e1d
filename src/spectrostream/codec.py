"""The public codec: audio tensors <-> code tensors <-> .ssc bytes, bit-rate and channel
policy, load and save. Files, directories and pipes are :mod:`spectrostream.files`.

Every path runs the streaming encoder/decoder over bounded chunks, so a one-hour input and a
one-second clip go through the same code, and memory does not grow with the input length.

Alignment: ``encode`` appends one code frame of zeros (the decoder's look-ahead), so T samples
give ``ceil(T / 1920) + 1`` code frames and ``decode`` returns at least T samples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from . import audio_io, bitstream
from .atomic import atomic_path
from .config import CODE_RATE_HZ, SAMPLE_RATE, SAMPLES_PER_CODE, ModelConfig
from .errors import AudioError, BitstreamError, ModelError, UsageError
from .model import SpectroStream, StreamingDecoder, StreamingEncoder, fold_weight_norm
from .official import PARTS, parts_present

FORMAT_NAME = "spectrostream"
FORMAT_VERSION = "1"
DEFAULT_MODEL = "default"
MODELS_DIR = Path(__file__).parent / "models"
# Audio per streaming step in batch and file processing: bounds memory (the official model's
# activations for 2 s are about 0.7 GB; measured in docs/benchmarks.md).
CHUNK_SAMPLES = 2 * SAMPLE_RATE
CHUNK_FRAMES = CHUNK_SAMPLES // SAMPLES_PER_CODE
# Integer PCM is scaled by its dtype's range: int16 32767 -> 32767 / 32768.
_PCM_SCALE = {torch.int8: 2.0**7, torch.int16: 2.0**15, torch.int32: 2.0**31}


def _state_model_id(state: dict[str, torch.Tensor], config: ModelConfig) -> str:
    h = hashlib.sha256(config.to_json().encode())
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to(torch.float16).cpu().numpy().tobytes())
    return f"ss-{h.hexdigest()[:16]}"


def as_float_audio(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any array of samples -> a float32 CPU tensor; integer PCM (int8/16/32, uint8) scaled
    to [-1, 1) by its dtype's range, floats taken as they are."""
    if isinstance(audio, np.ndarray) and audio.dtype == np.uint8:
        audio = audio.astype(np.int16) - 128
        return torch.from_numpy(audio.astype(np.float32) / 2.0**7)
    x = audio.detach().cpu() if isinstance(audio, torch.Tensor) else torch.as_tensor(audio)
    if x.dtype == torch.uint8:
        return (x.to(torch.int16) - 128).float() / 2.0**7
    if x.dtype in _PCM_SCALE:
        return (x.double() / _PCM_SCALE[x.dtype]).float()
    if not x.is_floating_point():
        raise AudioError(
            f"audio of dtype {x.dtype} is ambiguous: give float samples in [-1, 1] or "
            "int8/int16/int32/uint8 PCM"
        )
    return x.float()


class Codec:
    """A SpectroStream model ready to code audio. ``parts`` names the halves it holds."""

    def __init__(
        self, model: SpectroStream, model_id: str | None = None, parts: tuple[str, ...] = PARTS
    ) -> None:
        fold_weight_norm(model)
        self.model = model.eval()
        self.config = model.config
        self.parts = tuple(parts)
        state = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in self.parts}
        self.model_id = model_id or _state_model_id(state, self.config)

    # ---- properties ---------------------------------------------------------------------
    sample_rate = SAMPLE_RATE
    frame_rate = CODE_RATE_HZ

    @property
    def channels(self) -> int:
        return self.config.audio_channels

    @property
    def num_levels(self) -> int:
        return self.config.num_quantizers

    @property
    def device(self) -> torch.device:
        return self.model.quantizer.codebooks.device

    def levels_for(self, kbps: float | None = None, levels: int | None = None) -> int:
        """Levels for a total bit rate (250 bit/s per level for 1024 codes), or checked ``levels``.

        Out of range is an error (never clamped); neither given means every level.
        """
        if kbps is not None and levels is not None:
            raise UsageError("give kbps or levels, not both")
        if levels is not None:
            if isinstance(levels, bool) or not isinstance(levels, int | np.integer):
                raise UsageError(f"levels must be an integer, got {levels!r}")
            if not 1 <= levels <= self.num_levels:
                raise UsageError(f"levels must be in 1..{self.num_levels}, got {levels}")
            return int(levels)
        if kbps is None:
            return self.num_levels
        return self.config.levels_for_kbps(kbps)

    def _need(self, *parts: str) -> None:
        missing = [p for p in parts if p not in self.parts]
        if missing:
            raise ModelError(
                f"this model holds only {', '.join(self.parts)}; this operation needs "
                f"{', '.join(missing)} (convert the official weights with both --encoder and "
                "--checkpoint for a full codec)"
            )

    # ---- channel policy -----------------------------------------------------------------
    def check_channels(self, channels: int, name: str = "audio") -> None:
        """The model's channel count, or mono (coded as dual-mono); anything else is an error."""
        if channels not in (1, self.channels):
            raise AudioError(
                f"{name}: {channels} channels; this model codes {self.channels} "
                f"(mono is coded as dual-mono); downmix first"
            )

    def to_model_channels(self, x: torch.Tensor, name: str = "audio") -> torch.Tensor:
        """[..., C, T] -> [..., model C, T]: mono becomes dual-mono; other counts are errors."""
        self.check_channels(x.shape[-2], name)
        if x.shape[-2] == self.channels:
            return x
        return x.expand(*x.shape[:-2], self.channels, x.shape[-1]).contiguous()

    @staticmethod
    def restore_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
        """[model C, T] -> [channels, T]: dual-mono back to mono (the mean), else unchanged."""
        return x.mean(dim=0, keepdim=True) if channels == 1 and x.shape[0] != 1 else x

    # ---- streaming cores (tensors in, tensors out) ---------------------------------------
    @torch.inference_mode()
    def encode_blocks(
        self, blocks: Iterable[torch.Tensor], levels: int, batch: int = 1
    ) -> Iterator[torch.Tensor]:
        """48 kHz blocks [B, model C, n] -> code chunks [B, L, m] (CPU int64), flushed at the end."""
        self._need("encoder", "quantizer")
        with StreamingEncoder(self.model, levels) as enc:
            for block in blocks:
                codes = enc.push(block.to(self.device, torch.float32))
                if codes.shape[-1]:
                    yield codes.cpu()
            zeros = torch.zeros(batch, self.channels, SAMPLES_PER_CODE, device=self.device)
            yield enc.push(zeros).cpu()
            yield enc.flush(batch, self.channels).cpu()

    @torch.inference_mode()
    def decode_chunks(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """code chunks [B, L, m] -> 48 kHz audio [B, model C, n] (CPU float32)."""
        self._need("quantizer", "decoder")
        with StreamingDecoder(self.model) as dec:
            for codes in chunks:
                for i in range(0, codes.shape[-1], CHUNK_FRAMES):
                    part = codes[..., i : i + CHUNK_FRAMES].to(self.device)
                    yield dec.push(part).float().cpu()

    # ---- tensor API ---------------------------------------------------------------------
    def _prepare_batch(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """[C, T] or [B, C, T] at any rate -> [B, model C, T48] float32."""
        x = as_float_audio(audio)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise AudioError(f"audio must be [C, T] or [B, C, T], got shape {tuple(x.shape)}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
            raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if sample_rate <= 0:
            raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if x.shape[-1] == 0:
            raise AudioError("audio: no samples")
        if not torch.isfinite(x).all():
            raise AudioError("audio: contains NaN or Inf samples")
        x = self.to_model_channels(x)
        if sample_rate != SAMPLE_RATE:  # soxr works on numpy: the one crossing on this path
            x = torch.from_numpy(
                np.stack([audio_io.resample(i.numpy(), int(sample_rate), SAMPLE_RATE) for i in x])
            )
        return x

    def encode(
        self,
        audio: np.ndarray | torch.Tensor,
        sample_rate: int,
        kbps: float | None = None,
        levels: int | None = None,
    ) -> torch.Tensor:
        """audio [B, C, T] or [C, T] at any rate -> codes int64 [B, L, ceil(T48 / 1920) + 1].

        Float samples are taken as they are; integer PCM is scaled by its dtype's range.
        """
        n = self.levels_for(kbps, levels)
        x = self._prepare_batch(audio, sample_rate)
        blocks = (x[..., i : i + CHUNK_SAMPLES] for i in range(0, x.shape[-1], CHUNK_SAMPLES))
        return torch.cat(list(self.encode_blocks(blocks, n, len(x))), -1)

    def decode(self, codes: torch.Tensor | np.ndarray, length: int | None = None) -> torch.Tensor:
        """codes [B, L, N] (or [L, N]) -> audio [B, C, (N - 1) * 1920] at 48 kHz (cut to
        ``length``); fewer than two frames give no samples."""
        c = codes.detach().cpu() if isinstance(codes, torch.Tensor) else torch.as_tensor(codes)
        if c.ndim == 2:
            c = c[None]
        if c.ndim != 3 or c.dtype.is_floating_point or c.dtype.is_complex or c.dtype == torch.bool:
            raise UsageError(f"codes must be an integer array [B, L, N], got {c.dtype} {c.shape}")
        empty = torch.zeros(c.shape[0], self.channels, 0)
        out = torch.cat([empty, *self.decode_chunks([c.long()])], -1)
        return out[..., :length] if length is not None else out

    # ---- bytes API ----------------------------------------------------------------------
    def header_for(
        self, sample_rate: int, channels: int, num_samples: int | None, levels: int
    ) -> bitstream.StreamHeader:
        """The .ssc header of audio with these properties coded by this model."""
        return bitstream.StreamHeader(
            sample_rate=int(sample_rate),
            channels=int(channels),
            num_samples=num_samples,
            num_levels=levels,
            frame_rate=CODE_RATE_HZ,
            codebook_size=self.config.codebook_size,
            model_id=self.model_id,
        )

    def compress(
        self,
        audio: np.ndarray | torch.Tensor,
        sample_rate: int,
        kbps: float | None = None,
        levels: int | None = None,
    ) -> bytes:
        """audio [C, T] -> .ssc bytes (original rate, channel count and length recorded)."""
        x = as_float_audio(audio)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise AudioError(f"compress takes audio [C, T], got shape {tuple(x.shape)}")
        codes = self.encode(x, sample_rate, kbps=kbps, levels=levels)[0].numpy()
        header = self.header_for(sample_rate, x.shape[0], x.shape[1], codes.shape[0])
        return bitstream.encode_stream(header, codes)

    def check_header(self, header: bitstream.StreamHeader) -> None:
        """A stream this model can decode: same code layout, no more levels or channels."""
        if header.codebook_size != self.config.codebook_size or header.frame_rate != CODE_RATE_HZ:
            raise BitstreamError(
                f"file uses {header.codebook_size} codes at {header.frame_rate} Hz; this model "
                f"{self.config.codebook_size} at {CODE_RATE_HZ} Hz"
            )
        if header.num_levels > self.num_levels:
            raise BitstreamError(
                f"file has {header.num_levels} levels; this model has {self.num_levels}"
            )
        if header.channels > self.channels:
            raise BitstreamError(
                f"file has {header.channels} channels; this model codes {self.channels}"
            )

    def decompress(self, data: bytes, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
        """.ssc bytes -> (audio [C, T] float32, rate): the original rate, length and channels
        unless ``sample_rate`` asks for another rate."""
        header, codes = bitstream.decode_stream(data, expected_model_id=self.model_id)
        self.check_header(header)
        sr = header.sample_rate if sample_rate is None else int(sample_rate)
        # Resample everything decoded, then cut: the same samples as the streaming decode_file.
        x48 = self.decode(torch.from_numpy(codes)[None])[0].numpy()
        out = self.restore_channels(
            torch.from_numpy(audio_io.resample(x48, SAMPLE_RATE, sr)), header.channels
        )
        want = audio_io.resampled_length(header.num_samples, header.sample_rate, sr)
        return torch.from_numpy(np.ascontiguousarray(audio_io.fit_length(out.numpy(), want))), sr

    # ---- persistence --------------------------------------------------------------------
    def save(self, path: str | Path, fp16: bool = False) -> None:
        """Write safetensors with the config JSON, model id and parts in the metadata."""
        from safetensors.torch import save_file

        state = {
            k: v.detach().cpu().contiguous()
            for k, v in self.model.state_dict().items()
            if k.split(".", 1)[0] in self.parts
        }
        if fp16:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_json(),
            "model_id": self.model_id,
            "parts": ",".join(self.parts),
        }
        with atomic_path(path) as tmp:  # a model file appears complete or not at all
            save_file(state, tmp, metadata=meta)


def resolve_model_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = MODELS_DIR / f"{name_or_path}.safetensors"
    if builtin.is_file():
        return builtin
    if str(name_or_path) == DEFAULT_MODEL:
        raise ModelError(
            "no default model is installed with this package; pass --model PATH "
            "(a .safetensors from `spectrostream export` or `spectrostream convert-official`)"
        )
    if p.suffix or "/" in str(name_or_path):
        raise ModelError(f"{name_or_path}: no such model file")
    names = sorted(q.stem for q in MODELS_DIR.glob("*.safetensors"))
    raise ModelError(f"unknown model {name_or_path!r}; built-in models: {names or 'none'}")


def _open_model_file(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable safetensors model ({e})") from e


def read_model_meta(path: str | Path) -> tuple[ModelConfig, dict[str, str]]:
    """The config and metadata of a model file, checked."""
    path = Path(path)
    with _open_model_file(path) as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_NAME:
        raise ModelError(
            f"{path}: not a spectrostream model (metadata format={meta.get('format')!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}: unsupported model format version {meta.get('format_version')!r}")
    try:
        config = ModelConfig.from_json(meta["config"])
    except (KeyError, ValueError) as e:
        raise ModelError(f"{path}: bad config in metadata ({e})") from e
    return config, meta


def _model_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"{device!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(dev)!r} asked for, but this torch has no usable CUDA")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {str(dev)!r} asked for, but MPS is not available")
    return dev


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the network ``config`` describes, by name, without allocating it."""
    with torch.device("meta"):
        model = SpectroStream(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_tensors(path: Path, f, meta: dict[str, str], config: ModelConfig) -> tuple[str, ...]:
    """The parts a model file holds, after checking its tensor names and shapes (read from the
    file's header) against ``config``: nothing is allocated for a file that does not match."""
    try:
        expected = expected_shapes(config)
    except (ValueError, RuntimeError) as e:
        raise ModelError(f"{path}: its config does not describe a network ({e})") from None
    keys = list(f.keys())
    parts = parts_present(dict.fromkeys(keys))
    declared = tuple(p for p in meta.get("parts", ",".join(PARTS)).split(",") if p)
    if parts != declared:
        raise ModelError(f"{path}: metadata declares parts {declared} but holds {parts}")
    wanted = {k for k in expected if k.split(".", 1)[0] in parts}
    missing, unexpected = sorted(wanted - set(keys)), sorted(set(keys) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"{path}: weights do not match the model: missing {missing[:5]} "
            f"unexpected {unexpected[:5]}"
        )
    for k in keys:
        shape = tuple(f.get_slice(k).get_shape())
        if shape != expected[k]:
            raise ModelError(f"{path}: {k} has shape {shape}, the model {expected[k]}")
    return parts


def load(name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu") -> Codec:
    """Load a codec: a path to a .safetensors model, or a built-in name (``"default"``).

    Strict: every tensor of each part the file declares must be present with its shape. The
    config and the tensor shapes are checked before the network is built, and tensors are
    copied into it one at a time, so loading needs little extra memory.
    """
    dev = _model_device(device)
    path = resolve_model_path(name_or_path)
    config, meta = read_model_meta(path)
    with _open_model_file(path) as f:
        parts = _check_tensors(path, f, meta, config)
        parts_keys = list(f.keys())
        model = SpectroStream(config)
        own = model.state_dict()
        with torch.no_grad():
            for k in parts_keys:
                own[k].copy_(f.get_tensor(k))
    return Codec(model.to(dev), model_id=meta.get("model_id"), parts=parts)


def model_summary(codec: Codec) -> str:
    return json.dumps(
        {
            "model_id": codec.model_id,
            "parts": codec.parts,
            "parameters": codec.model.num_parameters(),
            "config": codec.config.to_dict(),
        },
        indent=2,
    )
