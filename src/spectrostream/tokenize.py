"""Tokenize a music collection: every audio file below a folder to codes, in shards.

Shard ``shard-KKKKK-of-NNNNN.safetensors`` (format in docs/tokens.md; readable with the
``safetensors`` package alone) holds the files ``K * shard_files ...`` of the sorted file list:

    codes        int16 [frames, levels]  every file's codes, concatenated along frames
    offsets      int64 [files + 1]       file i is codes[offsets[i]:offsets[i + 1]]
    num_samples  int64 [files]           source length, in samples at the source rate
    sample_rate  int64 [files]           source sample rate
    channels     int64 [files]           source channel count (mono is coded as dual-mono)
    metadata: format, format_version, names (JSON list, aligned with offsets), failed (JSON
    [[name, error], ...]), model_id, levels, codebook_size, frame_rate, samples_per_frame,
    lookahead_frames ("1": each file's codes end with the frame ``encode`` appends), dtype.

A shard is written to a temporary file in the output folder and renamed when complete, so a
killed run leaves whole shards and temporary files; a rerun skips the whole shards (after
checking they hold this run's files, model and levels) and deletes its own stale temporary files.
Audio is decoded on DataLoader worker processes while the model codes the previous batch.
Under ``torchrun`` rank r takes shards r, r + W, r + 2W, ...
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from . import audio_io
from .atomic import TEMP_PREFIX, atomic_path
from .audio_io import AudioError
from .codec import Codec
from .config import SAMPLES_PER_CODE
from .device import dtype_name
from .errors import UsageError
from .files import read_for_model

FORMAT_NAME = "spectrostream-tokens"
FORMAT_VERSION = "1"
SHARD_FILES = 256


class TokenizeError(UsageError):
    """The output folder holds shards that do not belong to this run."""


@dataclass
class Clip:
    """One decoded file (``audio`` [C, T48]) or why it could not be read (``error``)."""

    name: str
    audio: np.ndarray | None = None
    sample_rate: int = 0
    channels: int = 0
    num_samples: int = 0
    error: str | None = None


@dataclass
class Report:
    shards_written: int = 0
    shards_skipped: int = 0
    files: int = 0  # files coded by this run (not failures, not skipped shards)
    audio_seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)


class _Files(Dataset):
    """Decodes files on DataLoader workers; an unreadable file becomes a Clip with ``error``."""

    def __init__(self, root: Path, names: list[str], channels: int) -> None:
        self.root, self.names, self.channels = root, names, channels

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Clip:
        name = self.names[i]
        try:
            x, info = read_for_model(self.root / name, self.channels)
        except (AudioError, OSError, RuntimeError) as e:
            return Clip(name, error=str(e))
        return Clip(name, x, info.sample_rate, info.channels, int(info.num_frames or 0))


def list_audio(root: str | Path) -> list[str]:
    """Audio files below ``root``, as sorted relative POSIX paths."""
    root = Path(root)
    if not root.is_dir():
        raise AudioError(f"{root}: not a directory")
    names = sorted(f.relative_to(root).as_posix() for f in audio_io.find_audio(root))
    if not names:
        raise AudioError(f"{root}: no audio files below this directory")
    return names


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.safetensors"


def read_shard(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors as numpy arrays, metadata) of a shard; see the module docstring."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        keys = list(f.keys())
        return {k: f.get_tensor(k) for k in keys}, dict(f.metadata() or {})


def file_codes(tensors: dict[str, np.ndarray], i: int) -> np.ndarray:
    """Codes of the shard's file ``i`` in our layout, [levels, frames] int64."""
    a, b = tensors["offsets"][i], tensors["offsets"][i + 1]
    return tensors["codes"][a:b].T.astype(np.int64)


def _check_finished(path: Path, names: list[str], codec: Codec, levels: int) -> list[list[str]]:
    """Failures recorded in a finished shard, after checking it belongs to this run."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
        done = json.loads(meta["names"])
        failed = json.loads(meta["failed"])
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise TokenizeError(f"{path}: not a readable token shard ({e}); delete it to redo") from e
    problems = []
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        problems.append("another format")
    if meta.get("model_id") != codec.model_id:
        problems.append(f"model {meta.get('model_id')}, not {codec.model_id}")
    if meta.get("levels") != str(levels):
        problems.append(f"{meta.get('levels')} levels, not {levels}")
    if sorted(done + [name for name, _ in failed]) != sorted(names):
        problems.append("other files (files added or removed below the input, or --shard-files)")
    if problems:
        raise TokenizeError(
            f"{path} was made by another run ({'; '.join(problems)}); use a new output folder"
        )
    return failed


def _check_split(out: Path, count: int) -> None:
    """Shards of another split (another ``--shard-files``, or files added or removed) would
    sit beside this run's under other names: refused, like another model or levels."""
    for p in sorted(out.glob("shard-*-of-*.safetensors")):
        if p.name.rsplit("-of-", 1)[1] != f"{count:05d}.safetensors":
            n = p.name.rsplit("-of-", 1)[1].split(".")[0]
            raise TokenizeError(
                f"{p} was made by another run ({n.lstrip('0') or '0'} shards, not {count}: "
                "another --shard-files, or files added or removed); use a new output folder"
            )


