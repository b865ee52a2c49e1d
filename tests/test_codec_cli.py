"""Public API and command line on a tiny seeded model: round trips, formats, errors."""

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import spectrostream
from spectrostream import bitstream, files
from spectrostream.audio_io import AudioError
from spectrostream.cli import main
from spectrostream.codec import Codec, load
from spectrostream.config import tiny_config
from spectrostream.model import SpectroStream
from spectrostream.official import ModelError

ROOT = Path(__file__).resolve().parents[1]


def make_codec(seed: int = 0, **kw) -> Codec:
    torch.manual_seed(seed)
    return Codec(SpectroStream(tiny_config(**kw)))


@pytest.fixture(scope="module")
def codec():
    return make_codec(num_levels=16, codebook_size=1024)


@pytest.fixture(scope="module")
def model_file(codec, tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    codec.save(p)
    return p


def tone(sr=44100, seconds=1.5, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = [
        0.3 * np.sin(2 * np.pi * (330 + 110 * c) * t) + 0.05 * rng.standard_normal(len(t))
        for c in range(channels)
    ]
    return np.stack(x).astype(np.float32)


def test_encode_shapes_and_rate(codec):
    x = tone(sr=48000, seconds=1.0)
    codes = codec.encode(x, 48000, kbps=2)
    assert codes.dtype == torch.int64
    assert codes.shape == (1, 8, 25 + 1)  # 2 kbps = 8 levels; one extra look-ahead frame
    assert codes.max() < 1024 and codes.min() >= 0
    batch = codec.encode(np.stack([x, x[::-1].copy()]), 48000, levels=3)
    assert batch.shape == (2, 3, 26)
    assert torch.equal(batch[0], codec.encode(x, 48000, levels=3)[0])
    out = codec.decode(codes)
    assert out.shape == (1, 2, 25 * 1920)
    # Any prefix of the levels is the lower rate.
    assert torch.equal(codec.encode(x, 48000, levels=16)[:, :8], codes)


def test_compress_decompress_restores_rate_length_channels(codec):
    for sr, ch in ((44100, 2), (22050, 1), (48000, 2)):
        x = tone(sr=sr, seconds=0.7, channels=ch)
        data = codec.compress(x, sr, levels=4)
        y, out_sr = codec.decompress(data)
        assert out_sr == sr and y.shape == x.shape
        h, _ = bitstream.decode_stream(data)
        assert (h.sample_rate, h.channels, h.num_samples, h.num_levels) == (sr, ch, x.shape[1], 4)
    y96, sr96 = codec.decompress(data, sample_rate=16000)
    assert sr96 == 16000 and y96.shape == (2, int(0.7 * 16000))


def test_mono_is_dual_mono(codec):
    x = tone(sr=48000, seconds=0.5, channels=1)
    dual = np.repeat(x, 2, axis=0)
    assert torch.equal(codec.encode(x, 48000), codec.encode(dual, 48000))
    y, _ = codec.decompress(codec.compress(x, 48000))
    full = codec.decode(codec.encode(dual, 48000), length=x.shape[1])[0]
    assert torch.allclose(y[0], full.mean(0), atol=1e-6)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 4800), np.float32), "3 channels"),
        (np.zeros((2, 0), np.float32), "no samples"),
        (np.full((2, 4800), np.nan, np.float32), "NaN"),
        (np.zeros((1, 1, 1, 10), np.float32), "shape"),
    ],
)
def test_bad_audio_is_a_clear_error(codec, bad, match):
    with pytest.raises(AudioError, match=match):
        codec.encode(bad, 48000)


def test_bad_rates(codec):
    with pytest.raises(ValueError, match="levels"):
        codec.encode(tone(), 44100, levels=17)
    with pytest.raises(ValueError, match="below one quantizer level"):
        codec.encode(tone(), 44100, kbps=0.1)


def test_other_models_file_is_rejected(codec):
    other = make_codec(seed=1, num_levels=16, codebook_size=1024)
    data = other.compress(tone(), 44100, levels=2)
    with pytest.raises(bitstream.BitstreamError, match="model"):
        codec.decompress(data)


