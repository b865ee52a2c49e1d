"""Tests for spectrostream.audio_io: formats, stdin/stdout, errors, blocks, resampling."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spectrostream.audio_io import (
    AUDIO_EXTENSIONS,
    AudioError,
    AudioWriter,
    StreamingResampler,
    audio_info,
    is_audio_file_name,
    iter_audio_blocks,
    read_audio,
    read_range,
    resample,
    resampled_length,
    to_channels,
    to_channels_first,
    write_audio,
)

SRC_DIR = Path(__file__).resolve().parents[1] / "src"


def chirp(channels: int, frames: int, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """[C, T] float32 chirps, a different sweep per channel (alignment is unambiguous)."""
    t = np.arange(frames) / sample_rate
    rows = [
        amplitude * np.sin(2 * np.pi * (150 + 100 * c + (1500 + 500 * c) * t) * t)
        for c in range(channels)
    ]
    return np.stack(rows).astype(np.float32)


def noise(channels: int, frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.8, 0.8, (channels, frames)).astype(np.float32)


def best_lag(decoded: np.ndarray, reference: np.ndarray, max_lag: int = 4096) -> int:
    """Lag k maximising sum(decoded[n + k] * reference[n]) over the first channel (FFT)."""
    a, b = decoded[0].astype(np.float64), reference[0].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([corr[: max_lag + 1], corr[-max_lag:]])
    return int(lags[np.argmax(values)])


def aligned_snr_db(decoded: np.ndarray, reference: np.ndarray, lag: int) -> float:
    start, stop = 2000, reference.shape[1] - 4000  # skip codec edges
    ref = reference[:, start:stop]
    out = decoded[:, start + lag : stop + lag]
    return float(10 * np.log10(np.sum(ref**2) / np.sum((out - ref) ** 2)))


def encode_with_pyav(path: Path, audio: np.ndarray, sample_rate: int, codec: str) -> None:
    """Writes [C, T] with PyAV's bundled FFmpeg; skips the test when the encoder is missing."""
    av = pytest.importorskip("av")
    try:
        av.codec.Codec(codec, "w")
    except av.error.FFmpegError:
        pytest.skip(f"PyAV's FFmpeg has no '{codec}' encoder")
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[audio.shape[0]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio, dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):  # PyAV re-frames to the codec's frame size
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture
def stereo_wav(tmp_path: Path) -> tuple[Path, np.ndarray]:
    audio = noise(2, 30_000)
    path = tmp_path / "stereo.wav"
    write_audio(path, audio, 48_000, subtype="FLOAT")
    return path, audio


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("name", "subtype", "tolerance"),
    [
        ("a.wav", None, 1 / 32768),
        ("a.wav", "PCM_24", 2.0**-23),
        ("a.wav", "PCM_32", 2.0**-31),
        ("a.wav", "FLOAT", 0.0),
        ("a.flac", None, 1 / 32768),
        ("a.flac", "PCM_24", 2.0**-23),
        ("a.aiff", None, 1 / 32768),
        ("a.wav", "PCM_U8", 1 / 128),
        ("a.flac", "PCM_S8", 1 / 128),
    ],
)
def test_lossless_round_trip(tmp_path: Path, name: str, subtype: str | None, tolerance: float):
    audio = noise(2, 12_345)
    path = tmp_path / name
    write_audio(path, audio, 44_100, subtype=subtype)
    decoded, rate = read_audio(path)
    assert rate == 44_100
    assert decoded.dtype == np.float32 and decoded.shape == audio.shape
    np.testing.assert_allclose(decoded, audio, rtol=0, atol=tolerance * 0.5 + 1e-7)


def test_pcm16_quantisation_matches_libsndfile(tmp_path: Path):
    audio = np.array([[0.0, 0.5, -0.5, 1.0, -1.0, 0.25 / 32768, 0.75 / 32768]], np.float32)
    write_audio(tmp_path / "q.wav", audio, 8000)
    ints, _ = sf.read(tmp_path / "q.wav", dtype="int16")
    assert ints.tolist() == [0, 16384, -16384, 32767, -32768, 0, 1]


def test_vorbis_round_trip(tmp_path: Path):
    audio = chirp(2, 48_000, 48_000)
    write_audio(tmp_path / "a.ogg", audio, 48_000)
    decoded, rate = read_audio(tmp_path / "a.ogg")
    assert rate == 48_000 and decoded.shape == audio.shape
    assert best_lag(decoded, audio) == 0
    assert aligned_snr_db(decoded, audio, 0) > 15


