"""A compact, varied Ogg Vorbis subset of the corpus, sized for the GPU machine.

    corpus manifest -> excerpts (10-20 s, one per track before any track gets a second,
    packages interleaved) -> 48 kHz stereo Ogg Vorbis at the highest quality whose total
    (audio + manifests + licences) fits --max-mib -> OUT/{train,valid}/*.ogg, OUT/manifest.*

The quality is first estimated on a sample of excerpts, then every excerpt is encoded in
memory and the real total is checked; if it is over the cap the quality is lowered and the
encode repeated. The folder on disk is measured once more after writing.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spectrostream import audio_io
from spectrostream.data.debian import SAMPLE_RATE, TrackRecord, load_manifest
from spectrostream.errors import DataError, UsageError

PACK_VERSION = 1
MIB = 2**20
QUALITY_GRID = 0.01  # the quality is chosen on this grid from the sample estimate
RETRY_STEP = 0.02  # and lowered by this much when the real total is over the cap
SILENCE_DBFS = -45.0  # excerpts quieter than this are re-drawn (up to SILENCE_TRIES times)
SILENCE_TRIES = 4
SIZE_MARGIN = 0.97  # aim the estimate below the cap; the real total is checked anyway
HOPELESS = 1.25  # give up before encoding when the lowest quality's estimate is this far over
# libvorbis (through libsndfile) low-passes 48 kHz stereo at 16 kHz at quality 0 and at 17 kHz
# at 0.1-0.2; from 0.3 (about 110 kbps on music) it keeps the band to 20 kHz. A model trained on
# low-passed data learns to output nothing above the cut (the first GPU rounds did), so the
# pack never goes below this unless asked (docs/training.md, "Round 9").
FULL_BAND_QUALITY = 0.3


@dataclass(frozen=True)
class PackOptions:
    minutes: float = 60.0
    valid_minutes: float = 3.0
    max_mib: float = 48.0
    min_excerpt_s: float = 10.0
    max_excerpt_s: float = 20.0
    seed: int = 0
    max_quality: float = 1.0  # libvorbis VBR quality, 0 (~64 kbps) .. 1 (~400 kbps)
    min_quality: float = FULL_BAND_QUALITY  # lower qualities cut the band (see above)
    sample_excerpts: int = 12  # encoded at several qualities to estimate the total size

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.valid_minutes < 0:
            raise UsageError("--minutes must be > 0 and --valid-minutes >= 0")
        if self.max_mib <= 0:
            raise UsageError("--max-mib must be > 0")
        if not 0.0 <= self.min_quality <= self.max_quality <= 1.0:
            raise UsageError("need 0 <= --min-quality <= max quality <= 1")
        if self.sample_excerpts < 1:
            raise UsageError("sample_excerpts must be >= 1")
        if not 0 < self.min_excerpt_s <= self.max_excerpt_s:
            raise UsageError("need 0 < --min-excerpt <= --max-excerpt")


@dataclass(frozen=True)
class Excerpt:
    """`start_frame`/`frames` index the corpus FLAC at 48 kHz."""

    track: TrackRecord
    split: str
    start_frame: int
    frames: int


@dataclass(frozen=True)
class PackResult:
    train_excerpts: int
    train_tracks: int
    train_seconds: float
    valid_excerpts: int
    valid_seconds: float
    quality: float
    total_bytes: int


def interleave_by_package(tracks: Sequence[TrackRecord], rng: random.Random) -> list[TrackRecord]:
    """Tracks shuffled within each package, then taken round-robin across packages."""
    groups: dict[str, list[TrackRecord]] = defaultdict(list)
    for track in sorted(tracks, key=lambda t: t.track_id):
        groups[track.package].append(track)
    names = sorted(groups)
    rng.shuffle(names)
    for name in names:
        rng.shuffle(groups[name])
    order = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        order.extend(groups[name][i] for name in names if i < len(groups[name]))
    return order


def plan_excerpts(
    tracks: Sequence[TrackRecord],
    split: str,
    total_s: float,
    options: PackOptions,
    rng: random.Random,
) -> list[Excerpt]:
    """Excerpts summing to about `total_s` seconds from as many different tracks as possible.

    Excerpt length is total_s / n_tracks clamped to [min_excerpt_s, max_excerpt_s]; a track
    gets a second excerpt only after every track has one. A track's excerpts come from
    disjoint equal parts of it, at random offsets.
    """
    if total_s <= 0 or not tracks:
        return []
    length_s = min(max(total_s / len(tracks), options.min_excerpt_s), options.max_excerpt_s)
    count = max(1, round(total_s / length_s))
    order = interleave_by_package(tracks, rng)
    per_track: dict[str, int] = defaultdict(int)
    for i in range(count):
        per_track[order[i % len(order)].track_id] += 1
    excerpts = []
    for track in order:
        wanted = per_track.get(track.track_id, 0)
        if wanted == 0:
            continue
        track_frames = int(track.duration_s * SAMPLE_RATE)
        frames = min(int(length_s * SAMPLE_RATE), track_frames)
        parts = max(1, min(wanted, track_frames // frames))
        part_frames = track_frames // parts
        for p in range(parts):
            slack = max(0, part_frames - frames)
            start = p * part_frames + rng.randint(0, slack)
            excerpts.append(Excerpt(track=track, split=split, start_frame=start, frames=frames))
    return excerpts


def read_excerpt(corpus_dir: Path, excerpt: Excerpt) -> np.ndarray:
    """float32 [2, frames] from the corpus FLAC (16-bit, so exactly k / 32768)."""
    audio, rate = audio_io.read_audio(
        corpus_dir / excerpt.track.file,
        start_frame=excerpt.start_frame,
        num_frames=excerpt.frames,
    )
    if rate != SAMPLE_RATE or audio.shape[0] != 2:
        raise DataError(
            f"{excerpt.track.file}: expected 48 kHz stereo, got {rate} Hz x{audio.shape[0]}"
        )
    return audio


def _dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    return 20.0 * np.log10(max(rms, 1e-10))


def avoid_silence(corpus_dir: Path, excerpt: Excerpt, rng: random.Random) -> Excerpt:
    """Re-draw the start of a (near-)silent excerpt anywhere in its track; keep the loudest."""
    best, best_db = excerpt, _dbfs(read_excerpt(corpus_dir, excerpt))
    track_frames = int(excerpt.track.duration_s * SAMPLE_RATE)
    for _ in range(SILENCE_TRIES):
        if best_db >= SILENCE_DBFS:
            break
        start = rng.randint(0, max(0, track_frames - excerpt.frames))
        trial = Excerpt(excerpt.track, excerpt.split, start, excerpt.frames)
        trial_db = _dbfs(read_excerpt(corpus_dir, trial))
        if trial_db > best_db:
            best, best_db = trial, trial_db
    return best


def encode_vorbis(audio: np.ndarray, quality: float) -> bytes:
    """float [2, T] -> Ogg Vorbis bytes. libsndfile's compression level is 1 - quality."""
    level = min(1.0, max(0.0, 1.0 - quality))
    return audio_io.encode_audio(audio, SAMPLE_RATE, ".ogg", compression_level=level)


