"""The public codec: audio <-> codes <-> .ssc bytes, bit-rate choice, load and save.

Every path runs the streaming encoder/decoder over bounded chunks, so a one-hour file and a
one-second clip go through the same code, and memory does not grow with the input length.

Alignment: ``encode`` appends one code frame of zeros (the decoder's look-ahead), so T samples
give ``ceil(T / 1920) + 1`` code frames and ``decode`` returns at least T samples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from . import audio_io, bitstream
from .audio_io import AudioError
from .config import CODE_RATE_HZ, SAMPLE_RATE, SAMPLES_PER_CODE, ModelConfig
from .model import SpectroStream, StreamingDecoder, StreamingEncoder, fold_weight_norm
from .official import PARTS, ModelError, parts_present
from .runtime import set_threads

FORMAT_NAME = "spectrostream"
FORMAT_VERSION = "1"
DEFAULT_MODEL = "default"
MODELS_DIR = Path(__file__).parent / "models"
# Audio per streaming step in batch and file processing: bounds memory (the official model's
# activations for 2 s are about 0.7 GB; measured in docs/benchmarks.md).
CHUNK_SAMPLES = 2 * SAMPLE_RATE
CHUNK_FRAMES = CHUNK_SAMPLES // SAMPLES_PER_CODE

ProgressFn = Callable[[int], None]


def _state_model_id(state: dict[str, torch.Tensor], config: ModelConfig) -> str:
    h = hashlib.sha256(config.to_json().encode())
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to(torch.float16).cpu().numpy().tobytes())
    return f"ss-{h.hexdigest()[:16]}"


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
        """Levels for a total bit rate (250 bit/s per level for 1024 codes), or checked ``levels``."""
        if kbps is not None and levels is not None:
            raise ValueError("give kbps or levels, not both")
        if levels is not None:
            if not 1 <= int(levels) <= self.num_levels:
                raise ValueError(f"levels must be in 1..{self.num_levels}, got {levels}")
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

    # ---- audio preparation --------------------------------------------------------------
    def _to_model_channels(self, x: np.ndarray, name: str = "audio") -> np.ndarray:
        """[C, T] -> [model C, T]: mono becomes dual-mono; other counts are errors."""
        c = x.shape[0]
        if c == self.channels:
            return x
        if c == 1:
            return np.repeat(x, self.channels, axis=0)
        raise AudioError(
            f"{name}: {c} channels; this model codes {self.channels} "
            f"(mono is coded as dual-mono); downmix first"
        )

    @staticmethod
    def _check_audio(x: np.ndarray, name: str = "audio") -> None:
        if x.shape[-1] == 0:
            raise AudioError(f"{name}: no samples")
        if not np.isfinite(x).all():
            raise AudioError(f"{name}: contains NaN or Inf samples")

    # ---- streaming cores ----------------------------------------------------------------
    @torch.inference_mode()
    def _encode_stream(
        self, blocks: Iterable[np.ndarray], levels: int, batch: int = 1
    ) -> Iterator[np.ndarray]:
        """48 kHz blocks [B, C, n] (model channels) -> code chunks [B, L, m], flushed at the end."""
        self._need("encoder", "quantizer")
        with StreamingEncoder(self.model, levels) as enc:
            for block in blocks:
                codes = enc.push(torch.from_numpy(np.ascontiguousarray(block)).to(self.device))
                if codes.shape[-1]:
                    yield codes.cpu().numpy()
            zeros = torch.zeros(batch, self.channels, SAMPLES_PER_CODE, device=self.device)
            yield enc.push(zeros).cpu().numpy()
            yield enc.flush(batch, self.channels).cpu().numpy()

    @torch.inference_mode()
    def _decode_stream(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """code chunks [B, L, m] -> 48 kHz audio [B, C, n]."""
        self._need("quantizer", "decoder")
        with StreamingDecoder(self.model) as dec:
            for codes in chunks:
                if codes.shape[1] > self.num_levels:
                    raise ModelError(
                        f"codes have {codes.shape[1]} levels, the model {self.num_levels}"
                    )
                if codes.size and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
                    raise ModelError(f"codes must be in 0..{self.config.codebook_size - 1}")
                for i in range(0, codes.shape[-1], CHUNK_FRAMES):
                    part = torch.from_numpy(np.ascontiguousarray(codes[..., i : i + CHUNK_FRAMES]))
                    yield dec.push(part.long().to(self.device)).cpu().numpy()

    # ---- array API ----------------------------------------------------------------------
    def _prepare_batch(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise AudioError(f"audio must be [C, T] or [B, C, T], got shape {x.shape}")
        if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
            raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        x = x.astype(np.float32, copy=False)
        self._check_audio(x)
        items = [
            self._to_model_channels(audio_io.resample(item, int(sample_rate), SAMPLE_RATE))
            for item in x
        ]
        return np.stack(items)

    def encode(
        self,
        audio: np.ndarray | torch.Tensor,
        sample_rate: int,
        kbps: float | None = None,
        levels: int | None = None,
    ) -> torch.Tensor:
        """audio [B, C, T] or [C, T] at any rate -> codes int64 [B, L, ceil(T48 / 1920) + 1]."""
        n = self.levels_for(kbps, levels)
        x = self._prepare_batch(audio, sample_rate)
        blocks = (x[..., i : i + CHUNK_SAMPLES] for i in range(0, x.shape[-1], CHUNK_SAMPLES))
        return torch.from_numpy(np.concatenate(list(self._encode_stream(blocks, n, len(x))), -1))

    def decode(self, codes: torch.Tensor | np.ndarray, length: int | None = None) -> torch.Tensor:
        """codes [B, L, N] (or [L, N]) -> audio [B, C, (N - 1) * 1920] at 48 kHz (cut to ``length``)."""
        c = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        if c.ndim == 2:
            c = c[None]
        if c.ndim != 3 or not np.issubdtype(c.dtype, np.integer):
            raise ModelError(f"codes must be an integer array [B, L, N], got {c.dtype} {c.shape}")
        out = np.concatenate(list(self._decode_stream([c])), -1)
        return torch.from_numpy(out[..., :length] if length is not None else out)

    # ---- bytes API ----------------------------------------------------------------------
    def _header(
        self, sample_rate: int, channels: int, num_samples: int | None, levels: int
    ) -> bitstream.StreamHeader:
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
        x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise AudioError(f"compress takes audio [C, T], got shape {x.shape}")
        codes = self.encode(x, sample_rate, kbps=kbps, levels=levels)[0].numpy()
        header = self._header(sample_rate, x.shape[0], x.shape[1], codes.shape[0])
        return bitstream.encode_stream(header, codes)

    def _check_header(self, header: bitstream.StreamHeader) -> None:
        if header.codebook_size != self.config.codebook_size or header.frame_rate != CODE_RATE_HZ:
            raise bitstream.BitstreamError(
                f"file uses {header.codebook_size} codes at {header.frame_rate} Hz; this model "
                f"{self.config.codebook_size} at {CODE_RATE_HZ} Hz"
            )
        if header.num_levels > self.num_levels:
            raise bitstream.BitstreamError(
                f"file has {header.num_levels} levels; this model has {self.num_levels}"
            )
        if header.channels > self.channels:
            raise bitstream.BitstreamError(
                f"file has {header.channels} channels; this model codes {self.channels}"
            )

    def _restore(self, x48: np.ndarray, channels: int) -> np.ndarray:
        return x48.mean(axis=0, keepdims=True) if channels == 1 and x48.shape[0] != 1 else x48

    def decompress(self, data: bytes, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
        """.ssc bytes -> (audio [C, T] float32, rate): the original rate, length and channels
        unless ``sample_rate`` asks for another rate."""
        header, codes = bitstream.decode_stream(data, expected_model_id=self.model_id)
        self._check_header(header)
        sr = header.sample_rate if sample_rate is None else int(sample_rate)
        # Resample everything decoded, then cut: the same samples as the streaming decode_file.
        x48 = self.decode(codes[None])[0].numpy()
        out = self._restore(audio_io.resample(x48, SAMPLE_RATE, sr), header.channels)
        out = audio_io.fit_length(
            out, audio_io.resampled_length(header.num_samples, header.sample_rate, sr)
        )
        return torch.from_numpy(np.ascontiguousarray(out)), sr

    # ---- file streaming (bounded memory) -------------------------------------------------
    def encode_file(
        self,
        src: str | Path,
        dst: BinaryIO,
        kbps: float | None = None,
        levels: int | None = None,
        progress: ProgressFn | None = None,
    ) -> bitstream.StreamHeader:
        """Encode an audio file (or "-") to an open binary output, block by block."""
        n = self.levels_for(kbps, levels)
        reader = audio_io.AudioReader(src, block_frames=CHUNK_SAMPLES)
        with reader:
            if reader.channels not in (1, self.channels):
                raise AudioError(
                    f"{reader.name}: {reader.channels} channels; this model codes "
                    f"{self.channels} (mono is coded as dual-mono); downmix first"
                )
            header = self._header(reader.sample_rate, reader.channels, reader.num_frames, n)
            writer = bitstream.StreamWriter(dst, header)
            resampler = audio_io.StreamingResampler(
                reader.sample_rate, SAMPLE_RATE, reader.channels
            )
            total = 0

            def blocks() -> Iterator[np.ndarray]:
                nonlocal total
                for block in reader:
                    total += block.shape[1]
                    if progress is not None:
                        progress(block.shape[1])
                    yield self._to_model_channels(resampler.process(block), reader.name)[None]
                tail = resampler.flush()
                yield self._to_model_channels(tail, reader.name)[None]

            for codes in self._encode_stream(blocks(), n):
                writer.write(codes[0])
            if total == 0:
                raise AudioError(f"{reader.name}: no samples")
            writer.close(total)
        return header

    def decode_file(
        self,
        src: BinaryIO,
        dst: str | Path,
        sample_rate: int | None = None,
        progress: ProgressFn | None = None,
        subtype: str | None = None,
    ) -> bitstream.StreamHeader:
        """Decode an .ssc stream (open binary input) to an audio file (or "-"), packet by packet."""
        reader = bitstream.StreamReader(src, expected_model_id=self.model_id)
        header = reader.header
        self._check_header(header)
        sr = header.sample_rate if sample_rate is None else int(sample_rate)
        resampler = audio_io.StreamingResampler(SAMPLE_RATE, sr, self.channels)
        written = 0
        # Hold back enough output to cut the exact length once the end packet tells it.
        holdback = audio_io.resampled_length(3 * SAMPLES_PER_CODE, SAMPLE_RATE, sr) + 64
        pending = np.zeros((header.channels, 0), dtype=np.float32)

        def packets() -> Iterator[np.ndarray]:
            for codes in reader:
                if progress is not None:
                    progress(codes.shape[1])
                yield codes[None]

        with audio_io.AudioWriter(dst, sr, header.channels, subtype=subtype) as out:
            for audio48 in self._decode_stream(packets()):
                block = self._restore(resampler.process(audio48[0]), header.channels)
                pending = np.concatenate([pending, block], axis=1)
                cut = pending.shape[1] - holdback
                if cut > 0:
                    out.write(pending[:, :cut])
                    written += cut
                    pending = pending[:, cut:]
            tail = np.concatenate(
                [pending, self._restore(resampler.flush(), header.channels)], axis=1
            )
            want = audio_io.resampled_length(reader.num_samples, header.sample_rate, sr)
            out.write(audio_io.fit_length(tail, max(0, want - written)))
        return header

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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata=meta)


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


def load(name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu") -> Codec:
    """Load a codec: a path to a .safetensors model, or a built-in name (``"default"``).

    Strict: every tensor of each part the file declares must be present with its shape.
    Tensors are copied into the model one at a time, so loading needs little extra memory.
    """
    set_threads()  # the default thread count, unless chosen (OMP_NUM_THREADS, --threads)
    path = resolve_model_path(name_or_path)
    config, meta = read_model_meta(path)
    model = SpectroStream(config)
    own = model.state_dict()
    with _open_model_file(path) as f:
        keys = list(f.keys())
        parts = parts_present(dict.fromkeys(keys))
        declared = tuple(p for p in meta.get("parts", ",".join(PARTS)).split(",") if p)
        if parts != declared:
            raise ModelError(f"{path}: metadata declares parts {declared} but holds {parts}")
        expected = {k for k in own if k.split(".", 1)[0] in parts}
        missing, unexpected = sorted(expected - set(keys)), sorted(set(keys) - set(own))
        if missing or unexpected:
            raise ModelError(
                f"{path}: weights do not match the model: missing {missing[:5]} "
                f"unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for k in keys:
                shape = tuple(f.get_slice(k).get_shape())
                if shape != tuple(own[k].shape):
                    raise ModelError(
                        f"{path}: {k} has shape {shape}, the model {tuple(own[k].shape)}"
                    )
                own[k].copy_(f.get_tensor(k))
    return Codec(model.to(device), model_id=meta.get("model_id"), parts=parts)


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
