"""Behaviour of the .ssc format: round trips, streaming, transcoding and rejection of bad input.

Crafted files are built here from the layout in docs/format.md, independently of the writer, so
these tests also check that the documentation matches the code.
"""

from __future__ import annotations

import io
import os
import re
import struct
import threading
import zlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spectrostream.bitstream import (
    BitstreamError,
    StreamHeader,
    StreamReader,
    StreamWriter,
    decode_stream,
    describe,
    encode_stream,
    kbps_for_levels,
    transcode,
    transcode_stream,
)

MODEL = "spectrostream-test-v1"


def make_header(**changes) -> StreamHeader:
    fields = {
        "sample_rate": 48000,
        "channels": 2,
        "num_samples": 5 * 1920,
        "num_levels": 4,
        "frame_rate": 25,
        "codebook_size": 1024,
        "model_id": MODEL,
    }
    fields.update(changes)
    return StreamHeader(**fields)


def random_codes(levels: int, frames: int, codebook_size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook_size, size=(levels, frames))
    if codes.size >= 2:  # always exercise both extremes of the code range
        codes.flat[0] = codebook_size - 1
        codes.flat[-1] = 0
    return codes


# ---- an independent writer following docs/format.md ----------------------------------------


def doc_header(
    *,
    version: int = 1,
    channels: int = 2,
    levels: int = 4,
    frame_rate: int = 25,
    sample_rate: int = 48000,
    codebook_size: int = 1024,
    num_samples: int = 5 * 1920,
    model_id: bytes = MODEL.encode(),
) -> bytes:
    body = (
        b"SPSC"
        + struct.pack(
            ">BBBHIIQB",
            version,
            channels,
            levels,
            frame_rate,
            sample_rate,
            codebook_size,
            num_samples,
            len(model_id),
        )
        + model_id
    )
    return body + struct.pack(">I", zlib.crc32(body))


def doc_pack(codes: np.ndarray, bits: int) -> bytes:
    """Level-major, MSB-first, zero-padded: written with Python ints, not numpy."""
    bit_string = "".join(format(int(c), f"0{bits}b") for c in np.asarray(codes).reshape(-1))
    bit_string += "0" * (-len(bit_string) % 8)
    return bytes(int(bit_string[i : i + 8], 2) for i in range(0, len(bit_string), 8))


def doc_file(header: bytes, packets: list[bytes]) -> bytes:
    """Chain CRCs: each packet's CRC continues from the previous CRC (header's for the first)."""
    out = bytearray(header)
    crc = struct.unpack(">I", header[-4:])[0]
    for body in packets:
        crc = zlib.crc32(body, crc)
        out += body + struct.pack(">I", crc)
    return bytes(out)


def doc_data(n: int, payload: bytes) -> bytes:
    return bytes([n]) + payload


def doc_end(total_frames: int, num_samples: int) -> bytes:
    return b"\x00" + struct.pack(">IQ", total_frames, num_samples)


def small_file() -> tuple[bytes, np.ndarray]:
    """3 levels x 7 frames of 1000-entry codes in packets of 3: 2 full packets and a short one."""
    codes = random_codes(3, 7, 1000, seed=1)
    header = make_header(num_levels=3, codebook_size=1000, num_samples=7 * 1920 - 5)
    out = io.BytesIO()
    writer = StreamWriter(out, header, frames_per_packet=3)
    writer.write(codes)
    writer.close()
    return out.getvalue(), codes


# ---- pipe-like file objects ------------------------------------------------------------------


