"""Training data: manifest cache, split, crops (seek + resample), channels, silence gate."""

import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from spectrostream.audio_io import to_channels
from spectrostream.train import data as data_mod
from spectrostream.train.data import (
    CropDataset,
    DataError,
    StepBatchSampler,
    ValidDataset,
    build_split,
    read_crop,
)


def _tone(path, sr, seconds, channels=2, freq=440.0, amp=0.3):
    t = np.arange(int(sr * seconds)) / sr
    x = np.stack([amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], 1)
    sf.write(path, x.astype(np.float32), sr)
    return x


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no usable training audio"):
        build_split([tmp_path], 0.0, None)
    with pytest.raises(DataError, match="not found"):
        build_split([tmp_path / "missing"], 0.0, None)
    with pytest.raises(DataError, match="no data folders"):
        build_split([], 0.0, None)


def test_unreadable_files_are_counted_and_warned(tmp_path, caplog):
    _tone(tmp_path / "good.wav", 48000, 1.0)
    (tmp_path / "bad.flac").write_bytes(b"not audio at all")
    with caplog.at_level(logging.WARNING):
        split = build_split([tmp_path], 0.0, None)
    assert [t.path for t in split.train] == [str(tmp_path / "good.wav")]
    assert len(split.failures) == 1 and split.failures[0][0].endswith("bad.flac")
    assert "bad.flac" in caplog.text


def test_manifest_cache_is_keyed_by_mtime_and_size(tmp_path, monkeypatch):
    d = tmp_path / "audio"
    d.mkdir()
    _tone(d / "a.wav", 48000, 1.0)
    _tone(d / "b.flac", 44100, 2.0, channels=1)
    cache = tmp_path / "manifest.json"
    first = build_split([d], 0.0, cache)
    calls = []
    real_probe = data_mod.probe
    monkeypatch.setattr(data_mod, "probe", lambda p: calls.append(p) or real_probe(p))
    second = build_split([d], 0.0, cache)
    assert calls == [] and second.train == first.train
    _tone(d / "a.wav", 48000, 3.0)  # changed file: probed again
    third = build_split([d], 0.0, cache)
    assert [p.name for p in calls] == ["a.wav"]
    info = {t.path.rsplit("/", 1)[-1]: t for t in third.train}
    assert info["a.wav"].frames == 3 * 48000
    assert info["b.flac"].sample_rate == 44100 and info["b.flac"].channels == 1


def test_split_by_subfolders_or_by_hash(tmp_path):
    root = tmp_path / "r"
    (root / "train").mkdir(parents=True)
    (root / "valid").mkdir()
    _tone(root / "train" / "x.wav", 48000, 0.5)
    _tone(root / "valid" / "y.wav", 48000, 0.5)
    s = build_split([root], 0.5, None)
    assert [t.path.rsplit("/", 1)[-1] for t in s.train] == ["x.wav"]
    assert [t.path.rsplit("/", 1)[-1] for t in s.valid] == ["y.wav"]

    flat = tmp_path / "flat"
    (flat / "sub").mkdir(parents=True)
    for i in range(20):
        _tone(flat / ("sub" if i % 2 else ".") / f"t{i}.wav", 8000, 0.1)
    a = build_split([flat], 0.3, None)
    b = build_split([flat], 0.3, None)
    assert a.train == b.train and a.valid == b.valid  # deterministic
    assert 1 <= len(a.valid) <= 12 and len(a.train) + len(a.valid) == 20
    assert not {t.path for t in a.train} & {t.path for t in a.valid}


def test_crop_is_seeked_and_resampled_correctly(tmp_path):
    sr = 44100
    freq = 441.0
    _tone(tmp_path / "a.flac", sr, 3.0, channels=1, freq=freq)
    (track,) = build_split([tmp_path], 0.0, None).train
    start, length = 50_000, 9600
    crop = read_crop(track, start, length, channels=2)
    assert crop.shape == (2, length) and crop.dtype == np.float32
    t = (start + np.arange(length)) / 48000
    expected = 0.3 * np.sin(2 * np.pi * freq * t)
    # The crop start is placed to the nearest 48 kHz sample of the source grid: within half a
    # sample (slope 0.3 * 2 pi f / 48000 = 0.017 per sample), plus resampler error.
    np.testing.assert_allclose(crop[0], expected, atol=0.5 * 0.0174 + 2e-3)
    np.testing.assert_array_equal(crop[0], crop[1])  # mono -> dual-mono
    # Past the end: zero-filled.
    tail = read_crop(track, 3 * 48000 - 100, 1000, channels=2)
    assert np.abs(tail[:, 200:]).max() == 0 and np.abs(tail[:, :50]).max() > 0


