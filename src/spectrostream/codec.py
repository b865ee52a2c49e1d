"""The public codec: audio <-> codes <-> .ssc bytes, bit-rate choice, load and save.

Every path runs the streaming encoder/decoder over bounded chunks, so a one-hour file and a
one-second clip go through the same code, and memory does not grow with the input length.

Alignment: ``encode`` appends one code frame of zeros (the decoder's look-ahead), so T samples
give ``ceil(T / 1920) + 1`` code frames and ``decode`` returns at least T samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from . import audio_io, bitstream
from .audio_io import AudioError
from .config import CODE_RATE_HZ, SAMPLE_RATE, SAMPLES_PER_CODE, ModelConfig
from .device import exact_fp32, resolve_device, resolve_dtype
from .model import SpectroStream, StreamingDecoder, StreamingEncoder, fold_weight_norm
from .official import PARTS, ModelError, parts_present
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
# Clips coded together by ``encode`` of a list (padded to the longest of each batch).
BATCH_CLIPS = 16

ProgressFn = Callable[[int], None]


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

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the encoder and decoder convolutions (the RVQ is always float32)."""
        return self._dtype

    def to(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> Codec:
        """Move to ``device`` (``auto``/``cpu``/``cuda``/``mps``) and/or run the convolutions in
        ``dtype`` (``fp32``/``bf16``/``fp16``). STFT, iSTFT and the codebooks stay float32.

        Casting is one way: a codec in bf16/fp16 cannot go back (load it again). Raises
        ModelError for a device that is not available. Returns self.
        """
        if device is not None:
            self.model.to(resolve_device(device))
        if dtype is not None:
            self._set_dtype(resolve_dtype(dtype))
        return self

    def _set_dtype(self, dtype: torch.dtype) -> None:
        if dtype == self._dtype:
            return
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

    def _exact(self):
        """IEEE float32 for the RVQ search (and for the convolutions in fp32 mode)."""
        return exact_fp32(self.device, convs=self._dtype == torch.float32)

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
                with self._exact():
                    codes = enc.push(torch.from_numpy(np.ascontiguousarray(block)).to(self.device))
                if codes.shape[-1]:
                    yield codes.cpu().numpy()
            zeros = torch.zeros(batch, self.channels, SAMPLES_PER_CODE, device=self.device)
            with self._exact():
                last = [enc.push(zeros), enc.flush(batch, self.channels)]
            yield from (c.cpu().numpy() for c in last)

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
                    with self._exact():
                        audio = dec.push(part.long().to(self.device))
                    yield audio.cpu().numpy()

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
        audio: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
        sample_rate: int | Sequence[int],
        kbps: float | None = None,
        levels: int | None = None,
        batch_size: int = BATCH_CLIPS,
    ) -> torch.Tensor | list[torch.Tensor]:
        """audio [B, C, T] or [C, T] at any rate -> codes int64 [B, L, ceil(T48 / 1920) + 1].

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
            return [torch.from_numpy(c) for c in self.encode_clips(clips, n, batch_size)]
        x = self._prepare_batch(audio, sample_rate)
        return torch.from_numpy(self._encode_padded(x, n))

    def _encode_padded(self, x: np.ndarray, levels: int) -> np.ndarray:
        """48 kHz [B, C, T] (model channels) -> codes [B, L, ceil(T / 1920) + 1]."""
        blocks = (x[..., i : i + CHUNK_SAMPLES] for i in range(0, x.shape[-1], CHUNK_SAMPLES))
        return np.concatenate(list(self._encode_stream(blocks, levels, len(x))), -1)

    def encode_clips(
        self, clips: Sequence[np.ndarray], levels: int, batch_size: int = BATCH_CLIPS
    ) -> list[np.ndarray]:
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
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out: list[np.ndarray | None] = [None] * len(clips)
        order = sorted(range(len(clips)), key=lambda i: -clips[i].shape[-1])
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            longest = clips[idx[0]].shape[-1]
            x = np.zeros((len(idx), self.channels, longest), dtype=np.float32)
            for row, i in enumerate(idx):
                self._check_audio(clips[i])
                x[row, :, : clips[i].shape[-1]] = clips[i]
            codes = self._encode_padded(x, levels)
            for row, i in enumerate(idx):
                frames = -(-clips[i].shape[-1] // SAMPLES_PER_CODE) + 1
                out[i] = np.ascontiguousarray(codes[row, :, :frames])
        return out  # type: ignore[return-value]

    def decode(self, codes: torch.Tensor | np.ndarray, length: int | None = None) -> torch.Tensor:
        """codes [B, L, N] (or [L, N]) -> audio [B, C, (N - 1) * 1920] at 48 kHz (cut to ``length``)."""
        c = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        if c.ndim == 2:
            c = c[None]
        if c.ndim != 3 or not np.issubdtype(c.dtype, np.integer):
            raise ModelError(f"codes must be an integer array [B, L, N], got {c.dtype} {c.shape}")
        out = np.concatenate(list(self._decode_stream([c])), -1)
        return torch.from_numpy(out[..., :length] if length is not None else out)

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
        if c.ndim != 3 or c.is_floating_point() or c.is_complex():
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
        with open_for_model(src, self.channels) as reader:
            header = self._header(reader.sample_rate, reader.channels, reader.num_frames, n)
            writer = bitstream.StreamWriter(dst, header)
            total = 0

            def count(frames: int) -> None:
                nonlocal total
                total += frames
                if progress is not None:
                    progress(frames)

            blocks = (b[None] for b in model_blocks(reader, self.channels, count))
            for codes in self._encode_stream(blocks, n):
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
        """Write safetensors (atomically) with the config JSON, model id and parts in the metadata."""
        state = {
            k: v.detach().cpu().float().contiguous() if v.is_floating_point() else v.cpu()
            for k, v in self.model.state_dict().items()
            if k.split(".", 1)[0] in self.parts
        }
        if fp16:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        write_model(path, state, self.config, self.model_id, self.parts)


def open_for_model(src: str | Path, channels: int) -> audio_io.AudioReader:
    """Open an audio file (or "-") for a model coding ``channels`` channels (mono or that many)."""
    reader = audio_io.AudioReader(src, block_frames=CHUNK_SAMPLES)
    if reader.channels not in (1, channels):
        reader.close()
        raise AudioError(
            f"{reader.name}: {reader.channels} channels; this model codes "
            f"{channels} (mono is coded as dual-mono); downmix first"
        )
    return reader


def model_blocks(
    reader: audio_io.AudioReader, channels: int, progress: ProgressFn | None = None
) -> Iterator[np.ndarray]:
    """The audio a model codes, block by block: 48 kHz [channels, n], mono as dual-mono.

    ``progress`` gets the number of source frames of each block read.
    """
    resampler = audio_io.StreamingResampler(reader.sample_rate, SAMPLE_RATE, reader.channels)

    def fit(x: np.ndarray) -> np.ndarray:
        return x if x.shape[0] == channels else np.repeat(x, channels, axis=0)

    for block in reader:
        if progress is not None:
            progress(block.shape[1])
        yield fit(resampler.process(block))
    yield fit(resampler.flush())


def read_for_model(src: str | Path, channels: int) -> tuple[np.ndarray, audio_io.AudioInfo]:
    """A whole file as ``encode_file`` codes it: (48 kHz [channels, T48], the source's info with
    the number of frames actually read)."""
    frames = [0]
    with open_for_model(src, channels) as reader:
        x = np.concatenate(list(model_blocks(reader, channels, frames.append)), axis=1)
        n, sr = sum(frames), reader.sample_rate
        info = audio_io.AudioInfo(sr, reader.channels, n, n / sr, reader.format)
    return x, info


def resolve_model_path(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A model file for a path or a name (``default``, ``magenta-rt``); see ``weights``."""
    return resolve_model(name_or_path, revision)


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


def load(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    dtype: str | torch.dtype = "fp32",
) -> Codec:
    """Load a codec: a path to a .safetensors model, or a name: ``"magenta-rt"`` (Google's
    weights, downloaded from the Hugging Face Hub once at ``revision``, then cached) or
    ``"default"`` (the shipped placeholder).

    ``device``: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``; ``dtype``: ``"fp32"``, ``"bf16"``
    or ``"fp16"`` for the convolutions (see ``Codec.to``). An unavailable device is a ModelError.

    Strict: every tensor of each part the file declares must be present with its shape.
    Tensors are copied into the model one at a time, so loading needs little extra memory.
    """
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    path = resolve_model(name_or_path, revision)
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
    codec = Codec(model.to(dev), model_id=meta.get("model_id"), parts=parts)
    return codec.to(dtype=dt) if dt != torch.float32 else codec


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