class OneWayPipe:
    """Non-seekable byte channel whose reads return at most ``chunk`` bytes (like a pipe)."""

    def __init__(self, chunk: int = 3) -> None:
        self._buffer = bytearray()
        self._chunk = chunk
        self.max_request = 0

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        self.max_request = max(self.max_request, n)
        if n < 0:
            raise AssertionError("reader asked for the whole stream")
        out = bytes(self._buffer[: min(n, self._chunk)])
        del self._buffer[: len(out)]
        return out

    def seekable(self) -> bool:
        return False

    def seek(self, *args: object) -> int:
        raise io.UnsupportedOperation("seek")

    def tell(self) -> int:
        raise io.UnsupportedOperation("tell")


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "frames", "codebook_size"),
    [
        (1, 0, 1024),
        (64, 0, 1024),
        (1, 1, 1024),
        (64, 1, 1024),
        (64, 76, 1024),
        (3, 26, 1000),
        (5, 50, 1025),
        (2, 9, 2),
        (7, 13, 1),
        (255, 3, 65536),
        (4, 25, 3),
    ],
)
def test_round_trip(levels: int, frames: int, codebook_size: int) -> None:
    header = make_header(
        num_levels=levels, codebook_size=codebook_size, num_samples=max(0, frames * 1920 - 100)
    )
    codes = random_codes(levels, frames, codebook_size, seed=levels * 1000 + frames)
    data = encode_stream(header, codes)
    got_header, got = decode_stream(data, expected_model_id=MODEL)
    assert got_header == header
    assert got.dtype == np.int64
    assert got.shape == (levels, frames)
    np.testing.assert_array_equal(got, codes)


def test_file_size_is_header_plus_packets_plus_end() -> None:
    levels, frames = 64, 76
    header = make_header(num_levels=levels, num_samples=frames * 1920)
    data = encode_stream(header, random_codes(levels, frames, 1024))
    header_bytes = 30 + len(MODEL)
    packet_frames = [25, 25, 25, 1]
    packets = sum(5 + -(-levels * n * 10 // 8) for n in packet_frames)
    assert len(data) == header_bytes + packets + 17


def test_bytes_match_the_documented_layout() -> None:
    codes = random_codes(3, 7, 1000, seed=1)
    data, _ = small_file()
    header = doc_header(levels=3, codebook_size=1000, num_samples=7 * 1920 - 5)
    packets = [
        doc_data(3, doc_pack(codes[:, 0:3], 10)),
        doc_data(3, doc_pack(codes[:, 3:6], 10)),
        doc_data(1, doc_pack(codes[:, 6:7], 10)),
        doc_end(7, 7 * 1920 - 5),
    ]
    assert data == doc_file(header, packets)


def test_bit_packing_example_from_the_docs() -> None:
    header = make_header(num_levels=2, codebook_size=1024, num_samples=1920)
    data = encode_stream(header, np.array([[1023], [1]]))
    packet = data[30 + len(MODEL) :][:8]
    assert packet[:4] == bytes([0x01, 0xFF, 0xC0, 0x10])


def test_known_byte_sizes_of_packed_codes() -> None:
    assert doc_pack(np.array([[1023, 1]]), 10) == bytes([0xFF, 0xC0, 0x10])
    assert doc_pack(np.array([[5]]), 3) == bytes([0b10100000])


# ---- streaming --------------------------------------------------------------------------------


def test_streaming_writer_to_reader_over_a_pipe_like_object() -> None:
    levels, frames = 8, 103
    codes = random_codes(levels, frames, 1024, seed=7)
    header = make_header(num_levels=levels, num_samples=None)
    pipe = OneWayPipe(chunk=3)
    writer = StreamWriter(pipe, header, frames_per_packet=25)
    for start, stop in [(0, 1), (1, 30), (30, 30), (30, 77), (77, frames)]:
        writer.write(codes[:, start:stop])
        if stop == 30:
            writer.flush()  # a short packet in the middle
    writer.close(num_samples=frames * 1920 - 3)

    reader = StreamReader(pipe, expected_model_id=MODEL)
    assert reader.header == header
    assert reader.num_samples is None
    chunks = list(reader)
    assert [c.shape[1] for c in chunks] == [25, 5, 25, 25, 23]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), codes)
    assert reader.num_samples == frames * 1920 - 3
    assert reader.num_frames == frames
    assert pipe.max_request < 2000  # never asked for the whole stream


def test_chunked_writes_without_flush_give_the_same_bytes_as_encode_stream() -> None:
    codes = random_codes(5, 61, 1024, seed=3)
    header = make_header(num_levels=5, num_samples=61 * 1920)
    out = io.BytesIO()
    writer = StreamWriter(out, header)
    for start in range(0, 61, 7):
        writer.write(codes[:, start : start + 7])
    writer.close()
    assert out.getvalue() == encode_stream(header, codes)


