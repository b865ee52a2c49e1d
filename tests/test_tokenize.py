"""`spectrostream tokenize`: shards equal to `encode`, readable without this package, resumable."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from spectrostream import bitstream
from spectrostream.cli import main
from spectrostream.codec import Codec
from spectrostream.config import tiny_config
from spectrostream.model import SpectroStream

LEVELS = 5


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(3)
    p = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    Codec(SpectroStream(tiny_config(num_levels=8, codebook_size=1024))).save(p)
    return p


def music(channels: int, seconds: float, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = [0.3 * np.sin(2 * np.pi * (200 + 50 * seed + 30 * c) * t) for c in range(channels)]
    return (np.stack(x) + 0.05 * rng.standard_normal((channels, len(t)))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five good files (rates, channels, formats, depths of folders) and two bad ones."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "sub" / "deeper").mkdir(parents=True)
    sf.write(root / "a.wav", music(2, 1.3, 48000, 0).T, 48000)
    sf.write(root / "b.flac", music(1, 0.7, 44100, 1).T, 44100)
    sf.write(root / "sub" / "c.ogg", music(2, 0.5, 32000, 2).T, 32000)
    sf.write(root / "sub" / "d.wav", music(2, 0.01, 48000, 3).T, 48000)
    sf.write(root / "sub" / "deeper" / "e.wav", music(1, 2.2, 22050, 4).T, 22050)
    (root / "sub" / "broken.wav").write_bytes(b"RIFF\x00\x00 not really a wave file")
    sf.write(root / "surround.wav", music(3, 0.2, 48000, 5).T, 48000)
    (root / "notes.txt").write_text("not audio, not listed")
    return root


GOOD = ["a.wav", "b.flac", "sub/c.ogg", "sub/d.wav", "sub/deeper/e.wav"]
BAD = ["sub/broken.wav", "surround.wav"]


def tokenize(model_file, corpus, out, *extra: str) -> int:
    args = ["tokenize", str(corpus), "-o", str(out), "--model", str(model_file), "--device", "cpu"]
    return main([*args, "--levels", str(LEVELS), "--shard-files", "3", *extra])


def read_all(out) -> tuple[dict[str, tuple[np.ndarray, dict]], list[str]]:
    """(name -> (codes [frames, levels], per-file fields), failed names), read with safetensors
    and numpy alone."""
    files, failed = {}, []
    for shard in sorted(out.glob("shard-*.safetensors")):
        t = load_file(shard)
        with safe_open(str(shard), framework="np") as f:
            meta = f.metadata()
        assert meta["format"] == "spectrostream-tokens" and meta["levels"] == str(LEVELS)
        for i, name in enumerate(json.loads(meta["names"])):
            codes = t["codes"][t["offsets"][i] : t["offsets"][i + 1]]
            files[name] = (
                codes,
                {k: int(t[k][i]) for k in ("num_samples", "sample_rate", "channels")},
            )
        failed += [name for name, _error in json.loads(meta["failed"])]
    return files, failed


def test_tokenize_equals_encode_and_reports_bad_files(model_file, corpus, tmp_path, capsys):
    out = tmp_path / "tokens"
    assert tokenize(model_file, corpus, out, "--batch", "2", "--workers", "1") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in BAD:
        assert f"could not read {name}" in err
    shards = sorted(p.name for p in out.iterdir())
    assert shards == [f"shard-0000{k}-of-00003.safetensors" for k in range(3)]  # 7 files / 3
    files, failed = read_all(out)
    assert sorted(files) == GOOD and failed == BAD
    for name in GOOD:
        ssc = tmp_path / "ssc" / (name + ".ssc")
        assert main(["encode", str(corpus / name), str(ssc), "--model", str(model_file),
                     "--levels", str(LEVELS), "--device", "cpu"]) == 0  # fmt: skip
        header, want = bitstream.decode_stream(ssc.read_bytes())
        codes, fields = files[name]
        assert codes.dtype == np.int16 and codes.shape == want.T.shape
        np.testing.assert_array_equal(codes, want.T)  # exactly the codes `encode` writes
        assert fields["num_samples"] == header.num_samples
        assert fields["sample_rate"] == header.sample_rate
        assert fields["channels"] == header.channels


def test_tokenize_resumes_after_a_kill(model_file, corpus, tmp_path, capsys):
    out = tmp_path / "tokens"
    assert tokenize(model_file, corpus, out, "--workers", "0") == 0
    first, _ = read_all(out)
    done = out / "shard-00000-of-00003.safetensors"
    before = os.stat(done)
    # A kill during shard 2: no shard file, a partial temporary file left behind.
    (out / "shard-00002-of-00003.safetensors").unlink()
    stale = out / ".spectrostream-shard-00002-of-00003.safetensors.k1ll3d.safetensors"
    stale.write_bytes(b"half a shard")
    capsys.readouterr()
    assert tokenize(model_file, corpus, out, "--workers", "0") == 0
    err = capsys.readouterr().err
    assert "1 shards written, 2 already done" in err
    assert "could not read sub/broken.wav" in err  # failures in skipped shards still reported
    after = os.stat(done)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # skipped
    assert not stale.exists()
    again, failed = read_all(out)
    assert sorted(again) == sorted(first) and failed == BAD
    for name in first:
        np.testing.assert_array_equal(again[name][0], first[name][0])
    assert [p.name for p in out.glob(".*")] == []
    # Another setting into the same folder is refused, not mixed in.
    assert main(["tokenize", str(corpus), "-o", str(out), "--model", str(model_file),
                 "--levels", "3", "--shard-files", "3", "--device", "cpu"]) == 2  # fmt: skip
    assert "made by another run" in capsys.readouterr().err


def test_tokenize_splits_shards_across_ranks(model_file, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "tokens"
    assert tokenize(model_file, corpus, out, "--workers", "0") == 0
    assert [p.name for p in out.iterdir()] == ["shard-00001-of-00003.safetensors"]
    files, failed = read_all(out)
    assert sorted(files) == ["sub/c.ogg", "sub/d.wav", "sub/deeper/e.wav"] and failed == []


def test_tokenize_user_errors(model_file, tmp_path, capsys):
    assert main(["tokenize", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o"),
                 "--model", str(model_file)]) == 2  # fmt: skip
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["tokenize", str(tmp_path / "empty"), "-o", str(tmp_path / "o"),
                 "--model", str(model_file)]) == 2  # fmt: skip
    assert "no audio files" in capsys.readouterr().err