def test_crop_at_48k_is_sample_exact(tmp_path):
    x = _tone(tmp_path / "a.wav", 48000, 1.0, channels=2)
    (track,) = build_split([tmp_path], 0.0, None).train
    crop = read_crop(track, 1234, 500, channels=2)
    np.testing.assert_allclose(crop, x[1234:1734].T, atol=1 / 32768)  # 16-bit file


def test_map_channels():
    def map_channels(x: np.ndarray, channels: int) -> np.ndarray:  # the training data's policy
        return to_channels(x, channels, downmix=True)

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert map_channels(x[:1], 2).shape == (2, 4)
    np.testing.assert_array_equal(map_channels(x, 2), x[:2])
    np.testing.assert_allclose(map_channels(x[:2], 1), x[:2].mean(0, keepdims=True))


def test_crops_are_a_pure_function_of_seed_rank_and_key(tmp_path):
    for i in range(3):
        _tone(tmp_path / f"t{i}.wav", 48000, 2.0, freq=200.0 * (i + 1))
    tracks = build_split([tmp_path], 0.0, None).train
    ds = CropDataset(tracks, 4800, 2, seed=7, rank=0)
    a, fa, qa = ds[11]
    b, _, _ = CropDataset(tracks, 4800, 2, seed=7, rank=0)[11]
    assert torch.equal(a, b) and fa == 0 and qa == 0
    assert not torch.equal(a, ds[12][0])
    assert not torch.equal(a, CropDataset(tracks, 4800, 2, seed=7, rank=1)[11][0])


def test_silence_gate_redraws_quiet_crops(tmp_path):
    t = np.arange(48000 * 4) / 48000
    x = np.zeros((len(t), 2), np.float32)
    x[: 48000 // 2] = 0.3 * np.sin(2 * np.pi * 300 * t[: 48000 // 2])[:, None]  # 0.5 s loud
    sf.write(tmp_path / "mostly_silent.wav", x, 48000)
    tracks = build_split([tmp_path], 0.0, None).train
    gated = CropDataset(tracks, 4800, 2, seed=0, silence_db=-40, silence_retries=50)
    loud = [gated[k] for k in range(20)]
    assert all(20 * math.log10(float(c.pow(2).mean().sqrt()) + 1e-12) > -40 for c, _, q in loud)
    ungated = CropDataset(tracks, 4800, 2, seed=0, silence_db=-40, silence_retries=0)
    quiet = sum(q for _, _, q in (ungated[k] for k in range(20)))
    assert quiet > 5  # without retries most crops of this track are silent and are counted


def test_corrupt_file_at_read_time_is_skipped_and_counted(tmp_path, caplog):
    _tone(tmp_path / "good.wav", 48000, 1.0)
    _tone(tmp_path / "later_bad.wav", 48000, 1.0)
    tracks = build_split([tmp_path], 0.0, None).train
    (tmp_path / "later_bad.wav").write_bytes(b"RIFF broken")  # corrupted after the scan
    ds = CropDataset(tracks, 2400, 2, seed=0)
    with caplog.at_level(logging.WARNING):
        items = [ds[k] for k in range(10)]
    assert sum(f for _, f, _ in items) == 1  # warned and counted once, then avoided
    assert "later_bad.wav" in caplog.text
    assert all(torch.isfinite(c).all() for c, _, _ in items)


def test_step_sampler_resumes_at_a_step():
    s = StepBatchSampler(3, start_step=2, max_steps=4)
    assert list(s) == [[6, 7, 8], [9, 10, 11]] and len(s) == 2


def test_validation_crops_are_fixed(tmp_path):
    _tone(tmp_path / "v.wav", 48000, 2.0)
    tracks = build_split([tmp_path], 0.0, None).train
    a = ValidDataset(tracks, 4800, 2, count=3, seed=1)
    b = ValidDataset(tracks, 4800, 2, count=3, seed=1)
    assert len(a) == 3 and all(torch.equal(a[i], b[i]) for i in range(3))
    assert len(ValidDataset([], 4800, 2, count=3)) == 0