def test_reader_yields_packets_before_the_writer_has_finished() -> None:
    """Over a real OS pipe: the first packet decodes while the stream is still open."""
    read_fd, write_fd = os.pipe()
    codes = random_codes(2, 40, 1024, seed=5)
    header = make_header(num_levels=2, num_samples=None)
    got: list[np.ndarray] = []
    first_packet = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            with os.fdopen(read_fd, "rb", buffering=0) as fin:
                reader = StreamReader(fin)
                for chunk in reader:
                    got.append(chunk)
                    first_packet.set()
                got.append(np.array([reader.num_samples]))
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)
            first_packet.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    with os.fdopen(write_fd, "wb", buffering=0) as fout:
        writer = StreamWriter(fout, header, frames_per_packet=25)
        writer.write(codes[:, :25])  # one full packet, header + packet sent, end not yet
        assert first_packet.wait(timeout=10), "reader did not yield before the end of the stream"
        writer.write(codes[:, 25:])
        writer.close(num_samples=40 * 1920)
    thread.join(timeout=10)
    assert not errors, errors
    np.testing.assert_array_equal(np.concatenate(got[:-1], axis=1), codes)
    assert int(got[-1][0]) == 40 * 1920


def test_unknown_length_header_and_end_packet() -> None:
    codes = random_codes(3, 10, 1024)
    header = make_header(num_levels=3, num_samples=None)
    out = io.BytesIO()
    writer = StreamWriter(out, header)
    writer.write(codes)
    writer.close(num_samples=18_000)
    data = out.getvalue()
    assert data[17:25] == b"\xff" * 8  # header num_samples = 2**64-1 means unknown
    assert data[-17] == 0  # the end packet: count 0
    assert struct.unpack(">IQ", data[-16:-4]) == (10, 18_000)
    got_header, got = decode_stream(data)
    assert got_header == replace(header, num_samples=18_000)
    np.testing.assert_array_equal(got, codes)


def test_writer_close_requires_a_consistent_length() -> None:
    with pytest.raises(BitstreamError, match="needs num_samples"):
        StreamWriter(io.BytesIO(), make_header(num_samples=None)).close()
    with pytest.raises(BitstreamError, match="differs from the header"):
        StreamWriter(io.BytesIO(), make_header(num_samples=100)).close(num_samples=101)
    writer = StreamWriter(io.BytesIO(), make_header(num_samples=None))
    writer.write(np.zeros((4, 2), dtype=np.int64))
    with pytest.raises(BitstreamError, match="longer than 2 frames can cover"):
        writer.close(num_samples=3 * 1920 + 1)
    writer.close(num_samples=3 * 1920)
    with pytest.raises(BitstreamError, match="closed"):
        writer.write(np.zeros((4, 1), dtype=np.int64))
    with pytest.raises(BitstreamError, match="known num_samples"):
        encode_stream(make_header(num_samples=None), np.zeros((4, 1), dtype=np.int64))


