"""Data tooling: corpus building from an (unpacked) Debian package and the GPU pack."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spectrostream.audio_io import write_audio
from spectrostream.data import debian, pack
from spectrostream.data.cli import main as data_main
from spectrostream.data.debian import (
    DataError,
    ExtractedPackage,
    PackageReport,
    TrackRecord,
    parse_copyright,
    process_package,
    scan_audio,
    split_for,
    to_stereo_48k,
    write_manifest,
)
from spectrostream.data.pack import FULL_BAND_QUALITY, PackOptions, plan_excerpts, write_pack
from spectrostream.errors import UsageError

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fakegame

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files:
 base/music/zipped.ogg
 base/sound/*
Copyright: 2021 Composer
License: CC-BY-SA-3.0

Files: debian/*
Copyright: 2022 Packager
License: GPL-2+

License: GPL-2+
 text
"""


def _tone(seconds: float, rate: int, channels: int, freq: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    chans = [
        0.3 * np.sin(2 * np.pi * freq * (1 + 0.1 * c) * t) + 0.02 * rng.standard_normal(t.size)
        for c in range(channels)
    ]
    return np.stack(chans, axis=1).astype(np.float32)


def _ogg_bytes(audio: np.ndarray, rate: int) -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="OGG", subtype="VORBIS")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fake_package(tmp_path_factory) -> ExtractedPackage:
    """usr/share/games/fakegame with: 2 long tracks (stereo 11.025 kHz, mono 8 kHz), one
    short sound, a byte-identical copy, a re-encode of the same audio (new bytes, same
    samples), and a *.pk3 holding one long track and one short sound."""
    root = tmp_path_factory.mktemp("fakegame")
    music = root / "usr/share/games/fakegame/music"
    music.mkdir(parents=True)
    stereo = _tone(31.0, 11025, 2, 440.0, seed=1)
    (music / "a_stereo.ogg").write_bytes(_ogg_bytes(stereo, 11025))
    (music / "b_mono.ogg").write_bytes(_ogg_bytes(_tone(33.0, 8000, 1, 300.0, seed=2), 8000))
    (music / "c_short.ogg").write_bytes(_ogg_bytes(_tone(5.0, 8000, 2, 500.0, seed=3), 8000))
    (music / "lang").mkdir()
    (music / "lang/a_stereo.ogg").write_bytes((music / "a_stereo.ogg").read_bytes())
    (music / "d_reencoded.ogg").write_bytes(_ogg_bytes(stereo, 11025))
    base = root / "usr/share/games/fakegame/base"
    base.mkdir()
    with zipfile.ZipFile(base / "0music.pk3", "w") as archive:
        archive.writestr("music/zipped.ogg", _ogg_bytes(_tone(32.0, 8000, 2, 200.0, 4), 8000))
        archive.writestr("sound/beep.ogg", _ogg_bytes(_tone(1.0, 8000, 2, 900.0, 5), 8000))
        archive.writestr("readme.txt", "not audio")
    doc = root / "usr/share/doc/fakegame-music"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    return ExtractedPackage(name="fakegame-music", version="1.0-1", root=root)


@pytest.fixture(scope="module")
def built(fake_package, tmp_path_factory) -> tuple[Path, PackageReport]:
    out = tmp_path_factory.mktemp("corpus")
    report = process_package(fake_package, out, {}, progress=False)
    write_manifest(out)
    return out, report


def test_scan_finds_plain_files_and_zip_members(fake_package):
    found = {c.source_path: c.licence_path for c in scan_audio(fake_package.root)}
    member = "usr/share/games/fakegame/base/0music.pk3!/music/zipped.ogg"
    assert found[member] == "usr/share/games/fakegame/base/music/zipped.ogg"
    assert "usr/share/games/fakegame/music/lang/a_stereo.ogg" in found
    assert len(found) == 7  # 5 plain .ogg + 2 zip members; readme.txt is not audio


def test_copyright_last_matching_stanza_wins():
    info = parse_copyright("fakegame-music", COPYRIGHT)
    assert info.machine_readable
    assert info.licence_for("usr/share/games/fakegame/music/a.ogg") == "GPL-2+"
    assert info.licence_for("usr/share/games/fakegame/base/music/zipped.ogg") == "CC-BY-SA-3.0"
    assert info.licence_for("usr/share/x/base/sound/deep/boom.ogg") == "CC-BY-SA-3.0"