@pytest.mark.parametrize(
    ("name", "codec", "sample_rate", "max_lag"),
    [
        ("a.mp3", "libmp3lame", 44_100, 0),  # LAME gapless header: delay/padding removed
        # PyAV's mov muxer writes no edit list for the AAC priming, so FFmpeg returns the
        # encoder's 1024-sample delay; files from ffmpeg/iTunes carry the edit list.
        ("a.m4a", "aac", 48_000, 1024),
        ("a.opus", "libopus", 48_000, 0),  # Ogg pre-skip honoured
    ],
)
def test_lossy_pyav_round_trip(
    tmp_path: Path, name: str, codec: str, sample_rate: int, max_lag: int
):
    audio = chirp(2, sample_rate, sample_rate)
    path = tmp_path / name
    encode_with_pyav(path, audio, sample_rate, codec)
    decoded, rate = read_audio(path)
    assert rate == sample_rate
    assert decoded.dtype == np.float32 and decoded.shape[0] == 2
    lag = best_lag(decoded, audio)
    assert 0 <= lag <= max_lag
    assert audio.shape[1] + lag <= decoded.shape[1] <= audio.shape[1] + lag + 1152
    assert aligned_snr_db(decoded, audio, lag) > 15
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.num_frames) == (sample_rate, 2, None)
    assert info.duration_s == pytest.approx(1.0, abs=0.1)


def test_opus_six_channels(tmp_path: Path):
    audio = chirp(6, 48_000, 48_000, amplitude=0.3)
    encode_with_pyav(tmp_path / "six.opus", audio, 48_000, "libopus")
    decoded, rate = read_audio(tmp_path / "six.opus")
    assert (decoded.shape, rate) == ((6, 48_000), 48_000)
    assert aligned_snr_db(decoded, audio, 0) > 10


def test_mp3_with_invalid_utf8_tag(tmp_path: Path):
    """PyAV raises UnicodeDecodeError on such tags unless told to replace; real files have them."""
    clean = tmp_path / "clean.mp3"
    encode_with_pyav(clean, chirp(1, 4410, 44_100), 44_100, "libmp3lame")

    def syncsafe(n: int) -> bytes:
        return bytes([(n >> 21) & 127, (n >> 14) & 127, (n >> 7) & 127, n & 127])

    text = b"\x03caf\xe9 \xa7"  # declared UTF-8 (0x03), actually Latin-1 bytes
    frame = b"TIT2" + syncsafe(len(text)) + b"\x00\x00" + text
    tagged = tmp_path / "tagged.mp3"
    tagged.write_bytes(b"ID3\x04\x00\x00" + syncsafe(len(frame)) + frame + clean.read_bytes())
    np.testing.assert_array_equal(read_audio(tagged)[0], read_audio(clean)[0])


@pytest.mark.parametrize("sample_rate", [8000, 22_050, 44_100, 96_000])
def test_sample_rate_preserved(tmp_path: Path, sample_rate: int):
    path = tmp_path / "r.flac"
    write_audio(path, noise(1, 1000), sample_rate)
    assert read_audio(path)[1] == sample_rate
    info = audio_info(path)
    assert (info.sample_rate, info.num_frames, info.format) == (sample_rate, 1000, "FLAC")
    assert info.duration_s == pytest.approx(1000 / sample_rate)


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("name", ["c.wav", "c.flac"])
def test_channel_shapes(tmp_path: Path, channels: int, name: str):
    audio = noise(channels, 5000, seed=channels)
    write_audio(tmp_path / name, audio, 48_000, subtype="PCM_24")
    decoded, _ = read_audio(tmp_path / name)
    assert decoded.shape == (channels, 5000)
    np.testing.assert_allclose(decoded, audio, atol=2.0**-23)
    assert audio_info(tmp_path / name).channels == channels


def test_mono_1d_input_is_written_as_one_channel(tmp_path: Path):
    write_audio(tmp_path / "m.wav", noise(1, 100)[0], 16_000)
    assert read_audio(tmp_path / "m.wav")[0].shape == (1, 100)


def test_content_decides_not_extension(tmp_path: Path):
    audio = noise(2, 2000)
    write_audio(tmp_path / "real.flac", audio, 48_000)
    disguised = tmp_path / "disguised.wav"
    disguised.write_bytes((tmp_path / "real.flac").read_bytes())
    np.testing.assert_array_equal(read_audio(disguised)[0], read_audio(tmp_path / "real.flac")[0])