def test_save_load_strict(codec, model_file, tmp_path):
    again = load(model_file)
    assert again.model_id == codec.model_id
    x = tone()
    assert codec.compress(x, 44100) == again.compress(x, 44100)
    from safetensors.torch import load_file, save_file

    state = load_file(model_file)
    from safetensors import safe_open

    with safe_open(str(model_file), "pt") as f:
        meta = f.metadata()
    state.pop(next(iter(state)))
    save_file(state, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(ModelError, match="missing"):
        load(tmp_path / "broken.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable"):
        load(tmp_path / "junk.safetensors")
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        load("no-such-model")
    with pytest.raises(ModelError, match="no such model file"):
        load(tmp_path / "missing.safetensors")


def test_file_streaming_equals_in_memory(codec, tmp_path):
    x = tone(seconds=11.3)  # longer than one 5 s processing chunk
    sf.write(tmp_path / "a.wav", x.T, 44100, subtype="FLOAT")
    buf = io.BytesIO()
    files.encode_file(codec, tmp_path / "a.wav", buf, levels=6)
    assert buf.getvalue() == codec.compress(x, 44100, levels=6)
    buf.seek(0)
    files.decode_file(codec, buf, tmp_path / "b.wav", subtype="FLOAT")
    y, sr = sf.read(tmp_path / "b.wav", dtype="float32")
    ref, _ = codec.decompress(buf.getvalue())
    assert sr == 44100 and y.shape == x.T.shape
    assert np.abs(y.T - ref.numpy()).max() < 1e-5


# ---- command line --------------------------------------------------------------------------
def test_cli_file_round_trip_info_transcode(model_file, tmp_path, run_cli):
    x = tone(seconds=2.0)
    sf.write(tmp_path / "in.flac", x.T, 44100)
    assert (
        main(
            [
                "encode",
                str(tmp_path / "in.flac"),
                str(tmp_path / "a.ssc"),
                "--model",
                str(model_file),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "encode",
                str(tmp_path / "in.flac"),
                str(tmp_path / "b.ssc"),
                "--kbps",
                "1",
                "--model",
                str(model_file),
            ]
        )
        == 0
    )
    assert main(["transcode", str(tmp_path / "a.ssc"), str(tmp_path / "c.ssc"), "--kbps", "1"]) == 0
    assert (tmp_path / "b.ssc").read_bytes() == (tmp_path / "c.ssc").read_bytes()
    assert (
        main(
            [
                "decode",
                str(tmp_path / "b.ssc"),
                str(tmp_path / "out.wav"),
                "--model",
                str(model_file),
            ]
        )
        == 0
    )
    y, sr = sf.read(tmp_path / "out.wav")
    assert sr == 44100 and y.shape == x.T.shape
    assert (
        main(
            [
                "decode",
                str(tmp_path / "b.ssc"),
                str(tmp_path / "o48.flac"),
                "--sr",
                "48000",
                "--model",
                str(model_file),
            ]
        )
        == 0
    )
    assert sf.info(str(tmp_path / "o48.flac")).samplerate == 48000
    assert (
        main(
            [
                "roundtrip",
                str(tmp_path / "in.flac"),
                str(tmp_path / "rt.wav"),
                "--levels",
                "4",
                "--model",
                str(model_file),
            ]
        )
        == 0
    )
    assert sf.info(str(tmp_path / "rt.wav")).frames == x.shape[1]
    r = run_cli("info", tmp_path / "b.ssc")
    assert r.returncode == 0 and b"44100" in r.stdout and b"4 " in r.stdout
    # -o OUTPUT is the same as the positional OUTPUT (tokenize, export and eval spell it so).
    m = ["--model", str(model_file)]
    assert main(["encode", "-o", str(tmp_path / "d.ssc"), str(tmp_path / "in.flac"), *m]) == 0
    assert (tmp_path / "d.ssc").read_bytes() == (tmp_path / "a.ssc").read_bytes()
    assert (
        main(["transcode", str(tmp_path / "a.ssc"), "-o", str(tmp_path / "e.ssc"), "--kbps", "1"])
        == 0
    )
    assert (tmp_path / "e.ssc").read_bytes() == (tmp_path / "c.ssc").read_bytes()


def test_cli_stdin_stdout(model_file, tmp_path, run_cli):
    x = tone(seconds=1.0)
    wav = io.BytesIO()
    sf.write(wav, x.T, 44100, format="WAV")
    enc = run_cli("encode", "-", "-", "--levels", "3", "--model", model_file, stdin=wav.getvalue())
    assert enc.returncode == 0, enc.stderr
    h, codes = bitstream.decode_stream(enc.stdout)
    assert h.num_samples == x.shape[1] and codes.shape[0] == 3
    dec = run_cli("decode", "-", "-", "--model", model_file, stdin=enc.stdout)
    assert dec.returncode == 0, dec.stderr
    y, sr = sf.read(io.BytesIO(dec.stdout))
    assert sr == 44100 and y.shape == x.T.shape


def test_cli_directory_mirrors_tree_and_shards(model_file, tmp_path, monkeypatch):
    src = tmp_path / "music"
    for rel in ("a.wav", "sub/b.flac", "sub/deeper/c.ogg"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(src / rel, tone(seconds=0.5).T, 44100)
    (src / "notes.txt").write_text("not audio")
    assert (
        main(
            [
                "encode",
                str(src),
                str(tmp_path / "codes"),
                "--levels",
                "2",
                "--model",
                str(model_file),
            ]
        )
        == 0
    )
    got = sorted(
        p.relative_to(tmp_path / "codes").as_posix() for p in (tmp_path / "codes").rglob("*.ssc")
    )
    assert got == ["a.wav.ssc", "sub/b.flac.ssc", "sub/deeper/c.ogg.ssc"]
    assert (
        main(["decode", str(tmp_path / "codes"), str(tmp_path / "wav"), "--model", str(model_file)])
        == 0
    )
    assert len(list((tmp_path / "wav").rglob("*.wav"))) == 3
    # torchrun-style sharding: ranks split the files, together they cover all of them.
    shards = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        out = tmp_path / f"rank{rank}"
        assert (
            main(["encode", str(src), str(out), "--levels", "2", "--model", str(model_file)]) == 0
        )
        shards.append({p.relative_to(out).as_posix() for p in out.rglob("*.ssc")})
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(got)


def test_cli_user_errors_exit_2(model_file, tmp_path, capsys, run_cli):
    (tmp_path / "t.txt").write_text("hello")
    (tmp_path / "t.wav").write_text("hello")
    x = tone(seconds=0.5, channels=3)
    sf.write(tmp_path / "three.wav", x.T, 44100)
    cases = [
        ["encode", str(tmp_path / "t.wav"), str(tmp_path / "o.ssc"), "--model", str(model_file)],
        [
            "encode",
            str(tmp_path / "missing.wav"),
            str(tmp_path / "o.ssc"),
            "--model",
            str(model_file),
        ],
        [
            "encode",
            str(tmp_path / "three.wav"),
            str(tmp_path / "o.ssc"),
            "--model",
            str(model_file),
        ],
        ["encode", str(tmp_path / "three.wav"), str(tmp_path / "o.ssc"), "--model", "nosuch"],
        ["decode", str(tmp_path / "t.txt"), str(tmp_path / "o.wav"), "--model", str(model_file)],
        ["info", str(tmp_path / "t.txt")],
        [
            "encode",
            str(tmp_path / "three.wav"),
            str(tmp_path / "o.ssc"),
            "--model",
            str(tmp_path / "nope.safetensors"),
        ],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("spectrostream: error: ") and "Traceback" not in err, err
    assert not (tmp_path / "o.ssc").exists()  # no partial output left behind
    for argv in (["decode", str(tmp_path / "t.txt")], ["roundtrip", "a", "b", "-o", "c"]):
        r = run_cli(*argv)
        assert r.returncode == 2 and b"usage: spectrostream" in r.stderr, argv
        assert b"the output is " in r.stderr and b"Traceback" not in r.stderr, r.stderr
    r = run_cli("encode", tmp_path / "three.wav", tmp_path / "o.ssc", "--model", model_file)
    assert r.returncode == 2 and b"3 channels" in r.stderr and b"Traceback" not in r.stderr


def test_package_api_names():
    assert spectrostream.load is load
    assert callable(spectrostream.Codec.compress) and callable(spectrostream.Codec.decompress)