def _write_shard(path: Path, clips: list[Clip], codes: list[np.ndarray], meta: dict) -> None:
    """Atomic (:func:`atomic_path`), its temporary file tagged with the shard's name."""
    from safetensors.numpy import save_file

    levels = int(meta["levels"])
    frames = np.cumsum([0] + [c.shape[1] for c in codes])
    joined = [c.T for c in codes] or [np.zeros((0, levels), np.int16)]
    tensors = {
        "codes": np.ascontiguousarray(np.concatenate(joined).astype(np.int16)),
        "offsets": frames.astype(np.int64),
        "num_samples": np.array([c.num_samples for c in clips], np.int64),
        "sample_rate": np.array([c.sample_rate for c in clips], np.int64),
        "channels": np.array([c.channels for c in clips], np.int64),
    }
    meta = {**meta, "names": json.dumps([c.name for c in clips])}
    with atomic_path(path, tag=f"{path.name}.") as tmp:
        save_file(tensors, tmp, metadata=meta)


def _remove_stale(path: Path) -> None:
    """Temporary files of an earlier, killed attempt at this shard (only its owner writes it)."""
    for tmp in path.parent.glob(f"{TEMP_PREFIX}{path.name}.*"):
        tmp.unlink(missing_ok=True)


def _identity(clip: Clip) -> Clip:
    return clip


def _code_shard(
    codec: Codec,
    clips_in: Iterator[Clip],
    levels: int,
    batch: int,
    on_file: Callable[[Clip], None],
) -> tuple[list[Clip], list[np.ndarray], list[list[str]]]:
    """Codes a shard's clips ``batch`` at a time -> (coded clips, their codes, failures)."""
    done: list[Clip] = []
    codes: list[np.ndarray] = []
    failed: list[list[str]] = []
    while clips := list(itertools.islice(clips_in, batch)):
        good = [c for c in clips if c.error is None]
        failed += [[c.name, c.error] for c in clips if c.error is not None]
        codes += codec.encode_clips([c.audio for c in good], levels, batch_size=batch)
        for c in clips:
            on_file(c)
            c.audio = None  # the codes are all we keep
        done += good
    return done, codes, failed


def _metadata(codec: Codec, levels: int) -> dict[str, str]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_id": codec.model_id,
        "levels": str(levels),
        "codebook_size": str(codec.config.codebook_size),
        "frame_rate": str(codec.frame_rate),
        "samples_per_frame": str(SAMPLES_PER_CODE),
        "lookahead_frames": "1",
        "dtype": "int8" if codec.int8 else dtype_name(codec.dtype),  # int8 convs: their own codes
    }


def _plan(
    root: Path, out: Path, shard_files: int, rank: int, world: int
) -> tuple[list[list[str]], dict[int, Path]]:
    """(every shard's file names, this rank's shard paths); refuses another run's split and
    creates the output folder."""
    if out.exists() and not out.is_dir():
        raise TokenizeError(f"{out}: exists and is not a folder; -o names a folder for the shards")
    names = list_audio(root)
    plan = [names[i : i + shard_files] for i in range(0, len(names), shard_files)]
    if out.is_dir():
        _check_split(out, len(plan))
    paths = {k: out / shard_name(k, len(plan)) for k in range(rank, len(plan), world)}
    out.mkdir(parents=True, exist_ok=True)
    return plan, paths


def _skip_finished(
    plan: list[list[str]], paths: dict[int, Path], codec: Codec, levels: int, report: Report
) -> list[int]:
    """Counts (and checks) the shards already written; returns the ones still to do."""
    for k, path in paths.items():
        if path.exists():
            report.failed += [tuple(f) for f in _check_finished(path, plan[k], codec, levels)]
            report.shards_skipped += 1
    return [k for k, path in paths.items() if not path.exists()]


def _clips(root: Path, names: list[str], channels: int, workers: int) -> Iterator[Clip]:
    """The files decoded in order on ``workers`` processes. One loader for all pending shards:
    workers decode ahead across shard boundaries, and at most batch + 2 * workers decoded
    files are held at a time."""
    loader = DataLoader(
        _Files(root, names, channels),
        batch_size=None,
        collate_fn=_identity,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
    )
    return iter(loader)


def _counter(report: Report, bar) -> Callable[[Clip], None]:
    """Per-file callback: adds a coded file to the report and moves the progress bar."""

    def on_file(clip: Clip) -> None:
        if clip.error is None:  # a failure is counted in report.failed, not as coded
            report.files += 1
        report.audio_seconds += clip.num_samples / clip.sample_rate if clip.sample_rate else 0.0
        bar.set_postfix_str(f"{report.audio_seconds / 3600:.2f} h of audio", refresh=False)
        bar.update(1)

    return on_file


def tokenize(
    codec: Codec,
    root: str | Path,
    out: str | Path,
    levels: int,
    batch: int = 16,
    workers: int = 4,
    shard_files: int = SHARD_FILES,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> Report:
    """Code every audio file below ``root`` into shards in ``out``; returns what was done.

    Unreadable files are recorded (in the shard's ``failed`` list and the report), not fatal.
    """
    from tqdm import tqdm

    if batch < 1 or shard_files < 1 or workers < 0:
        raise TokenizeError("--batch and --shard-files must be >= 1, --workers >= 0")
    root = Path(root)
    plan, paths = _plan(root, Path(out), shard_files, rank, world)
    report = Report()
    todo = _skip_finished(plan, paths, codec, levels, report)
    clips_in = _clips(root, [name for k in todo for name in plan[k]], codec.channels, workers)
    bar = tqdm(total=sum(len(plan[k]) for k in todo), unit="file", disable=not progress or None)
    on_file = _counter(report, bar)
    meta = _metadata(codec, levels)
    with bar:
        for k in todo:
            shard = itertools.islice(clips_in, len(plan[k]))
            clips, codes, failed = _code_shard(codec, shard, levels, batch, on_file)
            _remove_stale(paths[k])
            _write_shard(paths[k], clips, codes, {**meta, "failed": json.dumps(failed)})
            report.failed += [tuple(f) for f in failed]
            report.shards_written += 1
    return report