def test_copyright_not_machine_readable_is_reported_not_guessed():
    text = "This package was debianized by someone.\n\nLicense:\n  GNU GPL\n"
    unknown = parse_copyright("some-game", text)
    assert not unknown.machine_readable
    assert unknown.licence_for("usr/x.ogg") == "unknown (see licences/some-game.copyright)"
    assert parse_copyright("wesnoth-1.16-music", text).licence_for("usr/x.ogg") == "GPL-2+"


def test_process_package_keeps_long_unique_tracks(built):
    out, report = built
    kept = {t.source_path for t in report.tracks}
    assert kept == {
        "usr/share/games/fakegame/base/0music.pk3!/music/zipped.ogg",
        "usr/share/games/fakegame/music/a_stereo.ogg",
        "usr/share/games/fakegame/music/b_mono.ogg",
    }
    assert {p for p, _ in report.too_short} == {
        "usr/share/games/fakegame/base/0music.pk3!/sound/beep.ogg",
        "usr/share/games/fakegame/music/c_short.ogg",
    }
    original = "fakegame-music/usr/share/games/fakegame/music/a_stereo.ogg"
    assert dict(report.duplicates) == {
        "usr/share/games/fakegame/music/d_reencoded.ogg": original,  # same samples, new bytes
        "usr/share/games/fakegame/music/lang/a_stereo.ogg": original,  # same bytes
    }
    assert report.failed == ()
    licences = {Path(t.source_path).name: t.licence for t in report.tracks}
    assert licences == {
        "zipped.ogg": "CC-BY-SA-3.0",
        "a_stereo.ogg": "GPL-2+",
        "b_mono.ogg": "GPL-2+",
    }
    assert report.licences == ("CC-BY-SA-3.0", "GPL-2+")
    assert (out / "licences/fakegame-music.copyright").read_text() == COPYRIGHT


def test_tracks_are_48k_stereo_flac_of_the_same_length(built):
    out, report = built
    by_name = {Path(t.source_path).name: t for t in report.tracks}
    expected_s = {"a_stereo.ogg": 31.0, "b_mono.ogg": 33.0, "zipped.ogg": 32.0}
    for name, track in by_name.items():
        info = sf.info(out / track.file)
        assert (info.samplerate, info.channels, info.format, info.subtype) == (
            48000,
            2,
            "FLAC",
            "PCM_16",
        )
        assert abs(info.duration - expected_s[name]) < 0.01
        assert track.duration_s == pytest.approx(info.duration, abs=1e-3)
        assert track.split == split_for(track.track_id)
        assert track.file.startswith(f"{track.split}/fakegame-music/")
    mono = sf.read(out / by_name["b_mono.ogg"].file, dtype="int16")[0]
    assert np.array_equal(mono[:, 0], mono[:, 1])  # mono becomes dual mono
    assert by_name["b_mono.ogg"].source_channels == 1
    assert by_name["b_mono.ogg"].source_sample_rate == 8000


