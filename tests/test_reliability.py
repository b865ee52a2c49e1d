"""No user action loses data (issue 10): one test per reproduced case.

CLI cases run the real command in a subprocess where that is the point (exit status, one-line
stderr, files on disk); cases that need a fault injected (disk full, read-only) run ``main``
in-process with the fault monkeypatched. A tiny seeded model keeps every case to seconds.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from spectrostream import atomic, bitstream
from spectrostream.cli import main
from spectrostream.codec import Codec, load
from spectrostream.config import tiny_config
from spectrostream.errors import AudioError, ModelError, SpectroStreamError, UsageError
from spectrostream.model import SpectroStream, StreamingDecoder, StreamingEncoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def codec() -> Codec:
    torch.manual_seed(0)
    return Codec(SpectroStream(tiny_config(num_levels=16, codebook_size=1024)))


@pytest.fixture(scope="module")
def model(codec, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    codec.save(p)
    return p


def tone(seconds: float = 1.0, sr: int = 44100, channels: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = [0.3 * np.sin(2 * np.pi * (200 + 150 * c + 40 * seed) * t) for c in range(channels)]
    return (np.stack(x) + 0.02 * rng.standard_normal((channels, len(t)))).astype(np.float32)


def write(path: Path, seconds: float = 1.0, seed: int = 0, sr: int = 44100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, sr, seed=seed).T, sr)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def here(capsys, monkeypatch):
    """The same command run in this process (``main``): a CompletedProcess-like result.

    Each test runs its first case through a real subprocess (``run_cli``); the rest go through
    the same entry point here, which is several seconds faster per call."""

    def run(*args: object, stdin: bytes | None = None) -> SimpleNamespace:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(stdin)))
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stderr=captured.err.encode())

    return run


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("spectrostream: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(atomic.TEMP_PREFIX)]


# ---- data loss and corruption --------------------------------------------------------------
def test_directory_outputs_keep_the_source_extension(model, tmp_path, here, run_cli):
    """a.wav and a.flac used to map to one a.ssc; roundtrip DIR DIR overwrote e.wav."""
    src = tmp_path / "music"
    write(src / "a.wav", 0.5, seed=1)
    write(src / "a.flac", 0.8, seed=2)
    before = {p.name: digest(p) for p in src.iterdir()}
    r = run_cli("encode", src, tmp_path / "codes", "--levels", "2", "--model", model)
    assert r.returncode == 0, r.stderr
    lengths = {
        p.name: bitstream.decode_stream(p.read_bytes())[0].num_samples
        for p in (tmp_path / "codes").iterdir()
    }
    assert lengths == {"a.wav.ssc": 22050, "a.flac.ssc": 35280}
    r = here("decode", tmp_path / "codes", tmp_path / "dec", "--model", model)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["a.flac.wav", "a.wav.wav"]
    assert sf.info(str(tmp_path / "dec" / "a.flac.wav")).frames == 35280
    r = here("roundtrip", src, src, "--levels", "2", "--model", model)
    assert r.returncode == 0, r.stderr
    assert {p.name: digest(p) for p in src.iterdir() if p.name in before} == before
    assert sf.info(str(src / "a.flac.wav")).frames == 35280


def test_output_that_is_an_input_is_refused(model, tmp_path, here, run_cli):
    x = write(tmp_path / "x.wav")
    h = digest(x)
    os.link(x, tmp_path / "hard.wav")
    (tmp_path / "sym.ssc").symlink_to(x)
    cases = [
        ("encode", x, x, "--force"),
        ("roundtrip", x, x),
        ("roundtrip", x, tmp_path / "hard.wav"),
        ("encode", x, tmp_path / "sym.ssc"),
    ]
    for i, case in enumerate(cases):
        r = (run_cli if i == 0 else here)(*case, "--model", model)
        assert_one_line_error(r, "refusing to overwrite the input")
    assert digest(x) == h and digest(tmp_path / "hard.wav") == h


def test_ssc_bytes_to_an_audio_name_need_force(model, tmp_path, run_cli):
    x = write(tmp_path / "x.wav")
    r = run_cli("encode", x, tmp_path / "out.flac", "--levels", "1", "--model", model)
    assert_one_line_error(r, "out.flac", "--force")
    assert not (tmp_path / "out.flac").exists()
    assert (
        main(["encode", str(x), str(tmp_path / "o.ssc"), "--levels", "2", "--model", str(model)])
        == 0
    )
    assert (
        main(["transcode", str(tmp_path / "o.ssc"), str(tmp_path / "t.wav"), "--levels", "1"]) == 2
    )
    args = ["encode", str(x), str(tmp_path / "out.flac"), "--force", "--levels", "1"]
    assert main([*args, "--model", str(model)]) == 0
    assert (tmp_path / "out.flac").read_bytes()[:4] == bitstream.MAGIC


def test_temp_files_are_unique_and_never_left_behind(tmp_path):
    target = tmp_path / "out.wav"
    with atomic.atomic_path(target) as a, atomic.atomic_path(target) as b:
        assert a != b and Path(a).parent == Path(b).parent == tmp_path
        Path(a).write_bytes(b"first")
        Path(b).write_bytes(b"second")
    assert target.read_bytes() == b"first"  # each rename is whole; the last one wins
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as c:
        Path(c).write_bytes(b"partial")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"first" and no_temp_files(tmp_path)


def test_setup_errors_name_the_users_path(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(OSError, match="not a directory") as e,
        atomic.atomic_path(tmp_path / "file" / "out.ssc"),
    ):
        pass
    assert e.value.filename == str(tmp_path / "file")

    def refused(prefix, suffix, dir):  # as /proc refuses new files: the error names the temp
        raise OSError(errno.ENOENT, "No such file or directory", f"{dir}/{prefix}x{suffix}")

    monkeypatch.setattr("spectrostream.atomic.tempfile.mkstemp", refused)
    with pytest.raises(OSError) as e, atomic.atomic_path(tmp_path / "out.ssc"):
        pass
    assert e.value.filename == str(tmp_path / "out.ssc")


def test_two_processes_writing_one_output_leave_one_whole_file(model, tmp_path):
    """Both racers used to share OUT.part: a CRC-broken file was reported as success."""
    a, b = write(tmp_path / "a.wav", 1.5, seed=1), write(tmp_path / "b.wav", 1.5, seed=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    out = tmp_path / "same.ssc"
    cmd = [sys.executable, "-m", "spectrostream", "encode"]
    procs = [
        subprocess.Popen([*cmd, str(src), str(out), "--model", str(model)], env=env)
        for src in (a, b)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    header, _ = bitstream.decode_stream(out.read_bytes())  # CRCs all check
    assert header.num_samples == 66150 and no_temp_files(tmp_path)


def _cut_before_end(model: Path, tmp_path: Path) -> tuple[Path, int]:
    x = write(tmp_path / "long.wav", 4.0)
    assert main(["encode", str(x), str(tmp_path / "full.ssc"), "--model", str(model)]) == 0
    data = (tmp_path / "full.ssc").read_bytes()
    cut = tmp_path / "cut.ssc"
    cut.write_bytes(data[:-20])  # the end packet and part of the last data packet are gone
    return cut, len(data)


def test_truncated_stream_error_says_what_is_intact_and_salvage_decodes_it(
    model, tmp_path, here, run_cli
):
    cut, _ = _cut_before_end(model, tmp_path)
    r = run_cli("decode", cut, tmp_path / "out.wav", "--model", model)
    line = assert_one_line_error(r, "truncated", "are intact", "--salvage")
    intact = float(line.split("the first ")[1].split(" s")[0])
    assert 2.5 < intact < 4.0
    assert not (tmp_path / "out.wav").exists() and no_temp_files(tmp_path)
    r = here("decode", cut, tmp_path / "out.wav", "--salvage", "--model", model)
    assert r.returncode == 0 and b"salvaged" in r.stderr, r.stderr
    frames = sf.info(str(tmp_path / "out.wav")).frames
    assert abs(frames / 44100 - intact) < 0.1


# ---- one-line errors instead of tracebacks -------------------------------------------------
def test_os_errors_name_the_path_and_leave_nothing(model, tmp_path, monkeypatch, capsys, run_cli):
    x = write(tmp_path / "x.wav")
    out = tmp_path / "out" / "x.ssc"
    argv = ["encode", str(x), str(out), "--model", str(model)]

    def disk_full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(bitstream.StreamWriter, "_emit", disk_full)
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"spectrostream: error: {out}: No space left on device"
    assert not out.exists() and no_temp_files(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out"))

    with monkeypatch.context() as m:
        m.setattr("spectrostream.atomic.tempfile.mkstemp", read_only)
        assert main(argv) == 2
    assert "Read-only file system" in capsys.readouterr().err
    long_name = tmp_path / ("n" * 300 + ".ssc")
    r = run_cli("encode", x, long_name, "--model", model)
    assert_one_line_error(r, "File name too long", "nnnn")
    assert no_temp_files(tmp_path)
    (tmp_path / "ok" / ("n" * 240 + ".ssc")).parent.mkdir()
    assert (
        main(["encode", str(x), str(tmp_path / "ok" / ("n" * 240 + ".ssc")), "--model", str(model)])
        == 0
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["encode", "IN", "OUT.ssc", "--levels", "0"],
        ["encode", "IN", "OUT.ssc", "--levels", "-1"],
        ["encode", "IN", "OUT.ssc", "--levels", "2.5"],
        ["encode", "IN", "OUT.ssc", "--kbps", "inf"],
        ["encode", "IN", "OUT.ssc", "--kbps", "nan"],
        ["encode", "IN", "OUT.ssc", "--kbps", "-3"],
        ["transcode", "IN", "OUT.ssc", "--kbps", "nan"],
        ["decode", "IN", "OUT.wav", "--sr", "0"],
        ["decode", "IN", "OUT.wav", "--sr", "-5"],
        ["roundtrip", "IN", "OUT.wav", "--sr", "1e9"],
    ],
)
def test_bad_arguments_are_refused_at_parse_time(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: argument" in err


def test_rates_above_the_model_or_file_are_errors_everywhere(model, tmp_path, run_cli):
    """encode --kbps 100 was silently clamped while transcode --kbps 100 failed: one rule."""
    x = write(tmp_path / "x.wav")
    ssc = tmp_path / "x.ssc"
    assert main(["encode", str(x), str(ssc), "--levels", "4", "--model", str(model)]) == 0
    cases = [
        (["encode", x, tmp_path / "a.ssc", "--kbps", "100"], "above the maximum, 4 kbps"),
        (["encode", x, tmp_path / "a.ssc", "--kbps", "1e308"], "above the maximum"),
        (["encode", x, tmp_path / "a.ssc", "--levels", "65"], "levels must be in 1..16"),
        (["roundtrip", x, tmp_path / "a.wav", "--kbps", "4.5"], "above the maximum"),
        (["transcode", ssc, tmp_path / "t.ssc", "--kbps", "100"], "above the maximum, 1 kbps"),
        (["transcode", ssc, tmp_path / "t.ssc", "--kbps", "0.1"], "below one quantizer level"),
    ]
    for i, (argv, needle) in enumerate(cases):
        if argv[0] != "transcode":
            argv = [*argv, "--model", model]
        if i == 0:  # one through the real entry point; the same handler serves the rest
            assert_one_line_error(run_cli(*argv), needle)
            continue
        assert main([str(a) for a in argv]) == 2, argv
    assert not list(tmp_path.glob("a.*")) and not list(tmp_path.glob("t.*"))


@pytest.mark.parametrize("config", [tiny_config(), tiny_config(audio_channels=1, num_levels=3)])
def test_expected_shapes_match_the_network(config):
    """load() checks files against expected_shapes before building: it must not drift."""
    from spectrostream.codec import expected_shapes

    built = {k: tuple(v.shape) for k, v in SpectroStream(config).state_dict().items()}
    assert expected_shapes(config) == built


def test_model_file_config_is_checked_before_allocating(model, tmp_path, run_cli):
    from safetensors.torch import save_file

    cfg = tiny_config().to_dict()
    huge = dict(cfg, encoder_channels=[4096] * 7, decoder_channels=[4096] * 6, fused_channels=4096)
    meta = {"format": "spectrostream", "format_version": "1", "model_id": "ss-x"}
    cases = {
        "huge.safetensors": (huge, "has shape"),
        "float.safetensors": (dict(cfg, num_levels=8.0), "num_levels must be an integer"),
        "unbounded.safetensors": (dict(cfg, codebook_size=10**9), "codebook_size must be in"),
        "tuple.safetensors": (dict(cfg, decoder_channels=[8]), "decoder_channels needs 6"),
    }
    small = {"quantizer.codebooks": torch.zeros(1, 1, 1)}
    for name, (config, needle) in cases.items():
        p = tmp_path / name
        save_file(
            small, str(p), metadata={**meta, "config": json.dumps(config), "parts": "quantizer"}
        )
        assert p.stat().st_size < 2000
        with pytest.raises(ModelError, match=needle):
            load(p)
    r = run_cli("info", tmp_path)  # also: `info DIR` named a missing file
    assert_one_line_error(r, str(tmp_path), "is a directory")


# ---- Python API ----------------------------------------------------------------------------
def test_streams_reject_bad_chunks_and_stay_usable(codec):
    m = codec.model
    x = torch.from_numpy(tone(0.5, 48000))[None]
    with StreamingEncoder(m, 4) as enc:
        ref = torch.cat([enc.push(x[..., :7000]), enc.push(x[..., 7000:]), enc.flush()], -1)
    with StreamingEncoder(m, 4) as enc:
        parts = [enc.push(x[..., :7000])]
        for bad in (x[..., 7000:].expand(2, -1, -1), x[:, :1, 7000:], x[0, :, 7000:]):
            with pytest.raises(UsageError):
                enc.push(bad)
        with pytest.raises(UsageError, match="float"):
            enc.push((x[..., 7000:] * 32767).short())
        parts += [enc.push(x[..., 7000:]), enc.flush()]
    assert torch.equal(torch.cat(parts, -1), ref)
    with StreamingDecoder(m) as dec:
        out_ref = torch.cat([dec.push(ref[..., :5]), dec.push(ref[..., 5:])], -1)
    with StreamingDecoder(m) as dec:
        outs = [dec.push(ref[..., :5])]
        with pytest.raises(UsageError, match="batch size changed"):
            dec.push(ref[..., 5:].expand(3, -1, -1))
        with pytest.raises(ValueError, match="codes must be in"):
            dec.push(ref[..., 5:] + 5000)
        outs.append(dec.push(ref[..., 5:]))
    assert torch.equal(torch.cat(outs, -1), out_ref)
    with pytest.raises(UsageError, match="levels"):
        StreamingEncoder(m, 2.5)


def test_integer_pcm_is_scaled_by_its_range(codec):
    x = tone(0.3, 48000)
    pcm16 = np.round(x * 32768).astype(np.int16)
    pcm32 = pcm16.astype(np.int32) << 16
    as_float = pcm16.astype(np.float32) / 32768
    ref = codec.encode(as_float, 48000, levels=4)
    assert torch.equal(codec.encode(pcm16, 48000, levels=4), ref)
    assert torch.equal(codec.encode(torch.from_numpy(pcm32), 48000, levels=4), ref)
    with pytest.raises(AudioError, match="ambiguous"):
        codec.encode(pcm16.astype(np.int64), 48000)


def test_api_edge_cases_are_clear(codec):
    assert codec.decode(torch.zeros(1, 4, 0, dtype=torch.long)).shape == (1, 2, 0)
    assert codec.decode(torch.zeros(2, 4, 1, dtype=torch.long)).shape == (2, 2, 0)
    with pytest.raises(UsageError, match="levels must be an integer"):
        codec.encode(tone(0.1), 44100, levels=2.5)
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            load("default", device="cuda")
    with pytest.raises(ModelError, match="unknown device"):
        load("default", device="gpu0")
    assert issubclass(ModelError, SpectroStreamError) and issubclass(AudioError, ValueError)


# ---- batches keep going --------------------------------------------------------------------
def test_a_bad_file_does_not_stop_the_batch(model, tmp_path, here, run_cli):
    src = tmp_path / "in"
    for i, name in enumerate(("a.wav", "c.flac", "d/e.wav")):
        write(src / name, 0.4, seed=i)
    (src / "b.wav").write_bytes(b"RIFF not really a wav file")
    report = tmp_path / "report.json"
    r = run_cli(
        "encode", src, tmp_path / "out", "--levels", "2", "--model", model, "--report", report
    )
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert "1 of 4 files failed" in err and f"failed: {src / 'b.wav'}" in err
    done = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert done == ["a.wav.ssc", "c.flac.ssc", "d", "d/e.wav.ssc"]
    doc = json.loads(report.read_text())
    assert doc["ok"] == 3 and doc["failed"] == 1
    assert [f["input"] for f in doc["files"] if f["status"] == "failed"] == [str(src / "b.wav")]
    h = digest(src / "a.wav")
    argv = ["encode", src, tmp_path / "out2", "--model", model, "--report", src / "a.wav"]
    assert_one_line_error(here(*argv), "refusing to overwrite the input")
    assert digest(src / "a.wav") == h and not (tmp_path / "out2").exists()


# ---- smaller -------------------------------------------------------------------------------
def test_roundtrip_reports_the_bit_rate_of_compressed_input(model, tmp_path, run_cli):
    import av

    path = tmp_path / "x.opus"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libopus", rate=48000, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            tone(1.0, 48000).reshape(1, -1), format="flt", layout="stereo"
        )
        frame.rate = 48000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    r = run_cli("roundtrip", path, tmp_path / "o.wav", "--levels", "4", "--model", model)
    assert r.returncode == 0, r.stderr
    assert b"kbps actual, 4 levels" in r.stderr


def test_stdin_errors_and_messages_name_no_internals(model, tmp_path, here, run_cli):
    r = run_cli("decode", "-", tmp_path / "o.wav", "--model", model, stdin=b"SPSC\x01garbage")
    line = assert_one_line_error(r)
    assert "object at 0x" not in line and atomic.TEMP_PREFIX not in line
    r = here("encode", "-", tmp_path / "o.ssc", "--model", model, stdin=b"not audio at all")
    line = assert_one_line_error(r, "<stdin>")
    assert "object at 0x" not in line
    x = write(tmp_path / "x.wav")
    assert main(["encode", str(x), str(tmp_path / "x.ssc"), "--model", str(model)]) == 0
    r = here("decode", tmp_path / "x.ssc", tmp_path / "o.xyz", "--model", model)
    line = assert_one_line_error(r)
    assert atomic.TEMP_PREFIX not in line


def test_eval_report_markdown_carries_no_html_from_file_names():
    from spectrostream.evaluation.report import render_markdown
    from spectrostream.evaluation.runner import ClipResult, EvalReport, EvalSettings

    clip = ClipResult(name="<img src=x onerror=alert(1)>|.wav", path="p", error="bad <b>x</b>")
    settings = EvalSettings(kbps=(1.0,), visqol=False, listen_format="flac")
    md = render_markdown(EvalReport(settings, {"spectrostream": "S"}, [clip], {}, None, 0.0))
    table_rows = [line for line in md.splitlines() if line.startswith("|")]
    assert not any("<img" in line for line in table_rows) and "<b>" not in md
    assert "- `<img src=x onerror=alert(1)>|.wav`: failed to load: bad &lt;b&gt;x" in md


def test_exit_statuses_come_from_one_handler(monkeypatch, capsys):
    from spectrostream import cli

    def interrupted(args):
        raise KeyboardInterrupt

    def broken(args):
        raise OSError(errno.EACCES, "Permission denied", "/some/path")

    for func, code in ((interrupted, 130), (broken, 2)):
        monkeypatch.setattr(cli, "run_info", func)
        assert main(["info", "x.ssc"]) == code
    assert capsys.readouterr().err.splitlines()[-1] == (
        "spectrostream: error: /some/path: Permission denied"
    )


def test_model_files_are_written_atomically(codec, tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"
    codec.save(target)
    before = digest(target)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(OSError, match="No space") as e:
        codec.save(target)
    assert e.value.filename == str(target)
    assert digest(target) == before and no_temp_files(tmp_path)
