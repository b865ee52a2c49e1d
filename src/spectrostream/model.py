"""The SpectroStream network: STFT -> encoder -> RVQ -> decoder -> look-ahead trim -> iSTFT.

Offline and streaming share one code path: offline is a stream fed a single chunk.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .config import FRAMES_PER_CODE, HOP_SAMPLES, SAMPLES_PER_CODE, ModelConfig
from .decoder import Decoder, LookaheadTrim
from .dsp import ISTFT, STFT
from .encoder import Encoder
from .errors import UsageError
from .quantizer import ResidualVQ
from .step import CompiledSearch, CompiledStep, compiled_search, compiled_step
from .streaming import (
    FrameBuffer,
    clone_state,
    get_state,
    is_streaming,
    set_state,
    set_streaming,
)
from .streaming import reset as reset_layers


class SpectroStream(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.stft = STFT()
        self.encoder = Encoder(config)
        self.quantizer = ResidualVQ(config.num_levels, config.codebook_size, config.embedding_dim)
        self.decoder = Decoder(config)
        self.trim = LookaheadTrim(FRAMES_PER_CODE)
        self.istft = ISTFT()

    # ---- offline --------------------------------------------------------------------------
    def encode_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, C, T] at 48 kHz -> [B, D, ceil(T / 1920)].

        Zero-fills past the end: to a whole code frame, plus the 480 samples the last STFT frame
        looks ahead.
        """
        frames = -(-audio.shape[-1] // SAMPLES_PER_CODE)
        pad = frames * SAMPLES_PER_CODE + HOP_SAMPLES - audio.shape[-1]
        return self.encoder(self.stft(F.pad(audio, (0, pad))))

    def decode_embeddings(
        self, emb: torch.Tensor, towers: TowerSplit | None = None
    ) -> torch.Tensor:
        """emb [B, D, N] -> audio [B, C, (N - 1) * 1920]; sample n lines up with input sample n.
        ``towers``: a stream's :class:`TowerSplit` (see :meth:`Decoder.forward`)."""
        return self.istft(self.trim(self.decoder(emb, towers)))

    def encode(self, audio: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """audio [B, C, T] -> codes [B, L, ceil(T / 1920)]."""
        return self.quantizer.encode(self.encode_embeddings(audio), levels)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, L, N] -> audio [B, C, (N - 1) * 1920]."""
        return self.decode_embeddings(self.quantizer.decode(codes))

    def forward(self, audio: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Quantized round trip, audio [B, C, T] -> [B, C, (ceil(T / 1920) - 1) * 1920]."""
        emb = self.encode_embeddings(audio)
        return self.decode_embeddings(self.quantizer.quantize(emb, levels)[1])

    def num_parameters(self) -> int:
        """Inference parameter count, codebooks included (61,713,666 for the official config)."""
        return sum(t.numel() for t in self.state_dict().values())


class _Stream:
    """Turns streaming on for ``parts`` until ``close()``; one open stream per module.

    ``get_state()`` is a complete snapshot (a copy): ``set_state()`` of it continues exactly
    where it was taken, any number of times; ``reset()`` starts a new stream.
    """

    kind = "stream"

    def __init__(self, parts: dict[str, nn.Module], split: TowerSplit | None = None) -> None:
        if any(is_streaming(m) for m in parts.values()):
            raise RuntimeError(f"this model already has an open streaming {self.kind}")
        self._split = split
        if split is not None:  # the twin's layers hold channel 1's state: part of the stream
            parts = {**parts, "split_towers": split.twin}
            torch.set_num_threads(1)  # one intra-op thread here, one in the worker: a tower each
        self._parts = parts
        for m in parts.values():
            set_streaming(m, True)
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"streaming {self.kind} is closed")

    def close(self) -> None:
        if not self.closed:
            for m in self._parts.values():
                set_streaming(m, False)
            if self._split is not None:
                self._split.close()
            self.closed = True

    def reset(self) -> None:
        """Back to the start of a stream (fresh state), staying open."""
        self._check_open()
        for m in self._parts.values():
            reset_layers(m)
        self.batch = None  # the next push fixes it again

    def get_state(self) -> dict[str, Any]:
        """A copy of the whole stream state: every layer's, plus the stream's own counters."""
        self._check_open()
        return {name: get_state(m) for name, m in self._parts.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._check_open()
        if set(state) - {"stream"} != set(self._parts):
            raise UsageError(f"not a streaming {self.kind} state")
        for name, m in self._parts.items():
            set_state(m, state[name])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TowerSplit:
    """A stereo stream's second tower in a worker thread: the per-channel layers of audio
    channel 1 (:meth:`Encoder.towers` / :meth:`Decoder.towers`) run on a twin of the part (the
    same weight tensors, its own streaming state) in one worker of one intra-op thread, while
    this thread runs channel 0's; the joint layers, RVQ, STFT and iSTFT stay here. Opening
    such a stream sets torch to one intra-op thread (``torch.set_num_threads(1)``).

    For one stream on two idle cores: the official model's step took 29-31 ms split against
    37 ms on two intra-op threads and 42 ms on one (docs/benchmarks.md). On a loaded machine
    it gains nothing, and the shipped default's towers are too small a part of its step."""

    def __init__(self, part: nn.Module) -> None:
        # Every tensor a layer holds is shared (weights, buffers, an int8 layer's packed
        # weights, which cannot be copied anyway); the streaming states are None while no
        # stream is open, so the twin starts fresh.
        shared = {id(t): t for m in part.modules() for t in _tensors(vars(m))}
        self.part, self.twin = part, copy.deepcopy(part, memo=shared)
        self._pool = ThreadPoolExecutor(1, "spectrostream-tower", torch.set_num_threads, (1,))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [B*2, ...] (rows: batch, then channel) -> the towers' output, same row order."""
        modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        job = self._pool.submit(self._twin_towers, x[1::2], modes)
        try:
            y0 = self.part.towers(x[0::2])
        finally:
            y1 = job.result()
        return torch.stack([y0, y1], 1).flatten(0, 1)

    def _twin_towers(self, x: torch.Tensor, modes: tuple[bool, bool]) -> torch.Tensor:
        with torch.inference_mode(modes[0]), torch.set_grad_enabled(modes[1]):
            return self.twin.towers(x)

    def close(self) -> None:
        self._pool.shutdown()


def _tensors(obj: object) -> Iterator[torch.Tensor]:
    """The tensors in ``obj``, looking into dicts, lists and tuples (a module's attributes)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _tower_split(model: SpectroStream, part: str, split: bool, compiled: bool) -> TowerSplit | None:
    """``split_towers=True``: a :class:`TowerSplit` of ``part`` (stereo models, not compiled)."""
    if not split:
        return None
    if compiled:
        raise UsageError("split_towers=True and compiled=True cannot be combined")
    if model.config.audio_channels != 2:
        raise UsageError("split_towers=True needs a stereo model")
    return TowerSplit(getattr(model, part))


class StreamingEncoder(_Stream):
    """Audio chunks of any size in, codes out as soon as their input has arrived.

    Code frame j is emitted once samples up to 1920 j + 2399 have been pushed. ``compiled=True``
    runs the encoder network of each single code frame (batch 1) through
    :class:`spectrostream.step.CompiledStep` (compiled on first use; ~1e-6 rounding differences),
    and the first pass of its RVQ search through :class:`spectrostream.step.CompiledSearch`
    (the same codes as the eager search for the same embedding). ``flush()``
    zero-fills the end exactly as the offline path does, so the concatenated output equals
    ``model.encode(all_audio)``. The network only ever sees whole code frames (groups of four
    STFT frames; the rest waits in a buffer), so a stream of 40 ms chunks runs it with the same
    shapes at every step, those of :class:`spectrostream.step.NetworkStep`.
    ``split_towers=True``: the second audio channel's towers in a worker thread
    (:class:`TowerSplit`).
    """

    kind = "encoder"

    def __init__(
        self,
        model: SpectroStream,
        levels: int | None = None,
        compiled: bool = False,
        split_towers: bool = False,
    ) -> None:
        q = model.config.num_levels
        if levels is not None and (
            isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= q
        ):
            raise UsageError(f"levels must be an integer in 1..{q} or None, got {levels!r}")
        split = _tower_split(model, "encoder", split_towers, compiled)
        self._step = _compiled_step(model, "encoder", compiled)
        super().__init__({"stft": model.stft, "encoder": model.encoder}, split)
        self.model, self.levels = model, levels
        self._first_pass()  # compiles the search now, as the step
        self.samples_in = 0
        self._frames: FrameBuffer | None = None  # STFT frames of an incomplete code frame
        self.batch: int | None = None  # fixed by the first push

    def reset(self) -> None:
        super().reset()
        self.samples_in, self._frames = 0, None

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["stream"] = EncoderCounters(self.samples_in, clone_state(self._frames))
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        counters = state["stream"]
        self.samples_in, self._frames = counters.samples_in, clone_state(counters.frames)

    def push_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, C, n] -> embeddings [B, D, m] for the code frames completed by this chunk."""
        self._check_open()
        self.samples_in += audio.shape[-1]
        spec = self.model.stft(audio)  # [B, C, 2, T, 480]
        if self._frames is None and spec.shape[3] % FRAMES_PER_CODE == 0:
            whole = spec  # nothing pending: no copy
        else:
            if self._frames is None:
                self._frames = FrameBuffer.zeros(spec, 3, 0, spec.shape[3])
            buf = self._frames.append(spec)
            whole = buf.narrow(3, 0, buf.shape[3] // FRAMES_PER_CODE * FRAMES_PER_CODE)
        if whole.shape[3] == 0:  # no complete code frame: nothing downstream can change
            return audio.new_zeros(audio.shape[0], self.model.config.embedding_dim, 0)
        if self._step is not None and tuple(whole.shape) == self._step.example_shape:
            emb = self._step(whole)
        else:
            emb = self.model.encoder(whole, self._split)
        if self._frames is not None:
            self._frames.consume(whole.shape[3])
            if self._frames.fill == 0:
                self._frames = None
        return emb

    def push(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, C, n] -> codes [B, L, m]. A rejected chunk leaves the stream as it was."""
        batch = _check_push(self, audio, "audio [B, C, n]", self.model.config.audio_channels)
        if not audio.is_floating_point():
            raise UsageError(f"audio must be float samples, got {audio.dtype}")
        self.batch = batch
        emb = self.push_embeddings(audio)
        return self.model.quantizer.encode(emb, self.levels, first_pass=self._first_pass())

    def _first_pass(self) -> CompiledSearch | None:
        """With ``compiled=True`` on the CPU, the compiled first pass of the RVQ search."""
        if self._step is None or self.model.quantizer.codebooks.device.type != "cpu":
            return None
        return compiled_search(self.model.quantizer, self.levels or self.model.config.num_levels)

    def flush_embeddings(self, batch: int, channels: int) -> torch.Tensor:
        frames = -(-self.samples_in // SAMPLES_PER_CODE)
        pad = frames * SAMPLES_PER_CODE + HOP_SAMPLES - self.samples_in
        dev = self.model.quantizer.codebooks.device
        emb = self.push_embeddings(torch.zeros(batch, channels, pad, device=dev))
        self.close()
        return emb

    def flush(self, batch: int = 1, channels: int | None = None) -> torch.Tensor:
        """Emit the remaining code frames (zero-filled end) and close the stream."""
        channels = self.model.config.audio_channels if channels is None else channels
        return self.model.quantizer.encode(self.flush_embeddings(batch, channels), self.levels)


@dataclass
class EncoderCounters:
    """The streaming encoder's own state: samples pushed, STFT frames of a partial code frame."""

    samples_in: int
    frames: FrameBuffer | None


class StreamingDecoder(_Stream):
    """Code frames in, audio out: after code frame j arrives, samples up to 1920 j are final.

    The first code frame only primes the look-ahead, so N frames give (N - 1) * 1920 samples,
    equal to ``model.decode`` of the same codes. ``compiled=True``: one-frame pushes (batch 1)
    run the decoder network through :class:`spectrostream.step.CompiledStep`.
    ``split_towers=True`` as for :class:`StreamingEncoder`.
    """

    kind = "decoder"

    def __init__(
        self, model: SpectroStream, compiled: bool = False, split_towers: bool = False
    ) -> None:
        split = _tower_split(model, "decoder", split_towers, compiled)
        self._step = _compiled_step(model, "decoder", compiled)
        parts = {"decoder": model.decoder, "trim": model.trim, "istft": model.istft}
        super().__init__(parts, split)
        self.model = model
        self.batch: int | None = None  # fixed by the first push

    def push_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        self._check_open()
        if self._step is not None and tuple(emb.shape) == self._step.example_shape:
            return self.model.istft(self.model.trim(self._step(emb)))
        return self.model.decode_embeddings(emb, self._split)

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, L, m] -> audio [B, C, 1920 m] (1920 fewer on the first call). A rejected
        chunk leaves the stream as it was."""
        batch = _check_push(self, codes, "codes [B, L, m]", None)
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise UsageError(f"codes must be integers, got {codes.dtype}")
        if codes.shape[-1] == 0:  # nothing new: the state cannot change
            c = self.model.config.audio_channels
            return torch.zeros(codes.shape[0], c, 0, device=codes.device)
        emb = self.model.quantizer.decode(codes)  # checks the level count and code range
        self.batch = batch
        return self.push_embeddings(emb)


def _compiled_step(model: SpectroStream, part: str, compiled: bool) -> CompiledStep | None:
    """``compiled=True``: the inductor-compiled one-frame step (batch 1, float32 CPU models),
    built before the stream opens; a stream of 40 ms pushes runs it instead of the layers."""
    if not compiled:
        return None
    w = next(getattr(model, part).parameters())
    if w.device.type != "cpu" or w.dtype != torch.float32:
        raise UsageError(f"compiled=True needs a float32 CPU model, not {w.dtype} on {w.device}")
    if is_streaming(getattr(model, part)):
        raise RuntimeError(f"this model already has an open streaming {part}")
    step = compiled_step(model, part)
    return step if step.compiled else None  # not compiled (warned): the layers are faster


def _check_push(stream: _Stream, x: object, what: str, channels: int | None) -> int:
    """Checks a chunk before it touches any state; returns its batch size."""
    stream._check_open()
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise UsageError(f"{stream.kind} push takes {what}, got {getattr(x, 'shape', type(x))}")
    if channels is not None and x.shape[1] != channels:
        raise UsageError(f"audio has {x.shape[1]} channels; this model codes {channels}")
    if stream.batch is not None and x.shape[0] != stream.batch:
        raise UsageError(
            f"batch size changed from {stream.batch} to {x.shape[0]} mid-stream; open a new "
            "stream for a new batch"
        )
    return x.shape[0]


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """Remove weight-norm parametrizations in place, leaving plain convs (inference layout)."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model