def test_manifest_lists_every_track_with_source_and_licence(built):
    out, report = built
    rows = (out / "manifest.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    assert header == list(debian.TSV_COLUMNS)
    assert len(rows) == 1 + len(report.tracks)
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["packages"]["fakegame-music"]["duplicates_dropped"] == 2
    assert doc["packages"]["fakegame-music"]["short_dropped"] == 2
    assert {t["track_id"] for t in doc["tracks"]} == {t.track_id for t in report.tracks}
    assert debian.load_manifest(out) == sorted(report.tracks, key=lambda t: t.track_id)
    saved = json.loads((out / "packages/fakegame-music.json").read_text())
    assert PackageReport.from_json(saved) == report


def test_second_package_with_same_audio_is_a_duplicate(built, fake_package, tmp_path):
    _, report = built
    seen = debian.known_hashes([report])
    again = ExtractedPackage("fakegame-copy", "2", fake_package.root)
    # Copying the doc folder name: the copyright file is looked up by package name.
    doc = fake_package.root / "usr/share/doc/fakegame-copy"
    doc.mkdir(exist_ok=True)
    (doc / "copyright").write_text(COPYRIGHT)
    second = process_package(again, tmp_path, seen, progress=False)
    assert second.tracks == ()
    assert len(second.duplicates) == 5


def test_split_is_deterministic_and_about_five_percent():
    ids = [f"pkg/track{i}.ogg" for i in range(4000)]
    splits = [split_for(i) for i in ids]
    assert splits == [split_for(i) for i in ids]
    assert 0.035 < splits.count("valid") / len(ids) < 0.065


def test_resampling_keeps_pitch_and_clips_instead_of_wrapping(tmp_path):
    def to_stereo_48k_pcm16(audio: np.ndarray, rate: int) -> np.ndarray:  # as the corpus writes
        write_audio(tmp_path / "t.flac", to_stereo_48k(audio, rate), 48000, subtype="PCM_16")
        return sf.read(tmp_path / "t.flac", dtype="int16")[0]

    rate = 44100
    t = np.arange(rate) / rate
    loud = np.stack([1.2 * np.sin(2 * np.pi * 1000 * t)]).astype(np.float32)  # mono, > 0 dBFS
    pcm = to_stereo_48k_pcm16(loud, rate)
    assert pcm.shape == (48000, 2) and pcm.dtype == np.int16
    spectrum = np.abs(np.fft.rfft(pcm[:, 0].astype(np.float64)))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over one second
    assert pcm.max() == 32767 and pcm.min() == -32768
    assert np.all(np.diff(pcm[:, 0].astype(np.int32))[:2000] > -40000)  # no wrap-around jumps
    with pytest.raises(DataError):
        to_stereo_48k_pcm16(np.zeros((6, 100), np.float32), rate)


def test_missing_apt_get_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get is not available"):
        debian.download_package("ufoai-music", tmp_path)


def test_build_continues_after_a_failing_package(fake_package, tmp_path, monkeypatch, capsys):
    def fake_download(name, workdir):
        if name == "broken-pkg":
            raise DataError("apt-get download broken-pkg failed: E: Unable to locate package")
        return workdir / f"{name}_1.0_all.deb"

    def fake_extract(deb, dest):
        return fake_package

    monkeypatch.setattr(debian, "download_package", fake_download)
    monkeypatch.setattr(debian, "extract_package", fake_extract)
    out = tmp_path / "corpus"
    code = data_main(
        [
            "data",
            "debian",
            "-o",
            str(out),
            "--packages",
            "broken-pkg",
            "fakegame-music",
            "warzone2100-music",
            "--no-progress",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "broken-pkg: apt-get download broken-pkg failed" in err
    assert "warzone2100-music: skipped" in err
    assert len(debian.load_manifest(out)) == 3


# ---------------------------------------------------------------------------------------------
# pack


def _synthetic_corpus(root: Path, packages: int = 3, per_package: int = 8) -> list[TrackRecord]:
    """Small 48 kHz stereo FLAC corpus written straight to a manifest (8 s tracks)."""
    (root / "licences").mkdir(parents=True)
    (root / "packages").mkdir()
    tracks = []
    for p in range(packages):
        name = f"pkg{p}"
        (root / "licences" / f"{name}.copyright").write_text(f"licence of {name}\n")
        records = []
        for i in range(per_package):
            track_id = f"{name}/music/t{i}.ogg"
            split = "valid" if i == 0 else "train"
            rel = f"{split}/{name}/t{i}.flac"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            audio = _tone(8.0, 48000, 2, 110.0 * (1 + i + p * per_package), seed=10 * p + i)
            audio[: 48000 * 2] = 0.0  # a silent intro: excerpts should avoid it
            sf.write(root / rel, audio, 48000, subtype="PCM_16")
            records.append(
                TrackRecord(
                    track_id,
                    split,
                    rel,
                    name,
                    "1",
                    f"music/t{i}.ogg",
                    8.0,
                    48000,
                    2,
                    "GPL-2+",
                    f"{p}-{i}",
                )
            )
        report = PackageReport(name, "1", ("GPL-2+",), tuple(records), seconds=8.0 * per_package)
        (root / "packages" / f"{name}.json").write_text(json.dumps(report.to_json()))
        tracks.extend(records)
    write_manifest(root)
    return tracks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_corpus")
    _synthetic_corpus(root)
    return root


def test_plan_uses_every_track_before_repeating_one():
    tracks = [
        TrackRecord(
            f"p{i % 3}/t{i}",
            "train",
            f"t{i}.flac",
            f"p{i % 3}",
            "1",
            "x",
            60.0,
            48000,
            2,
            "GPL-2+",
            str(i),
        )
        for i in range(30)
    ]
    options = PackOptions(min_excerpt_s=10, max_excerpt_s=20)
    few = plan_excerpts(tracks, "train", 200.0, options, random.Random(0))
    assert len(few) == 20 and len({e.track.track_id for e in few}) == 20
    assert all(e.frames == 10 * 48000 for e in few)
    # 20 tracks from 3 packages, interleaved: no package gets more than its share + 1.
    counts = [sum(e.track.package == f"p{k}" for e in few) for k in range(3)]
    assert max(counts) - min(counts) <= 1
    many = plan_excerpts(tracks, "train", 1800.0, options, random.Random(0))
    assert len(many) == 90 and len({e.track.track_id for e in many}) == 30
    for track_id in {e.track.track_id for e in many}:
        spans = sorted(
            (e.start_frame, e.start_frame + e.frames) for e in many if e.track.track_id == track_id
        )
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # disjoint excerpts
        assert spans[-1][1] <= 60 * 48000


PACK_OPTIONS = PackOptions(
    minutes=0.25,
    valid_minutes=0.05,
    max_mib=0.6,
    min_excerpt_s=0.5,
    max_excerpt_s=1.0,
    seed=3,
    sample_excerpts=4,
)


@pytest.fixture(scope="module")
def packed(corpus, tmp_path_factory) -> tuple[Path, pack.PackResult]:
    out = tmp_path_factory.mktemp("pack") / "subset"
    return out, write_pack(corpus, out, PACK_OPTIONS, progress=False)


def test_pack_draws_from_every_train_track(packed):
    out, result = packed
    doc = json.loads((out / "manifest.json").read_text())
    train = [e for e in doc["excerpts"] if e["split"] == "train"]
    valid = [e for e in doc["excerpts"] if e["split"] == "valid"]
    assert {e["track_id"] for e in train} == {
        f"pkg{p}/music/t{i}.ogg" for p in range(3) for i in range(1, 8)
    }
    assert result.train_tracks == 21 == result.train_excerpts
    assert valid and {e["track_id"] for e in valid} <= {f"pkg{p}/music/t0.ogg" for p in range(3)}
    # Excerpts lying wholly inside the 2 s silent intro are re-drawn.
    assert all(e["start_s"] + e["duration_s"] > 2.0 for e in doc["excerpts"])
    assert sorted(p.name for p in (out / "licences").iterdir()) == [
        "pkg0.copyright",
        "pkg1.copyright",
        "pkg2.copyright",
    ]
    assert (out / "manifest.tsv").read_text().count("\n") == 1 + len(doc["excerpts"])
    first = train[0]
    audio, rate = sf.read(out / first["file"])
    assert rate == 48000 and audio.shape[1] == 2
    assert abs(audio.shape[0] / rate - first["duration_s"]) < 0.01
    assert doc["vorbis_quality"] == result.quality


def test_pack_fits_the_cap_by_lowering_quality(packed, corpus, tmp_path):
    out, result = packed
    assert pack.folder_bytes(out) == result.total_bytes <= PACK_OPTIONS.max_mib * 2**20
    assert FULL_BAND_QUALITY < result.quality < 1.0
    cap_mib = 0.8 * result.total_bytes / 2**20
    smaller = write_pack(
        corpus,
        tmp_path / "small",
        dataclasses.replace(PACK_OPTIONS, max_mib=cap_mib),
        progress=False,
    )
    assert smaller.quality < result.quality
    assert pack.folder_bytes(tmp_path / "small") == smaller.total_bytes <= cap_mib * 2**20


def test_pack_refuses_an_impossible_cap_and_a_foreign_folder(corpus, packed, tmp_path):
    tiny = dataclasses.replace(PACK_OPTIONS, max_mib=0.02)
    with pytest.raises(DataError, match="lowest Vorbis quality"):
        write_pack(corpus, tmp_path / "tiny", tiny, progress=False)
    assert sorted(tmp_path.iterdir()) == []  # nothing half-written is left behind
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        write_pack(corpus, foreign, PACK_OPTIONS, overwrite=False, progress=False)
    with pytest.raises(DataError, match="no pack manifest"):
        write_pack(corpus, foreign, PACK_OPTIONS, overwrite=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out, _ = packed
    with pytest.raises(DataError, match="--overwrite"):
        write_pack(corpus, out, PACK_OPTIONS, progress=False)


def _share_above_db(audio: np.ndarray, hz: float) -> float:
    """Share of the energy above ``hz`` in dB (mono mix of [T, 2] at 48 kHz)."""
    mono = audio.mean(axis=1)
    power = np.abs(np.fft.rfft(mono)) ** 2
    freqs = np.fft.rfftfreq(len(mono), 1 / 48000)
    return float(10 * np.log10(power[(freqs > hz) & (freqs < 20000)].sum() / power.sum()))


def test_pack_floor_quality_keeps_the_band_to_20_khz():
    # Vorbis at quality 0 low-passes at 16 kHz; a model trained on such a pack learned to output
    # nothing above it. The floor the pack falls back to must keep the top band.
    noise = np.random.default_rng(0).standard_normal((2, 48000 * 2)).astype(np.float32) * 0.1
    source = _share_above_db(noise.T, 16000)
    for quality, kept in ((FULL_BAND_QUALITY, True), (0.0, False)):
        decoded, rate = sf.read(io.BytesIO(pack.encode_vorbis(noise, quality)), dtype="float32")
        assert rate == 48000
        loss_db = source - _share_above_db(decoded, 16000)
        assert (loss_db < 3.0) == kept, (quality, loss_db)
    assert PACK_OPTIONS.min_quality == FULL_BAND_QUALITY
    with pytest.raises(UsageError, match="min-quality"):
        PackOptions(min_quality=1.5)


def test_pack_cli_reports_user_errors(tmp_path, capsys):
    code = data_main(["pack", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    assert code == 2
    assert "no corpus manifest" in capsys.readouterr().err
    assert data_main(["pack", str(tmp_path), "-o", str(tmp_path / "o"), "--minutes", "0"]) == 2


def _gpu_prep(corpus: Path, tmp_path: Path, carry_mib: int) -> subprocess.CompletedProcess:
    """scripts/gpu_prep.sh on the synthetic corpus, into tmp_path, with a wheel already there
    (so nothing is downloaded)."""
    wheels = tmp_path / "whl"
    wheels.mkdir(exist_ok=True)
    (wheels / "soundfile-0.0-py3-none-any.whl").write_bytes(b"stand-in")
    pack_args = ["--minutes", "0.25", "--valid-minutes", "0.05", "--max-mib", "0.6"]
    pack_args += ["--min-excerpt", "0.5", "--max-excerpt", "1.0"]
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_prep.sh"
    return subprocess.run(
        ["bash", str(script), "--corpus", str(corpus), "--out", str(tmp_path / "pack")]
        + ["--wheels", str(wheels), "--seed", "5", "--", *pack_args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "CARRY_MIB": str(carry_mib)},
        timeout=300,
    )


def test_gpu_prep_packs_and_checks_what_a_device_call_carries(corpus, tmp_path):
    done = _gpu_prep(corpus, tmp_path, carry_mib=64)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    assert doc["excerpts"] and doc["vorbis_quality"] >= FULL_BAND_QUALITY
    assert "carried: working tree" in done.stdout and "of 64 MiB" in done.stdout
    assert "scripts/gpu_round.sh" in done.stdout
    # The tracked tree alone (the shipped model is ~40 MB) is over 1 MiB: refused, exit 1.
    over = _gpu_prep(corpus, tmp_path, carry_mib=1)
    assert over.returncode == 1 and "over the 1 MiB a device call carries" in over.stderr