# ----------------------------------------------------------------------------------- clipping


def test_integer_formats_clip_float_does_not(tmp_path: Path):
    audio = np.array([[1.5, -2.0, 0.5]], np.float32)
    write_audio(tmp_path / "i.wav", audio, 8000)
    write_audio(tmp_path / "f.wav", audio, 8000, subtype="float")
    np.testing.assert_allclose(read_audio(tmp_path / "i.wav")[0], [[32767 / 32768, -1.0, 0.5]])
    np.testing.assert_array_equal(read_audio(tmp_path / "f.wav")[0], audio)


# ------------------------------------------------------------------------------- stdin / stdout


def fake_stdio(monkeypatch: pytest.MonkeyPatch, stdin: bytes = b"") -> io.BytesIO:
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(stdin)))
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=out))
    return out


def test_read_stdin_wav(monkeypatch: pytest.MonkeyPatch, stereo_wav: tuple[Path, np.ndarray]):
    path, audio = stereo_wav
    fake_stdio(monkeypatch, path.read_bytes())
    decoded, rate = read_audio("-")
    assert rate == 48_000
    np.testing.assert_array_equal(decoded, audio)


def test_read_stdin_mp3_matches_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    path = tmp_path / "s.mp3"
    encode_with_pyav(path, chirp(2, 22_050, 44_100), 44_100, "libmp3lame")
    from_file, rate = read_audio(path)
    fake_stdio(monkeypatch, path.read_bytes())
    from_stdin, stdin_rate = read_audio("-")
    assert stdin_rate == rate == 44_100
    np.testing.assert_array_equal(from_stdin, from_file)


def test_write_stdout_one_shot(monkeypatch: pytest.MonkeyPatch):
    out = fake_stdio(monkeypatch)
    audio = noise(2, 3000)
    write_audio("-", audio, 32_000, subtype="FLOAT")
    decoded, rate = sf.read(io.BytesIO(out.getvalue()), dtype="float32", always_2d=True)
    assert rate == 32_000
    np.testing.assert_array_equal(decoded.T, audio)


class PipeLike(io.BytesIO):
    """A stdout that cannot seek, as a pipe."""

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        raise OSError(29, "Illegal seek")


@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize(("subtype", "tolerance"), [("PCM_16", 2.0**-15), ("PCM_24", 2.0**-23)])
def test_streaming_writer_stdout(
    monkeypatch: pytest.MonkeyPatch, seekable: bool, subtype: str, tolerance: float
):
    out = io.BytesIO() if seekable else PipeLike()
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=out))
    audio = noise(3, 10_001)
    with AudioWriter("-", 24_000, 3, subtype=subtype) as writer:
        for start in range(0, audio.shape[1], 4096):
            writer.write(audio[:, start : start + 4096])
    assert writer.frames_written == 10_001
    data = out.getvalue()
    riff_size, data_size = struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[40:44])[0]
    payload = len(data) - 44
    expected = (payload + 36, payload) if seekable else (0xFFFFFFFF, 0xFFFFFFFF)
    assert (riff_size, data_size) == expected
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert rate == 24_000 and decoded.shape == (10_001, 3)
    np.testing.assert_allclose(decoded.T, audio, atol=tolerance)


def test_streaming_stdout_matches_libsndfile_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path):
    audio = np.clip(noise(2, 5000) * 1.3, -1.2, 1.2)
    for subtype in ("PCM_16", "PCM_24", "PCM_32", "FLOAT"):
        out = fake_stdio(monkeypatch)
        with AudioWriter("-", 48_000, 2, subtype=subtype) as writer:
            writer.write(audio)
        write_audio(tmp_path / "ref.wav", audio, 48_000, subtype=subtype)
        reference = sf.read(tmp_path / "ref.wav", dtype="float64")[0]
        ours = sf.read(io.BytesIO(out.getvalue()), dtype="float64")[0]
        np.testing.assert_array_equal(ours, reference)


