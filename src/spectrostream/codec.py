"""The public codec: audio tensors <-> code tensors <-> .ssc bytes, bit-rate and channel
policy, load and save. Files, directories and pipes are :mod:`spectrostream.files`.

Every path runs the streaming encoder/decoder over bounded chunks, so a one-hour input and a
one-second clip go through the same code, and memory does not grow with the input length.

Alignment: ``encode`` appends one frame of silence (the decoder's look-ahead), so T samples
give ``ceil(T / 1920) + 1`` code frames and ``decode`` returns at least T samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from . import audio_io, bitstream
from .atomic import atomic_path
from .config import CODE_RATE_HZ, SAMPLE_RATE, SAMPLES_PER_CODE, ModelConfig
from .decoder import Decoder
from .device import exact_fp32, resolve_device, resolve_dtype
from .encoder import Encoder
from .errors import AudioError, BitstreamError, ModelError, UsageError
from .int8 import Int8Calibration, calibrate, check_int8_support, quantize_int8
from .model import SpectroStream, StreamingDecoder, StreamingEncoder, fold_weight_norm
from .official import PARTS, parts_present
from .runtime import set_threads
from .weights import (
    DEFAULT_MODEL,
    FORMAT_NAME,
    FORMAT_VERSION,
    MODELS_DIR,  # noqa: F401  (re-exported: its old home)
    resolve_model,
    write_model,
)
from .weights import state_model_id as _state_model_id

# Audio per streaming step in batch and file processing: bounds memory (the official model's
# activations for 2 s are about 0.7 GB; measured in docs/benchmarks.md).
CHUNK_SAMPLES = 2 * SAMPLE_RATE
CHUNK_FRAMES = CHUNK_SAMPLES // SAMPLES_PER_CODE
# Integer PCM is scaled by its dtype's range: int16 32767 -> 32767 / 32768.
_PCM_SCALE = {torch.int8: 2.0**7, torch.int16: 2.0**15, torch.int32: 2.0**31}
# Clips coded together by ``encode`` of a list (padded to the longest of each batch).
BATCH_CLIPS = 16


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


INT8_WITH_DTYPE = "int8 convolutions are not combined with a float dtype: use one"


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
        self._dtype = torch.float32
        self._int8 = False

    # ---- properties ---------------------------------------------------------------------
    sample_rate = SAMPLE_RATE
    frame_rate = CODE_RATE_HZ

    @property
    def channels(self) -> int:
        return self.config.audio_channels

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    @property
    def device(self) -> torch.device:
        return self.model.quantizer.codebooks.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the encoder and decoder convolutions (the RVQ is always float32)."""
        return self._dtype

    @property
    def int8(self) -> bool:
        """True once :meth:`quantize_int8` made the convolutions int8 (CPU only, one way)."""
        return self._int8

    def to(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> Codec:
        """Move to ``device`` (``auto``/``cpu``/``cuda``/``mps``) and/or run the convolutions in
        ``dtype`` (``fp32``/``bf16``/``fp16``). STFT, iSTFT and the codebooks stay float32.

        Casting is one way: a codec in bf16/fp16 cannot go back (load it again). Raises
        ModelError for a device that is not available. Returns self.
        """
        if device is not None:
            dev = resolve_device(device)
            if self._int8:
                check_int8_support(dev)
            self.model.to(dev)
        if dtype is not None:
            self._set_dtype(resolve_dtype(dtype))
        return self

    def _set_dtype(self, dtype: torch.dtype) -> None:
        if dtype == self._dtype:
            return
        if self._int8:
            raise UsageError(INT8_WITH_DTYPE)
        if self._dtype != torch.float32:
            raise ModelError(
                f"the weights are already cast to {self._dtype}; their float32 values are gone, "
                "so load the model again for another dtype"
            )
        self._dtype = dtype
        # Inputs are cast to the convolutions' dtype, outputs back to float32 for the RVQ
        # search and the iSTFT.
        for net in (self.model.encoder, self.model.decoder):
            net.to(dtype)
            net.register_forward_pre_hook(lambda m, args: (args[0].to(dtype),))
            net.register_forward_hook(lambda m, args, out: out.float())

    def _exact(self) -> AbstractContextManager[None]:
        """IEEE float32 for the RVQ search (and for the convolutions in fp32 mode)."""
        return exact_fp32(self.device, convs=self._dtype == torch.float32)

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
    def to_model_channels(self, x: torch.Tensor, name: str = "audio") -> torch.Tensor:
        """[..., C, T] -> [..., model C, T]: mono becomes dual-mono; other counts are errors."""
        return audio_io.to_channels(x, self.channels, name=name)

    @staticmethod
    def restore_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
        """[model C, T] -> [channels, T]: dual-mono back to mono (the mean), else unchanged."""
        return audio_io.to_channels(x, channels, downmix=True)

    # ---- streaming cores (tensors in, tensors out) ---------------------------------------
    @torch.inference_mode()
    def encode_blocks(
        self, blocks: Iterable[torch.Tensor], levels: int, batch: int = 1
    ) -> Iterator[torch.Tensor]:
        """48 kHz blocks [B, model C, n] -> code chunks [B, L, m] (CPU int64), flushed at the end."""
        self._need("encoder", "quantizer")
        with StreamingEncoder(self.model, levels) as enc:
            for block in blocks:
                with self._exact():
                    codes = enc.push(block.to(self.device, torch.float32))
                if codes.shape[-1]:
                    yield codes.cpu()
            zeros = torch.zeros(batch, self.channels, SAMPLES_PER_CODE, device=self.device)
            with self._exact():
                last = [enc.push(zeros), enc.flush(batch, self.channels)]
            yield from (c.cpu() for c in last)

    @torch.inference_mode()
    def decode_chunks(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """code chunks [B, L, m] -> 48 kHz audio [B, model C, n] (CPU float32)."""
        self._need("quantizer", "decoder")
        with StreamingDecoder(self.model) as dec:
            for codes in chunks:
                for i in range(0, codes.shape[-1], CHUNK_FRAMES):
                    part = codes[..., i : i + CHUNK_FRAMES].to(self.device)
                    with self._exact():
                        audio = dec.push(part)
                    yield audio.float().cpu()

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
        self.check_samples(x)
        x = self.to_model_channels(x)
        if sample_rate != SAMPLE_RATE:  # soxr works on numpy: the one crossing on this path
            x = torch.from_numpy(
                np.stack([audio_io.resample(i.numpy(), int(sample_rate), SAMPLE_RATE) for i in x])
            )
        return x

    @staticmethod
    def check_samples(x: torch.Tensor, name: str = "audio") -> None:
        """Refuse empty audio and NaN/Inf samples."""
        if x.shape[-1] == 0:
            raise AudioError(f"{name}: no samples")
        if not torch.isfinite(x).all():
            raise AudioError(f"{name}: contains NaN or Inf samples")

    def encode(
        self,
        audio: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
        sample_rate: int | Sequence[int],
        kbps: float | None = None,
        levels: int | None = None,
        batch_size: int = BATCH_CLIPS,
    ) -> torch.Tensor | list[torch.Tensor]:
        """audio [B, C, T] or [C, T] at any rate -> codes int64 [B, L, ceil(T48 / 1920) + 1].

        Float samples are taken as they are; integer PCM is scaled by its dtype's range.
        A list of clips [C, T_i] (any lengths; ``sample_rate`` one rate or one per clip) gives a
        list of codes [L, ceil(T48_i / 1920) + 1], each equal to encoding that clip alone: see
        ``encode_clips``.
        """
        n = self.levels_for(kbps, levels)
        if isinstance(audio, list | tuple):
            one_rate = isinstance(sample_rate, int | np.integer)
            rates = [sample_rate] * len(audio) if one_rate else list(sample_rate)
            if len(rates) != len(audio):
                raise AudioError(f"{len(audio)} clips but {len(rates)} sample rates")
            clips = [self._prepare_batch(a, sr)[0] for a, sr in zip(audio, rates, strict=True)]
            return self.encode_clips(clips, n, batch_size)
        return self._encode_padded(self._prepare_batch(audio, sample_rate), n)

    def _encode_padded(self, x: torch.Tensor, levels: int) -> torch.Tensor:
        """48 kHz [B, C, T] (model channels) -> codes [B, L, ceil(T / 1920) + 1]."""
        blocks = (x[..., i : i + CHUNK_SAMPLES] for i in range(0, x.shape[-1], CHUNK_SAMPLES))
        return torch.cat(list(self.encode_blocks(blocks, levels, len(x))), -1)

    def encode_clips(
        self, clips: Sequence[torch.Tensor], levels: int, batch_size: int = BATCH_CLIPS
    ) -> list[torch.Tensor]:
        """48 kHz clips [C, T_i] (model channels) -> codes [L, ceil(T_i / 1920) + 1] each.

        Clips are sorted by length and coded ``batch_size`` at a time, zero-padded on the right
        to the longest of their batch. No padding reaches the codes: the network is causal, code
        frame j depends only on samples up to 1920 j + 2399, and coding a clip alone zero-fills
        its end in the same way (the appended frame of silence plus the last STFT frame's
        look-ahead), so every kept frame sees exactly the input it sees alone. The frames past a
        clip's own count are dropped. Equality is exact on the CPU (tested); on CUDA, cuDNN may
        choose other kernels for other batch shapes, which can move rare near-ties.
        """
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        clips = [torch.as_tensor(c, dtype=torch.float32) for c in clips]
        out: list[torch.Tensor | None] = [None] * len(clips)
        order = sorted(range(len(clips)), key=lambda i: -clips[i].shape[-1])
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            longest = clips[idx[0]].shape[-1]
            x = torch.zeros(len(idx), self.channels, longest)
            for row, i in enumerate(idx):
                self.check_samples(clips[i])
                x[row, :, : clips[i].shape[-1]] = clips[i]
            codes = self._encode_padded(x, levels)
            for row, i in enumerate(idx):
                frames = -(-clips[i].shape[-1] // SAMPLES_PER_CODE) + 1
                out[i] = codes[row, :, :frames].contiguous()
        return out  # type: ignore[return-value]

    def decode(self, codes: torch.Tensor | np.ndarray, length: int | None = None) -> torch.Tensor:
        """codes [B, L, N] (or [L, N]) -> audio [B, C, (N - 1) * 1920] at 48 kHz (cut to
        ``length``); fewer than two frames give no samples."""
        c = self._codes_tensor(codes)
        empty = torch.zeros(c.shape[0], self.channels, 0)
        out = torch.cat([empty, *self.decode_chunks([c])], -1)
        return out[..., :length] if length is not None else out

    # ---- tokens for language models ----------------------------------------------------
    @property
    def codebooks(self) -> torch.Tensor:
        """The RVQ codebooks, float32 [levels, codebook_size, embedding_dim] (64, 1024, 256)."""
        self._need("quantizer")
        return self.model.quantizer.codebooks.detach()

    def _codes_tensor(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        c = torch.as_tensor(codes)
        if c.ndim == 2:
            c = c[None]
        if c.ndim != 3 or c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
            raise ModelError(f"codes must be an integer array [B, L, N], got {c.dtype} {c.shape}")
        if c.shape[1] > self.num_levels:
            raise ModelError(f"codes have {c.shape[1]} levels, the model {self.num_levels}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.config.codebook_size):
            raise ModelError(f"codes must be in 0..{self.config.codebook_size - 1}")
        return c.long().to(self.device)

    @torch.inference_mode()
    def embed(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """codes [B, L, N] (or [L, N]) -> the summed codewords, float32 [B, D, N].

        The decoder's input: ``decode(codes)`` is the decoder run on ``embed(codes)``.
        """
        self._need("quantizer")
        return self.model.quantizer.decode(self._codes_tensor(codes))

    @torch.inference_mode()
    def quantize(self, latent: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """latent [B, D, N] (or [D, N]) -> codes int64 [B, L, N]: the greedy RVQ search
        (IEEE float32) on the first ``levels`` levels (default: all)."""
        self._need("quantizer")
        z = torch.as_tensor(latent)
        if z.ndim == 2:
            z = z[None]
        if z.ndim != 3 or z.shape[1] != self.config.embedding_dim:
            raise ModelError(
                f"latent must be [B, {self.config.embedding_dim}, N], got {tuple(z.shape)}"
            )
        n = self.levels_for(levels=levels)
        with exact_fp32(self.device, convs=False):
            return self.model.quantizer.encode(z.float().to(self.device), n)

    def to_mrt_codes(
        self, codes: torch.Tensor | np.ndarray, num_samples: int | None = None
    ) -> torch.Tensor:
        """Our codes [B, L, N] (or [L, N]) -> Magenta RealTime's layout: int32 [B, frames, L]
        (or [frames, L]).

        Ours carry one extra look-ahead frame (``encode`` appends a frame of silence); MRT counts
        whole 40 ms frames of the input, ``num_samples // 1920`` at 48 kHz. With ``num_samples``
        (the 48 kHz length that was encoded) the frame count is MRT's; without it only the
        look-ahead frame is dropped (``ceil(T / 1920)`` frames, the last one partial).
        """
        if num_samples is not None and int(num_samples) < 0:
            raise UsageError(f"num_samples must be >= 0, got {num_samples}")
        c = self._codes_tensor(codes).cpu()
        frames = c.shape[-1] - 1 if num_samples is None else int(num_samples) // SAMPLES_PER_CODE
        if not 0 <= frames <= c.shape[-1]:
            raise ModelError(
                f"{num_samples} samples need {frames} frames; codes have {c.shape[-1]}"
            )
        out = c[..., :frames].transpose(1, 2).to(torch.int32).contiguous()
        return out[0] if torch.as_tensor(codes).ndim == 2 else out

    def from_mrt_codes(self, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Magenta RealTime tokens int [B, frames, L] (or [frames, L]; codes 0..1023, not the LM's
        offset vocabulary) -> our layout int64 [B, L, frames] (or [L, frames]).

        ``decode`` of these gives ``(frames - 1) * 1920`` samples: our decoder needs one frame of
        look-ahead, so the last 40 ms come out only when one more frame follows.
        """
        t = torch.as_tensor(tokens)
        if t.ndim not in (2, 3):
            raise ModelError(f"tokens must be [frames, L] or [B, frames, L], got {tuple(t.shape)}")
        c = self._codes_tensor(t.transpose(-1, -2)).cpu()
        return c[0] if t.ndim == 2 else c

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

    # ---- int8 (CPU) ---------------------------------------------------------------------
    def calibrate_int8(
        self,
        clips: Sequence[torch.Tensor],
        source: str = "",
        budget_db: float = 35.0,
        probe_clips: int = 4,
    ) -> Int8Calibration:
        """int8 calibration of this (float32, CPU) codec on 48 kHz clips [C, T] of real music:
        per-layer input ranges and the layers kept float32 (see :func:`int8.calibrate`)."""
        self._need(*PARTS)
        if self._int8 or self._dtype != torch.float32:
            raise UsageError("calibrate a float32 codec (load it without int8 or a dtype)")
        check_int8_support(self.device)
        batches = [self.to_model_channels(as_float_audio(c))[None] for c in clips]
        with torch.inference_mode(), self._exact():
            return calibrate(
                self.model,
                self.model_id,
                batches,
                sensitivity_clips=probe_clips,
                budget_db=budget_db,
                source=source,
            )

    def quantize_int8(self, calibration: Int8Calibration, weight_bits: int | None = None) -> Codec:
        """Run the convolutions int8 with ``calibration``'s ranges (CPU, float32 codec; one
        way: load again for float32). ``weight_bits``: 8, or 7 where oneDNN's kernels lack
        VNNI (default: detected, :func:`spectrostream.int8.default_weight_bits`). Returns self."""
        if calibration.model_id != self.model_id:
            raise ModelError(
                f"the int8 calibration is for model {calibration.model_id}, this model is "
                f"{self.model_id}: calibrate it (spectrostream calibrate-int8)"
            )
        if self._dtype != torch.float32:
            raise UsageError(INT8_WITH_DTYPE)
        check_int8_support(self.device)
        if not self._int8:
            quantize_int8(self.model, calibration, weight_bits)
            self._int8 = True
        return self

    # ---- persistence --------------------------------------------------------------------
    def save(self, path: str | Path, fp16: bool = False) -> None:
        """Write safetensors (atomically) with the config JSON, model id and parts in the metadata."""
        if self._int8:
            raise UsageError(
                "an int8 codec is not saved (its float weights are gone): save it "
                "before quantize_int8, or load the float32 model"
            )
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in self.model.state_dict().items()
            if k.split(".", 1)[0] in self.parts
        }
        if fp16:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        write_model(path, state, self.config, self.model_id, self.parts)


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


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the network ``config`` describes, by name, without allocating it.

    The encoder and decoder are built on the meta device; the quantizer's one tensor is
    stated (building it, or the STFT, on meta would import torch's slow reference ops for
    ``arange``: seconds per process). A test checks that this equals
    ``SpectroStream(config).state_dict()``.
    """
    with torch.device("meta"):
        convs = {"encoder": Encoder(config), "decoder": Decoder(config)}
    shapes = {
        f"{name}.{k}": tuple(v.shape)
        for name, part in convs.items()
        for k, v in part.state_dict().items()
    }
    q = (config.num_levels, config.codebook_size, config.embedding_dim)
    return {**shapes, "quantizer.codebooks": q}


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


def load(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    dtype: str | torch.dtype = "fp32",
    int8: bool | str | Path = False,
) -> Codec:
    """Load a codec: a path to a .safetensors model, or a name: ``"magenta-rt"`` (Google's
    weights, downloaded from the Hugging Face Hub once at ``revision``, then cached) or
    ``"default"`` (the shipped placeholder).

    ``device``: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``; ``dtype``: ``"fp32"``, ``"bf16"``
    or ``"fp16"`` for the convolutions (see ``Codec.to``). An unavailable device is a ModelError.

    ``int8``: ``True`` runs the convolutions int8 on the CPU with the calibration file next to
    the model (``NAME.int8.json``, see :func:`int8_calibration_path`), or give that file's
    path. A model without one is a ModelError (make one with ``spectrostream calibrate-int8``).

    Strict: every tensor of each part the file declares must be present with its shape. The
    config and the tensor shapes are checked before the network is built, and tensors are
    copied into it one at a time, so loading needs little extra memory.
    """
    set_threads()  # the default thread count, unless chosen (OMP_NUM_THREADS, --threads)
    if int8 is not False and str(device) != "auto":
        check_int8_support(device)  # before the device: "int8 is CPU only" says more
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    path = resolve_model(name_or_path, revision)
    config, meta = read_model_meta(path)
    with _open_model_file(path) as f:
        parts = _check_tensors(path, f, meta, config)
        parts_keys = list(f.keys())
        model = SpectroStream(config)
        own = model.state_dict()
        with torch.no_grad():
            for k in parts_keys:
                own[k].copy_(f.get_tensor(k))
    codec = Codec(model.to(dev), model_id=meta.get("model_id"), parts=parts)
    if int8 is not False:
        if dt != torch.float32:
            raise UsageError(INT8_WITH_DTYPE)
        check_int8_support(dev)
        where = int8_calibration_path(path) if int8 is True else Path(int8)
        return codec.quantize_int8(read_int8_calibration(where))
    return codec.to(dtype=dt) if dt != torch.float32 else codec


def int8_calibration_path(model_path: str | Path) -> Path:
    """Where a model's int8 calibration lives: ``x.safetensors`` -> ``x.int8.json`` beside it."""
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".int8.json")


def read_int8_calibration(path: str | Path) -> Int8Calibration:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ModelError(
            f"no int8 calibration at {path}: make one with spectrostream calibrate-int8"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: cannot read the int8 calibration ({e})") from None
    return Int8Calibration.from_json(text, where=str(path))


def write_int8_calibration(calibration: Int8Calibration, path: str | Path) -> None:
    """Write (atomically) a calibration file that :func:`load` ``(int8=True)`` reads."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(calibration.to_json() + "\n")


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
