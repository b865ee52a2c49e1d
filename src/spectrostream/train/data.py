"""Training data: folders of audio -> random 48 kHz crops.

- Files: whatever :mod:`spectrostream.audio_io` reads; crops are read by seeking
  (:func:`~spectrostream.audio_io.read_range`).
- Manifest: per-file duration, rate, channels, cached in a JSON file keyed by path, mtime and
  size. Unreadable files are skipped with a warning and counted (also cached, so they are not
  probed again until they change).
- Split by track: a folder holding ``train/`` and ``valid/`` subfolders defines the split;
  otherwise a track goes to validation when a hash of its path (relative to its root) falls
  below ``valid_fraction``.
- Crops: each item is a pure function of (seed, rank, key) where key = step * batch + slot, so
  the data stream is reproducible, independent of the number of workers, and resumes exactly
  from a step. Tracks are drawn in proportion to their duration; crops quieter than
  ``silence_db`` are redrawn up to ``silence_retries`` times (then kept and counted).
- Augmentation (training crops only, off by default, drawn from the crop's own generator so
  it stays reproducible): a random gain in +-``gain_db``, and with ``flips`` a polarity flip
  and a left/right swap, each with probability 1/2.
- Channels: mono -> dual-mono for stereo models; extra channels beyond the model's are dropped;
  a mono model gets the channel mean (``audio_io.to_channels(..., downmix=True)``). Everything
  is resampled to 48 kHz with ``audio_io.resample``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .. import audio_io
from ..config import SAMPLE_RATE
from ..errors import AudioError, DataError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
RESAMPLE_MARGIN = 256  # source samples read on each side so soxr's filter has context


@dataclass(frozen=True)
class TrackInfo:
    path: str
    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


# ---- probing and the manifest ------------------------------------------------------------


def probe(path: Path) -> TrackInfo:
    """Read a file's header (compressed streams: the container's duration estimate)."""
    info = audio_io.audio_info(path)
    frames = info.num_frames
    if frames is None:
        if info.duration_s is None:
            raise ValueError("unknown duration")
        frames = int(info.duration_s * info.sample_rate)
    return TrackInfo(str(path), frames, info.sample_rate, info.channels)


class Manifest:
    """Per-file metadata cache, keyed by absolute path, mtime and size."""

    def __init__(self, cache_path: Path | None) -> None:
        self.cache_path = cache_path
        self.entries: dict[str, dict] = {}
        if cache_path is not None and cache_path.exists():
            try:
                data = json.loads(cache_path.read_text())
            except json.JSONDecodeError as e:
                log.warning(
                    "manifest cache %s is not valid JSON (%s); rebuilding it", cache_path, e
                )
                data = {}
            if data.get("version") == MANIFEST_VERSION:
                self.entries = data.get("files", {})

    def lookup(self, paths: Sequence[Path]) -> tuple[list[TrackInfo], list[tuple[str, str]]]:
        """-> (readable tracks, [(path, error)] for unreadable ones)."""
        tracks, failures = [], []
        for p in paths:
            key = str(p.resolve())
            st = p.stat()
            entry = self.entries.get(key)
            if entry is None or entry["mtime_ns"] != st.st_mtime_ns or entry["size"] != st.st_size:
                entry = {"mtime_ns": st.st_mtime_ns, "size": st.st_size}
                try:
                    info = probe(p)
                    if info.frames <= 0 or info.sample_rate <= 0 or info.channels <= 0:
                        raise ValueError("empty or malformed stream")
                    entry.update(asdict(info), error=None)
                except Exception as e:  # noqa: BLE001 - any decoder failure marks the file bad
                    entry.update(error=f"{type(e).__name__}: {e}")
                self.entries[key] = entry
            if entry.get("error"):
                failures.append((str(p), entry["error"]))
            else:
                tracks.append(
                    TrackInfo(str(p), entry["frames"], entry["sample_rate"], entry["channels"])
                )
        return tracks, failures

    def save(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(self.cache_path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": MANIFEST_VERSION, "files": self.entries}))
        os.replace(tmp, self.cache_path)


def _is_valid_track(rel: str, valid_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha1(rel.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < valid_fraction


@dataclass(frozen=True)
class DataSplit:
    train: list[TrackInfo]
    valid: list[TrackInfo]
    failures: list[tuple[str, str]]


def build_split(
    roots: Sequence[str | Path], valid_fraction: float, cache_path: Path | None
) -> DataSplit:
    """Scan the data folders (recursively) and split them into train/validation tracks."""
    if not roots:
        raise DataError("no data folders given (use --data DIR or [data] train = [...])")
    manifest = Manifest(cache_path)
    train: list[TrackInfo] = []
    valid: list[TrackInfo] = []
    failures: list[tuple[str, str]] = []
    for r in roots:
        root = Path(r)
        if not root.is_dir():
            raise DataError(f"data folder not found: {root}")
        if (root / "train").is_dir() and (root / "valid").is_dir():
            t, f1 = manifest.lookup(audio_io.find_audio(root / "train"))
            v, f2 = manifest.lookup(audio_io.find_audio(root / "valid"))
            train += t
            valid += v
            failures += f1 + f2
            continue
        files = audio_io.find_audio(root)
        tracks, f = manifest.lookup(files)
        failures += f
        for t in tracks:
            rel = Path(t.path).relative_to(root).as_posix()
            (valid if _is_valid_track(rel, valid_fraction) else train).append(t)
    manifest.save()
    for path, err in failures[:20]:
        log.warning("skipping unreadable audio file %s (%s)", path, err)
    if len(failures) > 20:
        log.warning("... and %d more unreadable files", len(failures) - 20)
    if not train:
        found = len(train) + len(valid) + len(failures)
        raise DataError(
            f"no usable training audio under {', '.join(map(str, roots))} "
            f"({found} audio files found, {len(failures)} unreadable, {len(valid)} held out; "
            f"extensions: {', '.join(sorted(audio_io.AUDIO_EXTENSIONS))})"
        )
    return DataSplit(train, valid, failures)


# ---- reading crops --------------------------------------------------------------------------


def read_crop(track: TrackInfo, start_48k: int, length: int, channels: int) -> np.ndarray:
    """A crop of ``length`` samples at 48 kHz starting at 48 kHz sample ``start_48k``,
    [channels, length] float32 (zero-filled past the end of the track)."""
    sr = track.sample_rate
    if sr == SAMPLE_RATE:
        seg, _ = audio_io.read_range(track.path, start_48k, length)
        return _fit_crop(seg, length, channels)
    src_start = math.floor(start_48k * sr / SAMPLE_RATE)
    src_len = math.ceil(length * sr / SAMPLE_RATE) + 1
    lo = max(0, src_start - RESAMPLE_MARGIN)
    seg, _ = audio_io.read_range(track.path, lo, src_start - lo + src_len + RESAMPLE_MARGIN)
    if seg.shape[1] == 0:
        return np.zeros((channels, length), np.float32)
    offset = round(start_48k - lo * SAMPLE_RATE / sr)
    return _fit_crop(audio_io.resample(seg, sr, SAMPLE_RATE)[:, offset:], length, channels)


def _fit_crop(audio: np.ndarray, length: int, channels: int) -> np.ndarray:
    crop = audio_io.to_channels(audio_io.fit_length(audio, length), channels, downmix=True)
    return np.ascontiguousarray(crop, dtype=np.float32)


def rms_db(x: np.ndarray) -> float:
    return 10.0 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-20)


# ---- datasets -------------------------------------------------------------------------------


class CropDataset(Dataset):
    """Random crops; item ``key`` -> (audio [C, L] float32, read failures, quiet crops kept)."""

    def __init__(
        self,
        tracks: Sequence[TrackInfo],
        crop_samples: int,
        channels: int,
        seed: int = 0,
        rank: int = 0,
        silence_db: float = -50.0,
        silence_retries: int = 5,
        max_read_retries: int = 10,
        gain_db: float = 0.0,
        flips: bool = False,
    ) -> None:
        if not tracks:
            raise DataError("no tracks to crop from")
        self.tracks = list(tracks)
        self.crop_samples, self.channels = crop_samples, channels
        self.seed, self.rank = seed, rank
        self.silence_db, self.silence_retries = silence_db, silence_retries
        self.max_read_retries = max_read_retries
        self.gain_db, self.flips = gain_db, flips
        secs = np.array([t.seconds for t in self.tracks], dtype=np.float64)
        self.weights = secs / secs.sum()
        self.bad: set[int] = set()

    def __len__(self) -> int:  # keys are unbounded; the sampler supplies them
        return 2**62

    def _draw(self, rng: np.random.Generator) -> tuple[int, int]:
        i = int(rng.choice(len(self.tracks), p=self.weights))
        total = int(self.tracks[i].seconds * SAMPLE_RATE)
        start = int(rng.integers(0, max(1, total - self.crop_samples + 1)))
        return i, start

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int, int]:
        rng = np.random.default_rng([self.seed, self.rank, int(key)])
        failures = quiet = 0
        crop: np.ndarray | None = None
        attempts = 0
        while True:
            i, start = self._draw(rng)
            if i in self.bad:
                if len(self.bad) == len(self.tracks):
                    raise DataError("every training file failed to decode")
                continue
            try:
                crop = read_crop(self.tracks[i], start, self.crop_samples, self.channels)
                if not np.isfinite(crop).all():  # one NaN file would end the run at step 1
                    raise DataError("non-finite samples (NaN or Inf)")
            except Exception as e:
                failures += 1
                self.bad.add(i)
                log.warning(
                    "skipping unreadable audio file %s (%s: %s)",
                    self.tracks[i].path,
                    type(e).__name__,
                    e,
                )
                if failures > self.max_read_retries:
                    raise DataError(f"{failures} consecutive unreadable crops") from e
                continue
            if rms_db(crop) >= self.silence_db:
                break
            attempts += 1
            if attempts > self.silence_retries:
                quiet = 1
                break
        crop = augment(crop, rng, self.gain_db, self.flips)
        return torch.from_numpy(np.ascontiguousarray(crop)), failures, quiet


def augment(crop: np.ndarray, rng: np.random.Generator, gain_db: float, flips: bool) -> np.ndarray:
    """crop [C, L] -> gain in +-gain_db, and (flips) polarity flip and channel swap at p = 1/2.

    The gain never pushes the peak above 1 (it is lowered to fit).
    """
    if gain_db > 0:
        g = 10 ** (rng.uniform(-gain_db, gain_db) / 20)
        peak = float(np.abs(crop).max()) if crop.size else 0.0
        if peak * g > 1.0:
            g = 1.0 / peak
        crop = crop * np.float32(g)
    if flips:
        if rng.random() < 0.5:
            crop = -crop
        if crop.shape[0] == 2 and rng.random() < 0.5:
            crop = crop[::-1]
    return crop.astype(np.float32, copy=False)


class ValidDataset(Dataset):
    """Fixed validation crops: crop j comes from track j mod n at a position set by the seed."""

    def __init__(
        self,
        tracks: Sequence[TrackInfo],
        crop_samples: int,
        channels: int,
        count: int,
        seed: int = 0,
        silence_db: float = -50.0,
    ) -> None:
        self.tracks = list(tracks)
        self.crop_samples, self.channels = crop_samples, channels
        self.count = count if self.tracks else 0
        self.seed, self.silence_db = seed, silence_db

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, j: int) -> torch.Tensor:
        track = self.tracks[j % len(self.tracks)]
        rng = np.random.default_rng([self.seed, 0x7A11D, j])
        total = int(track.seconds * SAMPLE_RATE)
        crop = np.zeros((self.channels, self.crop_samples), np.float32)
        for _ in range(4):
            start = int(rng.integers(0, max(1, total - self.crop_samples + 1)))
            try:
                crop = read_crop(track, start, self.crop_samples, self.channels)
                if not np.isfinite(crop).all():
                    raise DataError("non-finite samples (NaN or Inf)")
            except (AudioError, DataError) as e:  # a bad file must not stop validation
                log.warning("validation file %s: %s; using silence", track.path, e)
                crop = np.zeros((self.channels, self.crop_samples), np.float32)
                break
            if rms_db(crop) >= self.silence_db:
                break
        return torch.from_numpy(crop)


class StepBatchSampler(Sampler[list[int]]):
    """Batches of keys for steps start_step, start_step + 1, ... (the resumable position)."""

    def __init__(self, batch_size: int, start_step: int, max_steps: int) -> None:
        self.batch_size, self.start_step, self.max_steps = batch_size, start_step, max_steps

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.max_steps):
            yield [step * self.batch_size + i for i in range(self.batch_size)]

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)


def worker_seeder(seed: int, rank: int, epoch: int):
    """worker_init_fn seeding python/numpy/torch from (seed, rank, worker id, epoch).

    Crops themselves are keyed by (seed, rank, key) and do not depend on these seeds; this
    only makes any other randomness in a worker reproducible.
    """

    def init(worker_id: int) -> None:
        ss = np.random.SeedSequence([seed, rank, worker_id, epoch])
        s = int(ss.generate_state(1)[0])
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    return init