def test_stdin_to_stdout_through_real_pipes(tmp_path: Path):
    audio = noise(2, 20_000)
    path = tmp_path / "in.flac"
    write_audio(path, audio, 44_100, subtype="PCM_24")
    script = (
        "from spectrostream.audio_io import AudioWriter, iter_audio_blocks\n"
        "reader = iter_audio_blocks('-', 3000)\n"
        "with AudioWriter('-', reader.sample_rate, reader.channels, subtype='FLOAT') as w:\n"
        "    for block in reader:\n"
        "        w.write(block)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=path.read_bytes(),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert struct.unpack("<I", result.stdout[40:44])[0] == 0xFFFFFFFF  # a pipe: unknown length
    decoded, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    assert rate == 44_100
    np.testing.assert_array_equal(decoded.T, read_audio(path)[0])


# ------------------------------------------------------------------------------------- errors


def expect_error(path: Path | str, message: str) -> None:
    with pytest.raises(AudioError, match=re.escape(str(path)) + ".*" + message):
        read_audio(path)


def test_error_missing_path(tmp_path: Path):
    expect_error(tmp_path / "nope.wav", "no such file")
    with pytest.raises(AudioError, match="no such file"):
        audio_info(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="no such file"):
        iter_audio_blocks(tmp_path / "nope.mp3", 100)


def test_error_directory(tmp_path: Path):
    expect_error(tmp_path, "is a directory")


def test_error_empty_file(tmp_path: Path):
    (tmp_path / "empty.wav").write_bytes(b"")
    expect_error(tmp_path / "empty.wav", r"empty file \(0 bytes\)")


def test_error_zero_sample_wav(tmp_path: Path):
    sf.write(tmp_path / "zero.wav", np.zeros((0, 2), np.float32), 48_000)
    expect_error(tmp_path / "zero.wav", "no audio samples")


def test_error_text_file(tmp_path: Path):
    for name in ("notes.txt", "notes.wav", "notes.mp3"):
        (tmp_path / name).write_text("This is not audio.\n" * 200)
        expect_error(tmp_path / name, "not a recognised audio file")


def test_error_random_bytes(tmp_path: Path):
    # ".flac" matters: FFmpeg picks its FLAC demuxer by extension and then decodes nothing.
    for seed, name in enumerate(("r.bin", "r.wav", "r.flac", "r.m4a", "r.mp3", "r.aac")):
        (tmp_path / name).write_bytes(np.random.default_rng(seed).bytes(50_000))
        expect_error(tmp_path / name, "not a recognised audio file")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_error_non_finite_wav(tmp_path: Path, bad: float):
    audio = noise(2, 1000)
    audio[1, 617] = bad
    sf.write(tmp_path / "bad.wav", audio.T, 48_000, subtype="FLOAT")
    expect_error(tmp_path / "bad.wav", "non-finite sample .* at frame 617")


def test_error_non_finite_found_in_a_later_block(tmp_path: Path):
    audio = noise(1, 10_000)
    audio[0, 9_999] = np.nan
    sf.write(tmp_path / "late.wav", audio.T, 48_000, subtype="FLOAT")
    reader = iter_audio_blocks(tmp_path / "late.wav", 4000)
    blocks = iter(reader)
    assert next(blocks).shape == (1, 4000)
    assert next(blocks).shape == (1, 4000)
    with pytest.raises(AudioError, match="frame 9999"):
        next(blocks)


def test_error_empty_stdin(monkeypatch: pytest.MonkeyPatch):
    fake_stdio(monkeypatch, b"")
    with pytest.raises(AudioError, match=r"<stdin>: empty input"):
        read_audio("-")


def test_error_text_on_stdin(monkeypatch: pytest.MonkeyPatch):
    fake_stdio(monkeypatch, b"hello\n" * 100)
    with pytest.raises(AudioError, match="<stdin>: not a recognised audio file"):
        read_audio("-")


def test_write_errors(tmp_path: Path):
    audio = noise(1, 100)
    with pytest.raises(AudioError, match=re.escape(str(tmp_path / "x.mp3")) + ".*cannot write"):
        write_audio(tmp_path / "x.mp3", audio, 48_000)
    with pytest.raises(AudioError, match="subtype 'VORBIS' is not valid for WAV"):
        write_audio(tmp_path / "x.wav", audio, 48_000, subtype="VORBIS")
    with pytest.raises(AudioError, match="does not exist"):
        write_audio(tmp_path / "missing_dir" / "x.wav", audio, 48_000)
    audio[0, 5] = np.nan
    with pytest.raises(AudioError, match="refusing to write NaN"):
        write_audio(tmp_path / "x.wav", audio, 48_000)
    assert not (tmp_path / "x.wav").exists()


def test_writer_rejects_wrong_channel_count(tmp_path: Path):
    with (
        AudioWriter(tmp_path / "w.wav", 48_000, 2) as writer,
        pytest.raises(ValueError, match="expected 2 channels"),
    ):
        writer.write(noise(3, 10))


# ------------------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("block_frames", [1, 999, 4096, 30_000, 100_000])
def test_blocks_equal_full_read(stereo_wav: tuple[Path, np.ndarray], block_frames: int):
    path, audio = stereo_wav
    if block_frames == 1:
        audio = audio[:, :50]
        path = path.with_name("short.wav")
        write_audio(path, audio, 48_000, subtype="FLOAT")
    with iter_audio_blocks(path, block_frames) as reader:
        assert (reader.sample_rate, reader.channels, reader.num_frames) == (
            48_000,
            2,
            len(audio[0]),
        )
        blocks = list(reader)
    assert all(b.shape[1] == block_frames for b in blocks[:-1])
    assert 0 < blocks[-1].shape[1] <= block_frames
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), audio)


