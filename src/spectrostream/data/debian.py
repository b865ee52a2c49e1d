"""Training corpus from Debian's game-music packages.

Pipeline, one package at a time:
    apt-get download PKG  ->  dpkg-deb -x  ->  scan for audio (also inside *.pk3 / *.zip)
    ->  drop tracks under 30 s and duplicates  ->  48 kHz stereo (audio_io)  ->  16-bit FLAC
    ->  DIR/{train,valid}/PKG/*.flac  +  DIR/packages/PKG.json  ->  DIR/manifest.{tsv,json}

The apt-get / dpkg step (`download_package`, `extract_package`) is separate from the audio
step (`process_package`), so tests and offline users can hand in an extracted tree.
Each package's result is written to DIR/packages/PKG.json; the top-level manifest is rebuilt
from all of them, so the corpus can be extended one package at a time.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spectrostream import audio_io
from spectrostream.audio_io import AudioError
from spectrostream.errors import DataError

SAMPLE_RATE = 48_000
MIN_DURATION_S = 30.0
VALID_PERCENT = 5.0
MANIFEST_VERSION = 1

# Ordered by value per megabyte; supertuxkart-data (628 MB for 56 minutes) comes last.
DEFAULT_PACKAGES: tuple[str, ...] = (
    "ufoai-music",
    "planetblupi-music-ogg",
    "wesnoth-1.16-music",
    "widelands-data",
    "hedgewars-data",
    "supertux-data",
    "freedroidrpg-data",
    "drascula-music",
    "megaglest-data",
    "supertuxkart-data",
)
# Already 47 kbps Opus: a lossy, band-limited source we do not want to learn from.
SKIPPED_PACKAGES: frozenset[str] = frozenset({"warzone2100-music"})

AUDIO_SUFFIXES = (".ogg", ".oga", ".flac", ".wav", ".mp3")
ARCHIVE_SUFFIXES = (".pk3", ".zip")
ARCHIVE_SEPARATOR = "!/"

# Copyright files that are not machine-readable (DEP-5), read by hand. Each entry quotes
# the sentence it is based on.
MANUAL_LICENCES: dict[str, str] = {
    # "GNU General Public License version 2 or at your option any later version"
    "wesnoth-1.16-music": "GPL-2+",
}


# ---------------------------------------------------------------------------------------------
# Debian step: download and extract


@dataclass(frozen=True)
class ExtractedPackage:
    """An unpacked .deb: `root` holds the package's file system tree (usr/...)."""

    name: str
    version: str
    root: Path