def test_writer_rejects_bad_codes() -> None:
    writer = StreamWriter(io.BytesIO(), make_header(codebook_size=1000))
    with pytest.raises(BitstreamError, match=r"code values must be in \[0, 999\]"):
        writer.write(np.full((4, 2), 1000))
    with pytest.raises(BitstreamError, match=r"code values must be in"):
        writer.write(np.full((4, 2), -1))
    with pytest.raises(BitstreamError, match=r"shape \[4, frames\]"):
        writer.write(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(BitstreamError, match="integers"):
        writer.write(np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(BitstreamError, match="frames_per_packet"):
        StreamWriter(io.BytesIO(), make_header(), frames_per_packet=256)


# ---- transcode --------------------------------------------------------------------------------


@pytest.mark.parametrize(("levels", "codebook_size"), [(64, 1024), (7, 1000), (5, 3), (3, 1)])
def test_transcode_equals_encoding_the_sliced_codes(levels: int, codebook_size: int) -> None:
    frames = 53
    header = make_header(num_levels=levels, codebook_size=codebook_size, num_samples=100_000)
    codes = random_codes(levels, frames, codebook_size, seed=levels)
    data = encode_stream(header, codes)
    for keep in sorted({1, 2, levels // 2 or 1, levels - 1 or 1, levels}):
        cut = transcode(data, keep)
        assert cut == encode_stream(replace(header, num_levels=keep), codes[:keep])
        got_header, got = decode_stream(cut)
        assert got_header == replace(header, num_levels=keep)
        np.testing.assert_array_equal(got, codes[:keep])
    assert transcode(data, levels) == data


def test_transcode_stream_over_pipes_and_bad_levels() -> None:
    codes = random_codes(6, 31, 1024)
    header = make_header(num_levels=6, num_samples=None)
    src = OneWayPipe(chunk=5)
    writer = StreamWriter(src, header, frames_per_packet=4)
    writer.write(codes)
    writer.close(num_samples=31 * 1920)
    dst = OneWayPipe(chunk=7)
    transcode_stream(src, dst, 2)
    reader = StreamReader(dst)
    np.testing.assert_array_equal(np.concatenate(list(reader), axis=1), codes[:2])
    assert reader.num_samples == 31 * 1920
    data = encode_stream(make_header(num_levels=6), codes[:, :5])
    for bad in (0, 7, -1):
        with pytest.raises(BitstreamError, match=f"cannot transcode to {bad} levels: file has 6"):
            transcode(data, bad)


def test_transcode_checks_input_crcs() -> None:
    data, _ = small_file()
    corrupted = bytearray(data)
    corrupted[40] ^= 0x01
    with pytest.raises(BitstreamError, match="CRC mismatch"):
        transcode(bytes(corrupted), 1)


# ---- rejection of malformed input -------------------------------------------------------------

KNOWN_ERRORS = re.compile(
    r"truncated \.ssc stream|wrong magic|unsupported \.ssc version|CRC mismatch|"
    r"invalid \.ssc|trailing garbage|nonzero padding|corrupted \.ssc"
)


def test_wrong_magic() -> None:
    data, _ = small_file()
    for bad in (b"RIFF" + data[4:], b"\x00" + data[1:], b"ID3", b"x"):
        with pytest.raises(BitstreamError, match="not an .ssc file: wrong magic"):
            decode_stream(bad)


def test_unsupported_version() -> None:
    for version in (0, 2, 255):
        data = doc_file(doc_header(version=version), [doc_end(0, 0)])
        with pytest.raises(BitstreamError, match=f"unsupported .ssc version {version}"):
            decode_stream(data)


def test_truncated_at_every_byte_offset() -> None:
    data, _ = small_file()
    for cut in range(len(data)):
        with pytest.raises(BitstreamError, match=r"truncated \.ssc stream") as info:
            decode_stream(data[:cut])
        assert type(info.value) is BitstreamError
    with pytest.raises(BitstreamError, match="empty input"):
        decode_stream(b"")
    with pytest.raises(BitstreamError, match="end packet is missing"):
        decode_stream(data[:-17])


def test_every_single_bit_flip_is_detected() -> None:
    data, _ = small_file()
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 0x80 >> (i % 8)
        with pytest.raises(BitstreamError) as info:
            decode_stream(bytes(flipped))
        assert type(info.value) is BitstreamError
        assert KNOWN_ERRORS.search(str(info.value)), (i, str(info.value))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sample_rate", 0, "sample_rate = 0 is out of range"),
        ("sample_rate", 2**32 - 1, "sample_rate = 4294967295 is out of range"),
        ("channels", 0, "channels = 0 is out of range"),
        ("levels", 0, "num_levels = 0 is out of range"),
        ("frame_rate", 0, "frame_rate = 0 is out of range"),
        ("frame_rate", 65535, "frame_rate = 65535 is out of range"),
        ("codebook_size", 0, "codebook_size = 0 is out of range"),
        ("codebook_size", 2**16 + 1, "codebook_size = 65537 is out of range"),
        ("codebook_size", 2**32 - 1, "codebook_size = 4294967295 is out of range"),
        ("num_samples", 2**64 - 2, "num_samples = 18446744073709551614 is out of range"),
        ("num_samples", 2**48, "num_samples = 281474976710656 is out of range"),
        ("model_id", b"", "model_id must be 1..255 UTF-8 bytes"),
        ("model_id", b"\xff\xfe", "model id is not UTF-8"),
        ("model_id", b"bad\nid", "unprintable"),
    ],
)
def test_absurd_header_values(field: str, value: object, message: str) -> None:
    data = doc_file(doc_header(**{field: value}), [doc_end(0, 0)])
    with pytest.raises(BitstreamError, match=r"invalid \.ssc header: ") as info:
        decode_stream(data)
    assert message in str(info.value)


def test_header_dataclass_validates_ranges() -> None:
    with pytest.raises(BitstreamError, match="channels = 0"):
        make_header(channels=0)
    with pytest.raises(BitstreamError, match="num_levels must be an int"):
        make_header(num_levels=2.0)
    with pytest.raises(BitstreamError, match="sample_rate must be an int"):
        make_header(sample_rate=True)
    with pytest.raises(BitstreamError, match="num_samples = -1"):
        make_header(num_samples=-1)
    with pytest.raises(BitstreamError, match="model_id must be 1..255"):
        make_header(model_id="x" * 256)
    assert isinstance(BitstreamError("x"), ValueError)


def test_wrong_model_id() -> None:
    data, _ = small_file()
    with pytest.raises(BitstreamError) as info:
        decode_stream(data, expected_model_id="other-model")
    assert str(info.value) == (f"file was made by model {MODEL!r}, this is model 'other-model'")
    with pytest.raises(BitstreamError, match="file was made by model"):
        StreamReader(io.BytesIO(data), expected_model_id="other-model")


def test_code_out_of_range_in_a_file() -> None:
    codes = np.array([[999, 1000, 1023]])
    header = doc_header(levels=1, codebook_size=1000, num_samples=100)
    data = doc_file(header, [doc_data(3, doc_pack(codes, 10)), doc_end(3, 100)])
    with pytest.raises(BitstreamError, match="code value 1023 >= codebook size 1000"):
        decode_stream(data)
    with pytest.raises(BitstreamError, match="code value >= codebook size 1000"):
        transcode(data, 1)


def test_nonzero_padding_bits() -> None:
    payload = bytearray(doc_pack(np.array([[5]]), 10))
    payload[-1] |= 0x01
    header = doc_header(levels=1, num_samples=100)
    data = doc_file(header, [doc_data(1, bytes(payload)), doc_end(1, 100)])
    with pytest.raises(BitstreamError, match="nonzero padding bits"):
        decode_stream(data)


def test_trailing_garbage() -> None:
    data, _ = small_file()
    for extra in (b"\x00", b"garbage", data):
        with pytest.raises(BitstreamError, match=f"trailing garbage .* at byte {len(data)}"):
            decode_stream(data + extra)


def test_end_packet_must_agree_with_the_stream() -> None:
    one = doc_data(1, doc_pack(np.zeros((4, 1)), 10))
    unknown = 2**64 - 1
    cases = [
        (100, [one, one, doc_end(1, 100)], "end packet says 1 frames, 2 were read"),
        (unknown, [one, doc_end(1, 3841)], "3841 samples is longer than 1 frames can cover"),
        (100, [one, doc_end(1, 101)], "end packet says 101 samples, header says 100"),
    ]
    for num_samples, packets, message in cases:
        with pytest.raises(BitstreamError, match=message):
            decode_stream(doc_file(doc_header(num_samples=num_samples), packets))
    decode_stream(doc_file(doc_header(num_samples=unknown), [one, doc_end(1, 3840)]))
    with pytest.raises(BitstreamError, match="invalid .ssc end packet: num_samples"):
        decode_stream(doc_file(doc_header(num_samples=unknown), [doc_end(0, unknown)]))


def test_reordered_or_spliced_packets_fail_the_crc_chain() -> None:
    a = doc_data(1, doc_pack(np.full((4, 1), 1), 10))
    b = doc_data(1, doc_pack(np.full((4, 1), 2), 10))
    good = doc_file(doc_header(), [a, b, doc_end(2, 100)])
    header_len = 30 + len(MODEL)
    packet_len = len(a) + 4
    pa = good[header_len : header_len + packet_len]
    pb = good[header_len + packet_len : header_len + 2 * packet_len]
    swapped = good[:header_len] + pb + pa + good[header_len + 2 * packet_len :]
    with pytest.raises(BitstreamError, match="CRC mismatch in the data packet at byte"):
        decode_stream(swapped)


def test_text_mode_input_is_rejected() -> None:
    with pytest.raises(BitstreamError, match="binary file"):
        StreamReader(io.StringIO("SPSC"))


# ---- fuzzing ----------------------------------------------------------------------------------

_FUZZ_SEED_FILES = [
    small_file()[0],
    encode_stream(
        make_header(num_levels=2, codebook_size=3, num_samples=0), np.zeros((2, 0), np.int64)
    ),
    encode_stream(
        make_header(num_levels=1, codebook_size=1, num_samples=1), np.zeros((1, 2), np.int64)
    ),
]

_mutation = st.tuples(
    st.sampled_from(["replace", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=10_000),
    st.binary(min_size=1, max_size=4),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, where, blob in mutations:
        i = where % (len(out) + 1)
        if kind == "replace":
            out[i : i + len(blob)] = blob
        elif kind == "insert":
            out[i:i] = blob
        elif kind == "delete":
            del out[i : i + len(blob)]
        else:
            del out[i:]
    return bytes(out)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(_FUZZ_SEED_FILES))),
    st.lists(_mutation, min_size=1, max_size=4),
)
def test_mutated_files_decode_or_raise_bitstream_error(
    which: int, mutations: list[tuple[str, int, bytes]]
) -> None:
    data = _mutate(_FUZZ_SEED_FILES[which], mutations)
    try:
        header, codes = decode_stream(data)
    except BitstreamError as e:
        assert type(e) is BitstreamError
        return
    assert codes.shape == (header.num_levels, codes.shape[1])
    assert codes.size == 0 or (codes.min() >= 0 and codes.max() < header.codebook_size)


_packet = st.one_of(
    st.tuples(st.integers(1, 4), st.randoms(use_true_random=False)).map(
        lambda t: doc_data(t[0], t[1].randbytes(-(-10 * t[0] // 8)))
    ),
    st.tuples(st.integers(0, 12), st.one_of(st.integers(0, 30_000), st.integers(0, 2**64 - 1))).map(
        lambda t: doc_end(*t)
    ),
)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([100, 2**64 - 1]),
    st.lists(_packet, max_size=8),
    st.binary(max_size=3),
)
def test_random_packets_with_valid_crcs_decode_or_raise(
    num_samples: int, packets: list[bytes], tail: bytes
) -> None:
    """CRCs pass, so the checks on frame counts, lengths, padding and code range are reached."""
    header = doc_header(levels=1, codebook_size=1000, num_samples=num_samples)
    data = doc_file(header, packets) + tail
    try:
        got_header, codes = decode_stream(data)
    except BitstreamError as e:
        assert type(e) is BitstreamError
        return
    assert packets[-1][0] == 0 and not tail
    assert codes.shape == (1, sum(p[0] for p in packets))
    assert codes.size == 0 or codes.max() < 1000
    assert got_header.num_samples == struct.unpack(">IQ", packets[-1][1:])[1]


# ---- rates and description --------------------------------------------------------------------


def test_kbps_for_levels() -> None:
    assert kbps_for_levels(64, 25, 1024) == 16.0
    assert kbps_for_levels(1, 25, 1024) == 0.25
    assert kbps_for_levels(2, 25, 1025) == 0.55


def test_describe() -> None:
    levels, frames = 32, 250
    header = make_header(num_levels=levels, sample_rate=44100, num_samples=441_000, channels=1)
    data = encode_stream(header, random_codes(levels, frames, 1024))
    text = describe(header, frames, len(data))
    assert MODEL in text
    assert "44100 Hz, 1 channel" in text
    assert "10.000 s" in text
    assert "8.000 kbps nominal" in text
    actual = len(data) * 8 / (frames / 25) / 1000
    assert f"{actual:.3f} kbps actual" in text
    assert "unknown length" in describe(replace(header, num_samples=None), 0, 30)