def test_pyav_blocks_equal_full_read(tmp_path: Path):
    path = tmp_path / "b.opus"
    encode_with_pyav(path, chirp(2, 24_000, 48_000), 48_000, "libopus")
    full, _ = read_audio(path)
    reader = iter_audio_blocks(path, 1000)
    assert (reader.sample_rate, reader.channels, reader.num_frames) == (48_000, 2, None)
    blocks = list(reader)
    assert all(b.shape == (2, 1000) for b in blocks[:-1])
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), full)


@pytest.mark.parametrize("name", ["range.wav", "range.opus"])
def test_frame_range(tmp_path: Path, name: str):
    path = tmp_path / name
    if name.endswith(".wav"):
        write_audio(path, noise(2, 9000), 48_000, subtype="FLOAT")
    else:
        encode_with_pyav(path, chirp(2, 9600, 48_000), 48_000, "libopus")
    full, _ = read_audio(path)
    part, _ = read_audio(path, start_frame=1234, num_frames=5000)
    np.testing.assert_array_equal(part, full[:, 1234:6234])
    tail, _ = read_audio(path, start_frame=8000)
    np.testing.assert_array_equal(tail, full[:, 8000:])
    with pytest.raises(AudioError, match="past the end|at or after frame"):
        read_audio(path, start_frame=full.shape[1])


@pytest.mark.parametrize(
    ("name", "codec", "sample_rate"),
    [("r.flac", None, 44_100), ("r.mp3", "libmp3lame", 44_100), ("r.opus", "libopus", 48_000)],
)
def test_read_range_seeks_to_the_same_samples(
    tmp_path: Path, name: str, codec: str | None, sample_rate: int
):
    """Crops by seeking equal the same frames of a full decode; past the end they run short."""
    path = tmp_path / name
    audio = np.concatenate([chirp(2, 2 * sample_rate, sample_rate)] * 3, axis=1)  # 6 s
    if codec is None:
        write_audio(path, audio, sample_rate, subtype="PCM_24")
    else:
        encode_with_pyav(path, audio, sample_rate, codec)
    full, _ = read_audio(path)
    for start in (0, 700, 3 * sample_rate + 123, full.shape[1] - 2000):
        part, rate = read_range(path, start, 4800)
        want = full[:, start : start + 4800]
        assert rate == sample_rate and part.shape == want.shape
        np.testing.assert_allclose(part, want, atol=1e-3 if codec else 0)
    assert read_range(path, full.shape[1] + 10, 100)[0].shape == (2, 0)


def test_read_with_resampling(stereo_wav: tuple[Path, np.ndarray]):
    path, audio = stereo_wav
    decoded, rate = read_audio(path, sample_rate=16_000)
    assert rate == 16_000
    np.testing.assert_array_equal(decoded, resample(audio, 48_000, 16_000))


def test_file_writer_streams_blocks(tmp_path: Path):
    audio = noise(2, 10_000)
    with AudioWriter(tmp_path / "s.flac", 48_000, 2, subtype="PCM_24") as writer:
        for start in range(0, 10_000, 3333):
            writer.write(audio[:, start : start + 3333])
    np.testing.assert_allclose(read_audio(tmp_path / "s.flac")[0], audio, atol=2.0**-23)