def choose_quality(
    corpus_dir: Path, excerpts: Sequence[Excerpt], budget_bytes: float, options: PackOptions
) -> float:
    """Highest quality on a QUALITY_GRID grid whose estimated total fits the budget.

    The estimate scales the size of `options.sample_excerpts` encoded excerpts to all of them; the size
    grows with the quality, so the grid is bisected (about 9 sample encodes).
    """
    n = options.sample_excerpts
    sample = excerpts[:: max(1, len(excerpts) // n)][:n]
    audio = [read_excerpt(corpus_dir, e) for e in sample]
    scale = sum(e.frames for e in excerpts) / sum(a.shape[1] for a in audio)

    def estimate(q: float) -> float:
        return scale * sum(len(encode_vorbis(a, q)) for a in audio)

    lo = round(options.min_quality / QUALITY_GRID)
    lowest = estimate(lo * QUALITY_GRID)
    if lowest > budget_bytes * HOPELESS:
        raise DataError(
            f"about {lowest / MIB:.1f} MiB of audio at the lowest Vorbis quality allowed "
            f"({options.min_quality:.2f}), but only {budget_bytes / MIB:.1f} MiB left under "
            f"--max-mib {options.max_mib}: lower --minutes"
        )
    target = budget_bytes * SIZE_MARGIN
    steps = round(options.max_quality / QUALITY_GRID)
    if estimate(steps * QUALITY_GRID) <= target:
        return round(steps * QUALITY_GRID, 4)
    if lowest > target:
        return round(lo * QUALITY_GRID, 4)
    hi = steps  # lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if estimate(mid * QUALITY_GRID) <= target:
            lo = mid
        else:
            hi = mid
    return round(lo * QUALITY_GRID, 4)


def _tsv_row(values: Sequence[object]) -> str:
    return "\t".join(str(v) for v in values) + "\n"


TSV_COLUMNS = (
    "file",
    "split",
    "track_id",
    "package",
    "package_version",
    "source_path",
    "start_s",
    "duration_s",
    "licence",
)


def _excerpt_name(index: int, excerpt: Excerpt) -> str:
    stem = Path(excerpt.track.file).stem
    start_s = excerpt.start_frame // SAMPLE_RATE
    return f"{excerpt.split}/{index:04d}_{excerpt.track.package}_{stem}_{start_s}s.ogg"


def _excerpt_row(name: str, e: Excerpt) -> dict[str, object]:
    t = e.track
    return {
        "file": name,
        "split": e.split,
        "track_id": t.track_id,
        "package": t.package,
        "package_version": t.package_version,
        "source_path": t.source_path,
        "start_s": round(e.start_frame / SAMPLE_RATE, 3),
        "duration_s": round(e.frames / SAMPLE_RATE, 3),
        "licence": t.licence,
    }


def _package_summary(excerpts: Sequence[Excerpt]) -> dict[str, dict]:
    """Per source package: version, licences, excerpt count, seconds, copyright file."""
    packages: dict[str, dict] = {}
    for e in excerpts:
        t = e.track
        info = packages.setdefault(
            t.package,
            {
                "package_version": t.package_version,
                "licences": set(),
                "excerpts": 0,
                "seconds": 0.0,
                "copyright_file": f"licences/{t.package}.copyright",
            },
        )
        info["licences"].add(t.licence)
        info["excerpts"] += 1
        info["seconds"] += e.frames / SAMPLE_RATE
    for info in packages.values():
        info["licences"] = sorted(info["licences"])
        info["seconds"] = round(info["seconds"], 3)
    return dict(sorted(packages.items()))


def _manifests(
    excerpts: Sequence[Excerpt],
    names: Sequence[str],
    quality: float,
    options: PackOptions,
    corpus_dir: Path,
) -> tuple[str, str]:
    """(TSV manifest, JSON manifest) of the pack."""
    entries = [_excerpt_row(n, e) for n, e in zip(names, excerpts, strict=True)]
    rows = [_tsv_row(TSV_COLUMNS)] + [_tsv_row(r[c] for c in TSV_COLUMNS) for r in entries]
    doc = {
        "version": PACK_VERSION,
        "sample_rate": SAMPLE_RATE,
        "channels": 2,
        "format": "OGG VORBIS",
        "vorbis_quality": quality,
        "options": asdict(options),
        "source": "Debian game-music corpus (spectrostream data debian), " + corpus_dir.name,
        "packages": _package_summary(excerpts),
        "excerpts": entries,
    }
    return "".join(rows), json.dumps(doc, indent=1) + "\n"


def _check_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise DataError(f"{out_dir} is not empty (pass --overwrite to replace a pack there)")
        if not (out_dir / "manifest.json").is_file():
            raise DataError(f"{out_dir} is not empty and holds no pack manifest; not touching it")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _copy_licences(corpus_dir: Path, staging: Path, excerpts: Sequence[Excerpt]) -> None:
    (staging / "licences").mkdir()
    for package in sorted({e.track.package for e in excerpts}):
        source = corpus_dir / "licences" / f"{package}.copyright"
        if not source.is_file():
            raise DataError(f"{source} is missing: the pack must carry each package's licence")
        shutil.copyfile(source, staging / "licences" / f"{package}.copyright")


def _encode_within(
    corpus_dir: Path,
    excerpts: Sequence[Excerpt],
    budget: int,
    fixed: int,
    options: PackOptions,
    progress: bool,
) -> tuple[float, list[bytes]]:
    """Vorbis-encode every excerpt at the highest quality whose total fits ``budget``."""
    quality = choose_quality(corpus_dir, excerpts, budget - fixed, options)
    while True:
        encoded = [
            encode_vorbis(read_excerpt(corpus_dir, e), quality)
            for e in tqdm(
                excerpts, desc=f"vorbis q={quality:.2f}", unit="excerpt", disable=not progress
            )
        ]
        total = fixed + sum(len(b) for b in encoded)
        if total <= budget:
            return quality, encoded
        if quality <= options.min_quality:
            raise DataError(
                f"{total / MIB:.1f} MiB at the lowest Vorbis quality allowed "
                f"({options.min_quality:.2f}) exceeds --max-mib {options.max_mib}: lower --minutes"
            )
        quality = max(options.min_quality, round(quality - RETRY_STEP, 4))


def _write_staging(
    corpus_dir: Path,
    staging: Path,
    excerpts: Sequence[Excerpt],
    names: Sequence[str],
    options: PackOptions,
    progress: bool,
) -> tuple[float, int]:
    """Licences, excerpts and manifests into `staging`; returns (quality, total bytes)."""
    _copy_licences(corpus_dir, staging, excerpts)
    budget = options.max_mib * MIB
    # The manifests' size barely depends on the quality; measure it with a placeholder.
    tsv, doc = _manifests(excerpts, names, 0.0, options, corpus_dir)
    fixed = folder_bytes(staging) + len(tsv.encode()) + len(doc.encode()) + 64
    quality, encoded = _encode_within(corpus_dir, excerpts, budget, fixed, options, progress)
    for name, data in zip(names, encoded, strict=True):
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    tsv, doc = _manifests(excerpts, names, quality, options, corpus_dir)
    (staging / "manifest.tsv").write_text(tsv, encoding="utf-8")
    (staging / "manifest.json").write_text(doc, encoding="utf-8")
    total_bytes = folder_bytes(staging)
    if total_bytes > budget:
        raise DataError(
            f"the pack is {total_bytes / MIB:.2f} MiB, over --max-mib {options.max_mib}"
        )
    return quality, total_bytes


def _choose_excerpts(
    corpus_dir: Path, tracks: Sequence[TrackRecord], options: PackOptions, progress: bool
) -> list[Excerpt]:
    """Seeded excerpt plan over the train and valid tracks, moved off silence."""
    train = [t for t in tracks if t.split == "train"]
    valid = [t for t in tracks if t.split == "valid"]
    if not train:
        raise DataError(f"{corpus_dir}: the corpus has no train tracks")
    seed_bytes = hashlib.sha256(f"pack:{options.seed}".encode()).digest()
    rng = random.Random(int.from_bytes(seed_bytes[:8], "big"))
    planned = plan_excerpts(train, "train", options.minutes * 60, options, rng)
    planned += plan_excerpts(valid, "valid", options.valid_minutes * 60, options, rng)
    return [
        avoid_silence(corpus_dir, e, rng)
        for e in tqdm(planned, desc="checking excerpts", unit="excerpt", disable=not progress)
    ]


def write_pack(
    corpus_dir: Path,
    out_dir: Path,
    options: PackOptions,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> PackResult:
    tracks = load_manifest(corpus_dir)
    _check_output(out_dir, overwrite)
    excerpts = _choose_excerpts(corpus_dir, tracks, options, progress)
    names = [_excerpt_name(i, e) for i, e in enumerate(excerpts)]

    # Build in a staging folder and move it into place at the end: a failed or interrupted
    # run never leaves a half-written pack, and a reader never sees one.
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        quality, total_bytes = _write_staging(
            corpus_dir, staging, excerpts, names, options, progress
        )
        _check_output(out_dir, overwrite)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

    train_ex = [e for e in excerpts if e.split == "train"]
    valid_ex = [e for e in excerpts if e.split == "valid"]
    return PackResult(
        train_excerpts=len(train_ex),
        train_tracks=len({e.track.track_id for e in train_ex}),
        train_seconds=sum(e.frames for e in train_ex) / SAMPLE_RATE,
        valid_excerpts=len(valid_ex),
        valid_seconds=sum(e.frames for e in valid_ex) / SAMPLE_RATE,
        quality=quality,
        total_bytes=total_bytes,
    )