def download_package(name: str, workdir: Path) -> Path:
    """`apt-get download NAME` into `workdir`; an existing NAME_*.deb there is reused."""
    workdir.mkdir(parents=True, exist_ok=True)
    existing = sorted(workdir.glob(f"{name}_*.deb"))
    if existing:
        return existing[-1]
    if shutil.which("apt-get") is None:
        raise DataError(
            "apt-get is not available: run on Debian/Ubuntu, or put the .deb files in the "
            f"work directory ({workdir}) yourself"
        )
    proc = subprocess.run(
        ["apt-get", "download", "-q", name],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    found = sorted(workdir.glob(f"{name}_*.deb"))
    if proc.returncode != 0 or not found:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DataError(
            f"apt-get download {name} failed: {detail[-1] if detail else proc.returncode}"
        )
    return found[-1]


def extract_package(deb: Path, dest: Path) -> ExtractedPackage:
    """`dpkg-deb -x DEB DEST`; the package name and version come from the control file."""
    if shutil.which("dpkg-deb") is None:
        raise DataError("dpkg-deb is not available (Debian's dpkg package provides it)")
    fields = {}
    for key in ("Package", "Version"):
        proc = subprocess.run(
            ["dpkg-deb", "-f", str(deb), key], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise DataError(f"dpkg-deb -f {deb} failed: {proc.stderr.strip()}")
        fields[key] = proc.stdout.strip()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    proc = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise DataError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()}")
    return ExtractedPackage(name=fields["Package"], version=fields["Version"], root=dest)


# ---------------------------------------------------------------------------------------------
# Licences from usr/share/doc/PKG/copyright


@dataclass(frozen=True)
class FilesStanza:
    patterns: tuple[str, ...]
    licence: str


@dataclass(frozen=True)
class CopyrightInfo:
    """A parsed copyright file. `stanzas` is empty when the file is not DEP-5."""

    package: str
    stanzas: tuple[FilesStanza, ...]
    machine_readable: bool

    def licence_for(self, path: str) -> str:
        """Licence short name for an installed path (DEP-5: the last matching stanza wins).

        Stanza patterns are source-tree paths and installed paths carry a prefix
        (usr/share/games/...), so a pattern matches when it matches any tail of the path.
        """
        if not self.machine_readable:
            if self.package in MANUAL_LICENCES:
                return MANUAL_LICENCES[self.package]
            return f"unknown (see licences/{self.package}.copyright)"
        parts = path.split("/")
        tails = ["/".join(parts[i:]) for i in range(len(parts))]
        chosen = f"unknown (see licences/{self.package}.copyright)"
        for stanza in self.stanzas:
            if any(fnmatch.fnmatchcase(t, p) for p in stanza.patterns for t in tails):
                chosen = stanza.licence
        return chosen


def _paragraphs(text: str) -> list[dict[str, str]]:
    """RFC-822-style paragraphs; continuation lines are joined with newlines."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key is not None:
            current[key] += "\n" + line.strip()
        else:
            match = re.match(r"([A-Za-z][A-Za-z0-9-]*):\s?(.*)$", line)
            if match is None:
                key = None
                continue
            key = match.group(1).lower()
            current[key] = match.group(2).strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def parse_copyright(package: str, text: str) -> CopyrightInfo:
    paragraphs = _paragraphs(text)
    machine_readable = bool(paragraphs) and "copyright-format" in paragraphs[0].get("format", "")
    stanzas = []
    if machine_readable:
        for para in paragraphs:
            if "files" in para and "license" in para:
                patterns = tuple(para["files"].split())
                licence = para["license"].split("\n", 1)[0].strip()
                if patterns and licence:
                    stanzas.append(FilesStanza(patterns=patterns, licence=licence))
    return CopyrightInfo(package=package, stanzas=tuple(stanzas), machine_readable=machine_readable)


def read_copyright(package: ExtractedPackage) -> tuple[CopyrightInfo, Path]:
    path = package.root / "usr" / "share" / "doc" / package.name / "copyright"
    if not path.is_file():
        raise DataError(f"{package.name}: no copyright file at {path}")
    return parse_copyright(package.name, path.read_text(encoding="utf-8", errors="replace")), path


# ---------------------------------------------------------------------------------------------
# Finding and decoding audio


@dataclass(frozen=True)
class AudioCandidate:
    """One audio file in a package tree, possibly a member of a zip archive.

    `source_path`: relative to the package root; a zip member is "dir/a.pk3!/music/x.ogg".
    `licence_path`: the path used for copyright matching; zip members are re-rooted at the
    archive's folder ("dir/music/x.ogg"), as games mount *.pk3 files at that folder.
    """

    source_path: str
    licence_path: str


def _is_audio(name: str) -> bool:
    return name.lower().endswith(AUDIO_SUFFIXES)


def scan_audio(root: Path) -> list[AudioCandidate]:
    """All audio files under `root`, including members of *.pk3 / *.zip, sorted by path."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if _is_audio(rel):
            found.append(AudioCandidate(source_path=rel, licence_path=rel))
        elif rel.lower().endswith(ARCHIVE_SUFFIXES) and zipfile.is_zipfile(path):
            folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
            with zipfile.ZipFile(path) as archive:
                members = sorted(
                    i.filename
                    for i in archive.infolist()
                    if not i.is_dir() and _is_audio(i.filename)
                )
            for member in members:
                found.append(
                    AudioCandidate(
                        source_path=f"{rel}{ARCHIVE_SEPARATOR}{member}",
                        licence_path=f"{folder}/{member}" if folder else member,
                    )
                )
    return found


def read_candidate(root: Path, candidate: AudioCandidate) -> bytes:
    if ARCHIVE_SEPARATOR in candidate.source_path:
        archive_path, member = candidate.source_path.split(ARCHIVE_SEPARATOR, 1)
        with zipfile.ZipFile(root / archive_path) as archive:
            return archive.read(member)
    return (root / candidate.source_path).read_bytes()


def to_stereo_48k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """[C, T] float audio (C = 1 or 2) -> float32 [2, T'] at 48 kHz. Mono becomes dual mono."""
    if audio.ndim != 2:
        raise DataError(f"expected mono or stereo audio [C, T], got shape {audio.shape}")
    try:
        stereo = audio_io.to_channels(audio, 2, name="track")
    except AudioError as error:
        raise DataError(str(error)) from None
    return audio_io.resample(stereo, sample_rate, SAMPLE_RATE)


def split_for(track_id: str, valid_percent: float = VALID_PERCENT) -> str:
    """Deterministic train/valid split by track: a hash of the track id, never of a crop."""
    bucket = int.from_bytes(hashlib.sha1(track_id.encode("utf-8")).digest()[:8], "big") % 10_000
    return "valid" if bucket < valid_percent * 100 else "train"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "track"


# ---------------------------------------------------------------------------------------------
# One package -> tracks


@dataclass(frozen=True)
class TrackRecord:
    """One corpus track. `file` is relative to the corpus directory."""

    track_id: str
    split: str
    file: str
    package: str
    package_version: str
    source_path: str
    duration_s: float
    source_sample_rate: int
    source_channels: int
    licence: str
    audio_sha256: str


TSV_COLUMNS = tuple(TrackRecord.__dataclass_fields__)


@dataclass(frozen=True)
class PackageReport:
    package: str
    version: str
    licences: tuple[str, ...]
    tracks: tuple[TrackRecord, ...]
    duplicates: tuple[tuple[str, str], ...] = ()  # (source_path, track_id it duplicates)
    too_short: tuple[tuple[str, float], ...] = ()  # (source_path, duration_s)
    failed: tuple[tuple[str, str], ...] = ()  # (source_path, error)
    candidates: int = 0
    seconds: float = field(default=0.0)

    def to_json(self) -> dict:
        return {
            "version": MANIFEST_VERSION,
            "package": self.package,
            "package_version": self.version,
            "licences": list(self.licences),
            "candidates": self.candidates,
            "seconds": self.seconds,
            "tracks": [asdict(t) for t in self.tracks],
            "duplicates": [list(d) for d in self.duplicates],
            "too_short": [list(s) for s in self.too_short],
            "failed": [list(f) for f in self.failed],
        }

    @classmethod
    def from_json(cls, data: dict) -> PackageReport:
        if data.get("version") != MANIFEST_VERSION:
            raise DataError(f"unsupported package report version {data.get('version')}")
        return cls(
            package=data["package"],
            version=data["package_version"],
            licences=tuple(data["licences"]),
            tracks=tuple(TrackRecord(**t) for t in data["tracks"]),
            duplicates=tuple((a, b) for a, b in data["duplicates"]),
            too_short=tuple((a, float(b)) for a, b in data["too_short"]),
            failed=tuple((a, b) for a, b in data["failed"]),
            candidates=int(data["candidates"]),
            seconds=float(data["seconds"]),
        )


_DECODE_ERRORS = (
    DataError,
    zipfile.BadZipFile,
    ValueError,
    RuntimeError,
)


def process_package(
    package: ExtractedPackage,
    out_dir: Path,
    seen_hashes: dict[str, str],
    *,
    min_duration_s: float = MIN_DURATION_S,
    valid_percent: float = VALID_PERCENT,
    progress: bool = True,
) -> PackageReport:
    """Turn one extracted package into FLAC tracks under out_dir/{train,valid}/PKG/.

    `seen_hashes` maps file-byte and decoded-audio hashes to the track id that owns them; it
    is updated in place so duplicates across packages are dropped too. The report is also
    written to out_dir/packages/PKG.json and the package's copyright file to
    out_dir/licences/PKG.copyright.
    """
    copyright_info, copyright_path = read_copyright(package)
    candidates = scan_audio(package.root)
    tracks: list[TrackRecord] = []
    duplicates: list[tuple[str, str]] = []
    too_short: list[tuple[str, float]] = []
    failed: list[tuple[str, str]] = []
    bar = tqdm(candidates, desc=package.name, unit="file", disable=not progress, mininterval=2.0)
    for candidate in bar:
        track_id = f"{package.name}/{candidate.source_path}"
        try:
            data = read_candidate(package.root, candidate)
            byte_hash = "bytes:" + hashlib.sha256(data).hexdigest()
            if byte_hash in seen_hashes:
                duplicates.append((candidate.source_path, seen_hashes[byte_hash]))
                continue
            audio, rate = audio_io.read_audio(data)
            duration_s = audio.shape[1] / rate
            if duration_s < min_duration_s:
                too_short.append((candidate.source_path, round(duration_s, 3)))
                continue
            audio_hash = hashlib.sha256(np.ascontiguousarray(audio).tobytes()).hexdigest()
            if "audio:" + audio_hash in seen_hashes:
                seen_hashes[byte_hash] = seen_hashes["audio:" + audio_hash]
                duplicates.append((candidate.source_path, seen_hashes[byte_hash]))
                continue
            stereo = to_stereo_48k(audio, rate)
        except _DECODE_ERRORS as err:
            failed.append((candidate.source_path, f"{type(err).__name__}: {err}"))
            continue
        split = split_for(track_id, valid_percent)
        stem = _safe_name(Path(candidate.source_path.replace(ARCHIVE_SEPARATOR, "/")).stem)
        digest = hashlib.sha1(track_id.encode("utf-8")).hexdigest()[:8]
        rel_file = f"{split}/{package.name}/{stem}-{digest}.flac"
        target = out_dir / rel_file
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside and rename: a reader (e.g. `data pack`) never sees a half-written file.
        # 16-bit: clipped (resampler overshoot) and rounded, never wrapped (see audio_io).
        partial = target.with_name(f"{target.stem}.partial{target.suffix}")
        audio_io.write_audio(partial, stereo, SAMPLE_RATE, subtype="PCM_16")
        os.replace(partial, target)
        seen_hashes[byte_hash] = track_id
        seen_hashes["audio:" + audio_hash] = track_id
        tracks.append(
            TrackRecord(
                track_id=track_id,
                split=split,
                file=rel_file,
                package=package.name,
                package_version=package.version,
                source_path=candidate.source_path,
                duration_s=round(stereo.shape[1] / SAMPLE_RATE, 3),
                source_sample_rate=rate,
                source_channels=int(audio.shape[0]),
                licence=copyright_info.licence_for(candidate.licence_path),
                audio_sha256=audio_hash,
            )
        )
    bar.close()
    written = {out_dir / t.file for t in tracks}
    for split in ("train", "valid"):  # files of an earlier build that this one did not make
        folder = out_dir / split / package.name
        if folder.is_dir():
            for stale in folder.iterdir():
                if stale not in written:
                    stale.unlink()
    report = PackageReport(
        package=package.name,
        version=package.version,
        licences=tuple(sorted({t.licence for t in tracks})),
        tracks=tuple(tracks),
        duplicates=tuple(duplicates),
        too_short=tuple(too_short),
        failed=tuple(failed),
        candidates=len(candidates),
        seconds=round(sum(t.duration_s for t in tracks), 3),
    )
    (out_dir / "licences").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(copyright_path, out_dir / "licences" / f"{package.name}.copyright")
    (out_dir / "packages").mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "packages" / f"{package.name}.json"
    _write_atomic(report_path, json.dumps(report.to_json(), indent=1) + "\n")
    return report


# ---------------------------------------------------------------------------------------------
# Corpus-level: manifests and the whole build


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def load_package_reports(out_dir: Path) -> list[PackageReport]:
    folder = out_dir / "packages"
    if not folder.is_dir():
        return []
    return [
        PackageReport.from_json(json.loads(p.read_text(encoding="utf-8")))
        for p in sorted(folder.glob("*.json"))
    ]


def known_hashes(reports: Iterable[PackageReport]) -> dict[str, str]:
    """Decoded-audio hashes of tracks already in the corpus, for cross-package dedupe."""
    return {"audio:" + t.audio_sha256: t.track_id for r in reports for t in r.tracks}


def write_manifest(out_dir: Path) -> list[TrackRecord]:
    """Rebuild out_dir/manifest.tsv and manifest.json from out_dir/packages/*.json."""
    reports = load_package_reports(out_dir)
    tracks = sorted((t for r in reports for t in r.tracks), key=lambda t: t.track_id)
    rows = ["\t".join(TSV_COLUMNS) + "\n"]
    rows += ["\t".join(str(getattr(t, c)) for c in TSV_COLUMNS) + "\n" for t in tracks]
    _write_atomic(out_dir / "manifest.tsv", "".join(rows))
    summary = {
        "version": MANIFEST_VERSION,
        "sample_rate": SAMPLE_RATE,
        "channels": 2,
        "format": "FLAC PCM_16",
        "packages": {
            r.package: {
                "package_version": r.version,
                "licences": list(r.licences),
                "copyright_file": f"licences/{r.package}.copyright",
                "tracks": len(r.tracks),
                "hours": round(r.seconds / 3600, 3),
                "duplicates_dropped": len(r.duplicates),
                "short_dropped": len(r.too_short),
                "failed": len(r.failed),
            }
            for r in reports
        },
        "splits": {
            s: {
                "tracks": sum(1 for t in tracks if t.split == s),
                "hours": round(sum(t.duration_s for t in tracks if t.split == s) / 3600, 3),
            }
            for s in ("train", "valid")
        },
        "tracks": [asdict(t) for t in tracks],
    }
    _write_atomic(out_dir / "manifest.json", json.dumps(summary, indent=1) + "\n")
    return tracks


def load_manifest(corpus_dir: Path) -> list[TrackRecord]:
    path = corpus_dir / "manifest.json"
    if not path.is_file():
        raise DataError(f"no corpus manifest at {path} (run `spectrostream data debian` first)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("version") != MANIFEST_VERSION:
        raise DataError(f"{path}: unsupported manifest version {data.get('version')}")
    return [TrackRecord(**t) for t in data["tracks"]]


@dataclass(frozen=True)
class BuildResult:
    reports: tuple[PackageReport, ...]
    reused: tuple[str, ...]
    errors: tuple[tuple[str, str], ...]  # (package, message)


def build_corpus(
    packages: Sequence[str],
    out_dir: Path,
    workdir: Path,
    *,
    force: bool = False,
    keep_extracted: bool = False,
    progress: bool = True,
    log=print,
) -> BuildResult:
    """Download, extract and process each package; a failing package is reported, not fatal.

    A package that already has out_dir/packages/PKG.json is reused unless `force`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = {r.package: r for r in load_package_reports(out_dir)}
    seen = known_hashes(r for name, r in existing.items() if force is False or name not in packages)
    reports, reused, errors = [], [], []
    for name in packages:
        if name in SKIPPED_PACKAGES:
            errors.append((name, "skipped on purpose (low-bit-rate Opus source)"))
            continue
        if name in existing and not force:
            reused.append(name)
            log(f"{name}: already in the corpus ({len(existing[name].tracks)} tracks), reusing")
            continue
        extract_dir = workdir / "extract" / name
        try:
            deb = download_package(name, workdir)
            package = extract_package(deb, extract_dir)
            report = process_package(package, out_dir, seen, progress=progress)
        except DataError as err:
            errors.append((name, str(err)))
            log(f"{name}: FAILED: {err}")
            continue
        finally:
            if not keep_extracted and extract_dir.exists():
                shutil.rmtree(extract_dir)
        reports.append(report)
        write_manifest(out_dir)  # after each package, so a partial corpus is usable at once
        log(
            f"{name} {report.version}: {len(report.tracks)} tracks, {report.seconds / 60:.1f} min,"
            f" {len(report.duplicates)} duplicates, {len(report.too_short)} under"
            f" {MIN_DURATION_S:.0f} s, {len(report.failed)} failed; licences"
            f" {', '.join(report.licences) or '-'}"
        )
    write_manifest(out_dir)
    return BuildResult(reports=tuple(reports), reused=tuple(reused), errors=tuple(errors))