# ---------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(
    ("sr_in", "sr_out", "channels"),
    [(44_100, 48_000, 2), (16_000, 48_000, 1), (48_000, 22_050, 6), (48_000, 24_000, 2)],
)
def test_streaming_resampler_equals_one_shot(sr_in: int, sr_out: int, channels: int):
    rng = np.random.default_rng(sr_in + sr_out)
    audio = rng.standard_normal((channels, 30_001)).astype(np.float32) * 0.3
    one_shot = resample(audio, sr_in, sr_out)
    streamer = StreamingResampler(sr_in, sr_out, channels)
    pieces, start = [], 0
    while start < audio.shape[1]:
        size = int(rng.integers(1, 5000))
        pieces.append(streamer.process(audio[:, start : start + size]))
        start += size
    pieces.append(streamer.flush())
    streamed = np.concatenate(pieces, axis=1)
    assert streamed.shape == one_shot.shape == (channels, resampled_length(30_001, sr_in, sr_out))
    np.testing.assert_allclose(streamed, one_shot, atol=1e-6)
    with pytest.raises(RuntimeError):
        streamer.process(audio[:, :10])


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 101, 44_099])
def test_resampled_length_rounds_half_up(frames: int):
    audio = np.zeros((1, frames), np.float32)
    for sr_in, sr_out in [(48_000, 24_000), (44_100, 48_000), (48_000, 16_000)]:
        expected = int(np.floor(frames * sr_out / sr_in + 0.5))
        assert resampled_length(frames, sr_in, sr_out) == expected
        assert resample(audio, sr_in, sr_out).shape == (1, expected)


def test_resample_identity():
    audio = noise(2, 100)
    assert resample(audio, 48_000, 48_000) is audio
    streamer = StreamingResampler(48_000, 48_000, 2)
    out = np.concatenate([streamer.process(audio[:, :40]), streamer.process(audio[:, 40:])], 1)
    assert streamer.flush().shape == (2, 0)
    np.testing.assert_array_equal(out, audio)


def test_resample_preserves_sine_frequency_and_length():
    frames = 44_100
    t = np.arange(frames) / 44_100
    sine = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)[None]
    out = resample(sine, 44_100, 48_000)
    assert out.shape == (1, 48_000)
    spectrum = np.abs(np.fft.rfft(out[0] * np.hanning(48_000)))
    peak_hz = np.argmax(spectrum) * 48_000 / 48_000
    assert peak_hz == pytest.approx(1000.0, abs=1.0)
    middle = slice(1000, 47_000)
    expected = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(48_000) / 48_000)
    np.testing.assert_allclose(out[0, middle], expected[middle], atol=1e-3)


# -------------------------------------------------------------------------------------- helpers


def test_extensions_and_channels_first():
    assert {".wav", ".flac", ".mp3", ".opus", ".mka"} <= AUDIO_EXTENSIONS
    assert is_audio_file_name("A/B/Song.FLAC") and not is_audio_file_name("notes.txt")
    assert to_channels_first(np.zeros(5)).shape == (1, 5)
    stereo = np.zeros((2, 7), np.float64)
    assert to_channels_first(stereo).shape == (2, 7)
    assert to_channels_first(stereo).dtype == np.float32
    with pytest.raises(ValueError, match="must be"):
        to_channels_first(np.zeros((1, 2, 3)))
    assert to_channels_first(stereo, np.float64).dtype == np.float64


def test_channel_policy():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(to_channels(x[:1], 2), np.repeat(x[:1], 2, axis=0))
    assert to_channels(x, 3) is x
    with pytest.raises(AudioError, match="clip: 3 channels; expected 2"):
        to_channels(x, 2, name="clip")
    with pytest.raises(AudioError, match="2 channels; expected 1"):
        to_channels(x[:2], 1)
    np.testing.assert_array_equal(to_channels(x, 2, downmix=True), x[:2])
    np.testing.assert_allclose(to_channels(x[:2], 1, downmix=True), x[:2].mean(0, keepdims=True))
    with pytest.raises(AudioError):
        to_channels(x[:2], 3, downmix=True)


def test_channel_policy_on_batched_tensors():
    torch = pytest.importorskip("torch")
    x = torch.arange(12, dtype=torch.float32).reshape(2, 1, 6)  # [B, C, T]
    assert torch.equal(to_channels(x, 2), x.expand(2, 2, 6))
    stereo = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    assert torch.equal(to_channels(stereo, 1, downmix=True), stereo.mean(0, keepdim=True))
    with pytest.raises(AudioError, match="3 channels; expected 2"):
        to_channels(torch.zeros(1, 3, 4), 2)
