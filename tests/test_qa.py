"""Regressions from a newcomer's pass over README and docs: careless inputs get one line that
names the input, exit status 2, and nothing written.

The first case runs the real command in a subprocess (exit status and stderr as a user sees
them); the rest call ``main`` in-process, which goes through the same error handler.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from spectrostream import bitstream
from spectrostream.cli import build_parser, main
from spectrostream.codec import Codec
from spectrostream.config import tiny_config
from spectrostream.model import SpectroStream

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ssc(tmp_path_factory) -> Path:
    """A real .ssc file (tiny seeded model, 0.5 s); the model beside it as tiny.safetensors."""
    torch.manual_seed(0)
    codec = Codec(SpectroStream(tiny_config(num_levels=4, codebook_size=1024)))
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("ssc") / "a.ssc"
    path.write_bytes(
        codec.compress(0.1 * rng.standard_normal((2, 24000)).astype(np.float32), 48000)
    )
    codec.save(path.with_name("tiny.safetensors"))
    return path


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() if p.is_file() else b"<dir>" for p in folder.iterdir()}


def test_info_of_a_non_ssc_file_names_it_in_one_line(tmp_path):
    bad = tmp_path / "song.wav"
    sf.write(bad, np.zeros((4800, 2), np.float32), 48000)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "spectrostream", "info", str(bad)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"spectrostream: error: {bad}: not an .ssc file: wrong magic b'RIFF'"
    ]


@pytest.mark.parametrize("command", ["info", "transcode"])
def test_ssc_errors_name_the_input(command, tmp_path, capsys):
    bad = tmp_path / "junk.ssc"
    bad.write_bytes(b"junk" * 10)
    argv = [command, str(bad)] + (
        [str(tmp_path / "out.ssc"), "--levels", "2"] * (command == "transcode")
    )
    before = files_in(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"spectrostream: error: {bad}: not an .ssc file: wrong magic b'junk'"
    assert files_in(tmp_path) == before  # the input unchanged, no output or temporary file


def test_cut_ssc_named_once(ssc, tmp_path, capsys):
    """transcode of a cut file: the message names it once (not 'a.ssc: a.ssc: ...')."""
    cut = tmp_path / "cut.ssc"
    cut.write_bytes(ssc.read_bytes()[:-10])
    assert main(["transcode", str(cut), str(tmp_path / "out.ssc"), "--levels", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"spectrostream: error: {cut}: truncated .ssc stream")
    assert err.count(str(cut)) == 1
    assert sorted(files_in(tmp_path)) == ["cut.ssc"]


def test_report_that_is_a_directory_is_refused_before_any_output(ssc, tmp_path, capsys):
    (tmp_path / "reports").mkdir()
    out = tmp_path / "a.wav"
    argv = ["decode", str(ssc), str(out), "--report", str(tmp_path / "reports")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"spectrostream: error: {tmp_path / 'reports'}: is a directory; --report needs a file name"
    )
    assert not out.exists()
    assert sorted(files_in(tmp_path)) == ["reports"]


def test_tokenize_workers_default_fits_the_machine():
    """torch warns (twice) when a DataLoader has more workers than CPUs: the default does not."""
    args = build_parser().parse_args(["tokenize", "dir", "-o", "out"])
    assert 1 <= args.workers <= min(4, os.cpu_count() or 1)


def test_header_bytes_of_format_md_match_the_reader(ssc):
    """docs/format.md: the header is 30 + m bytes and the end packet 17."""
    data = ssc.read_bytes()
    header, codes = bitstream.decode_stream(data)
    m = len(header.model_id.encode())
    packets = -(-codes.shape[1] // 25)
    payload = sum(-(-codes.shape[0] * n * 10 // 8) for n in [25] * (packets - 1))
    payload += -(-codes.shape[0] * (codes.shape[1] - 25 * (packets - 1)) * 10 // 8)
    assert len(data) == (30 + m) + packets * 5 + payload + 17


def test_damage_with_nothing_intact_does_not_suggest_salvage(ssc, tmp_path, capsys):
    """A file cut inside its first packet: --salvage would recover nothing, so it is not offered."""
    cut = tmp_path / "cut.ssc"
    cut.write_bytes(ssc.read_bytes()[:60])
    model = str(ssc.with_name("tiny.safetensors"))
    assert main(["decode", str(cut), str(tmp_path / "out.wav"), "--model", model]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"spectrostream: error: {cut}: truncated .ssc stream")
    assert err.endswith("; nothing before the damage is intact")
    assert sorted(files_in(tmp_path)) == ["cut.ssc"]


def test_output_folder_with_trailing_slash_is_created(ssc, tmp_path):
    """``decode a.ssc new/`` writes new/a.wav (as for an existing folder), not 'Not a directory'."""
    model = str(ssc.with_name("tiny.safetensors"))
    assert main(["decode", str(ssc), f"{tmp_path}/new/", "--model", model]) == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.wav"]
    assert sf.info(tmp_path / "new" / "a.wav").frames == 24000


def test_tokenize_names_an_unreadable_file_once(ssc, tmp_path, capsys):
    src = tmp_path / "music"
    src.mkdir()
    sf.write(src / "good.wav", np.zeros((4800, 2), np.float32), 48000)
    (src / "bad.wav").write_bytes(b"junk")
    model = str(ssc.with_name("tiny.safetensors"))
    argv = ["tokenize", str(src), "-o", str(tmp_path / "out"), "--workers", "0", "--model", model]
    assert main(argv) == 0
    bad_lines = [line for line in capsys.readouterr().err.splitlines() if "bad.wav" in line]
    assert len(bad_lines) == 1
    assert bad_lines[0].startswith("spectrostream: could not read bad.wav: not a recognised")
    assert bad_lines[0].count("bad.wav") == 1


def test_convert_official_never_overwrites_an_input(tmp_path, capsys):
    """``convert-official --encoder e.safetensors ... -o e.safetensors`` replaced its input."""
    from safetensors.numpy import save_file

    enc = tmp_path / "encoder.safetensors"
    save_file({"params/encoder/x": np.zeros(3, np.float32)}, str(enc))
    before = enc.read_bytes()
    assert main(["convert-official", "--encoder", str(enc), "-o", str(enc)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"spectrostream: error: {enc}: refusing to overwrite the input {enc}"
    assert enc.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.safetensors"]


def test_roundtrip_from_stdin_names_it_stdin(ssc, tmp_path, monkeypatch, capsys):
    wav = tmp_path / "in.wav"
    sf.write(wav, 0.1 * np.ones((4800, 2), np.float32), 48000)
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(wav.read_bytes())))
    model = str(ssc.with_name("tiny.safetensors"))
    assert main(["roundtrip", "-", str(tmp_path / "out.wav"), "--model", model]) == 0
    assert capsys.readouterr().err.startswith("<stdin>: ")
    assert sf.info(tmp_path / "out.wav").frames == 4800


def test_export_never_overwrites_the_checkpoint_it_reads(tmp_path, capsys):
    """``export runs/x/checkpoints/step_2.pt -o <same file or a hard link>`` replaced the input."""
    ckpt = tmp_path / "step_00000002.pt"
    ckpt.write_bytes(b"PK\x03\x04 a checkpoint")
    link = tmp_path / "link.safetensors"
    os.link(ckpt, link)
    for out in (ckpt, link):
        assert main(["export", str(ckpt), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"spectrostream: error: {out}: refusing to overwrite the input {ckpt}"
    assert ckpt.read_bytes() == b"PK\x03\x04 a checkpoint"
    assert sorted(files_in(tmp_path)) == ["link.safetensors", "step_00000002.pt"]


def test_export_of_a_non_checkpoint_says_so_in_one_line(ssc, tmp_path, capsys):
    """Audio or .ssc given to export: one line, no checksum warning, no torch advice."""
    wav = tmp_path / "song.wav"
    sf.write(wav, np.zeros((4800, 2), np.float32), 48000)
    out = tmp_path / "m.safetensors"
    for src in (wav, ssc):
        assert main(["export", str(src), "-o", str(out)]) == 2
        want = f"spectrostream: error: {src} is not a spectrostream training checkpoint"
        assert capsys.readouterr().err.splitlines() == [want + " (not a zip file)"]
    pickled = tmp_path / "other.pt"
    torch.save({"args": argparse.Namespace(a=1)}, pickled)  # needs weights_only=False
    assert main(["export", str(pickled), "-o", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"spectrostream: error: cannot read checkpoint {pickled}: it holds objects other than "
        "tensors and plain data, which are never unpickled"
    )
    assert not out.exists()


def test_train_with_audio_as_config_is_one_line(tmp_path, capsys):
    """``train song.wav --data D`` gave a UnicodeDecodeError traceback."""
    wav = tmp_path / "song.wav"
    sf.write(wav, np.random.default_rng(0).uniform(-0.5, 0.5, (4800, 2)), 48000)
    out = tmp_path / "run"
    argv = ["train", str(wav), "--data", str(tmp_path), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"spectrostream: error: {wav}: not a UTF-8 TOML file"]
    assert not out.exists()


def test_unreachable_hub_fails_fast_in_one_line_naming_the_revision(tmp_path, capsys):
    """HF_ENDPOINT at a closed port: huggingface_hub retried for ~25 s and printed ~11 lines."""
    import time

    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
        mp.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}",
        )
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        mp.setenv("HF_HOME", str(tmp_path))
        t0 = time.monotonic()
        argv = ["encode", "x.wav", "x.ssc", "--model", "magenta-rt", "--revision", "v7"]
        assert main(argv) == 2
        elapsed = time.monotonic() - t0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "the Hub is unreachable" in err[0], err
    assert "/tree/v7/resources/spectrostream" in err[0]
    assert elapsed < 10


def test_tokenize_shards_modes_summary_and_refusals(ssc, tmp_path, capsys):
    """Shards get the usual file mode (not 0600); failures are not counted as coded; another
    --shard-files into the same folder is refused instead of writing a second set beside."""
    src = tmp_path / "music"
    src.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(src / name, np.zeros((4800, 2), np.float32), 48000)
    (src / "bad.wav").write_bytes(b"junk")
    out = tmp_path / "out"
    model = str(ssc.with_name("tiny.safetensors"))
    argv = ["tokenize", str(src), "-o", str(out), "--workers", "0", "--model", model]
    assert main([*argv, "--shard-files", "2"]) == 0
    assert "; 2 files (0.00 h) coded on" in capsys.readouterr().err
    umask = os.umask(0)
    os.umask(umask)
    shards = sorted(out.iterdir())
    assert [p.name for p in shards] == [f"shard-0000{k}-of-00002.safetensors" for k in (0, 1)]
    assert {p.stat().st_mode & 0o777 for p in shards} == {0o666 & ~umask}
    assert main([*argv, "--shard-files", "1"]) == 2
    why = "(2 shards, not 3: another --shard-files, or files added or removed)"
    assert capsys.readouterr().err.splitlines() == [
        f"spectrostream: error: {shards[0]} was made by another run {why}; use a new output folder"
    ]
    assert sorted(out.iterdir()) == shards


def test_tokenize_output_that_is_a_file_says_it_must_be_a_folder(ssc, tmp_path, capsys):
    src = tmp_path / "music"
    src.mkdir()
    sf.write(src / "a.wav", np.zeros((4800, 2), np.float32), 48000)
    out = tmp_path / "tokens.safetensors"
    out.write_bytes(b"mine")
    model = str(ssc.with_name("tiny.safetensors"))
    assert main(["tokenize", str(src), "-o", str(out), "--workers", "0", "--model", model]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"spectrostream: error: {out}: exists and is not a folder; -o names a folder for the shards"
    ]
    assert out.read_bytes() == b"mine"


def test_export_onnx_outputs_have_the_usual_mode_and_a_file_target_is_refused(
    ssc, tmp_path, capsys
):
    model = str(ssc.with_name("tiny.safetensors"))
    taken = tmp_path / "graphs.onnx"
    taken.write_bytes(b"mine")
    assert main(["export-onnx", model, "-o", str(taken)]) == 2
    why = "exists and is not a directory; -o names a directory for the graphs"
    assert capsys.readouterr().err.splitlines() == [f"spectrostream: error: {taken}: {why}"]
    assert taken.read_bytes() == b"mine"
    out = tmp_path / "onnx"
    assert main(["export-onnx", model, "-o", str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    names = ["decoder_step.onnx", "encoder_step.onnx", "steps.json"]
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary file left
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}


def test_model_paths_that_are_not_regular_files_say_what_they_are(ssc, tmp_path, capsys):
    """``--checkpoint DIR`` and ``--model /dev/null`` said "no such file"."""
    from safetensors.numpy import save_file

    enc = tmp_path / "encoder.safetensors"
    save_file({"params/encoder/x": np.zeros(3, np.float32)}, str(enc))
    out = str(tmp_path / "m.safetensors")
    assert (
        main(["convert-official", "--encoder", str(enc), "--checkpoint", str(tmp_path), "-o", out])
        == 2
    )
    assert capsys.readouterr().err.splitlines() == [
        f"spectrostream: error: {tmp_path}: is a directory"
    ]
    assert main(["decode", str(ssc), str(tmp_path / "a.wav"), "--model", os.devnull]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"spectrostream: error: {os.devnull}: not a regular file; --model takes a model file or name"
    ]


def test_mrt_codes_refuse_negative_samples_and_audio_io_suggests_transposing():
    from spectrostream.errors import AudioError, UsageError

    codec = Codec(SpectroStream(tiny_config(num_levels=4, codebook_size=1024)))
    with pytest.raises(UsageError, match="num_samples must be >= 0, got -5"):
        codec.to_mrt_codes(torch.zeros(4, 3, dtype=torch.long), num_samples=-5)
    with pytest.raises(AudioError, match=r"looks like \[samples, channels\].*transpose"):
        codec.encode(np.zeros((4800, 2), np.float32), 48000)
    with pytest.raises(AudioError, match="6 channels; expected 2"):  # a real [C, T] mismatch
        codec.encode(np.zeros((6, 4800), np.float32), 48000)


def test_step_casts_fp32_input_to_a_bf16_model():
    from spectrostream.step import decoder_step, encoder_step

    torch.manual_seed(0)
    model = SpectroStream(tiny_config()).eval()
    x = torch.randn(encoder_step(model).example_shape)
    want = encoder_step(model)(x, *encoder_step(model).initial_state())[0]
    model = model.to(torch.bfloat16)
    for make in (encoder_step, decoder_step):
        step = make(model)
        states = [s.float() for s in step.initial_state()]
        y = step(torch.randn(step.example_shape), *states)[0]  # fp32 in: no dtype error
        assert y.dtype == torch.bfloat16
    got = encoder_step(model)(x, *encoder_step(model).initial_state())[0]
    assert (got.float() - want).abs().max() <= 0.02 * want.abs().max()
