"""The ``.ssc`` compressed-file format: a torch-free reader and writer.

An ``.ssc`` file is a header followed by packets of bit-packed RVQ codes and one end packet. It
decodes as it arrives (the writer need not know the length up front) and can be cut to fewer
quantizer levels without decoding (:func:`transcode`). The byte layout is documented next to each
``struct`` below and in full in ``docs/format.md``.

Every malformed input raises :class:`BitstreamError`; every size read from a file is bounded
before it is used.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

import numpy as np

from .config import levels_for_kbps
from .errors import BitstreamError, UsageError

MAGIC = b"SPSC"
VERSION = 1
SUFFIX = ".ssc"

UNKNOWN_NUM_SAMPLES = 2**64 - 1  # header value of num_samples while the length is unknown
MAX_NUM_SAMPLES = 2**48 - 1
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
MAX_CHANNELS = 255
MAX_LEVELS = 255
MAX_FRAME_RATE = 1_000
MAX_CODEBOOK_SIZE = 2**16
MAX_MODEL_ID_BYTES = 255
MAX_FRAMES_PER_PACKET = 255
MAX_TOTAL_FRAMES = 2**32 - 1
DEFAULT_FRAMES_PER_PACKET = 25

# File header, big-endian. _PREFIX: magic 4s | version B. Then (version 1) _HEADER_V1:
# channels B | num_levels B | frame_rate H | sample_rate I | codebook_size I |
# num_samples Q (2**64-1 = unknown) | model_id_len B; then model_id (UTF-8), then _CRC.
_PREFIX = struct.Struct(">4sB")
_HEADER_V1 = struct.Struct(">BBHIIQB")
# Packet: frame count B (n); n >= 1: data packet, payload = ceil(num_levels*n*bits/8) bytes;
# n == 0: end packet, payload = _END (total_frames I | num_samples Q). Then _CRC: CRC-32 of the
# packet's count and payload bytes, seeded with the previous CRC (header's for the first packet).
_COUNT = struct.Struct(">B")
_END = struct.Struct(">IQ")
_CRC = struct.Struct(">I")

PACKET_OVERHEAD_BYTES = _COUNT.size + _CRC.size


def bits_per_code(codebook_size: int) -> int:
    """Bits per packed code: ceil(log2(codebook_size)), at least 1 (10 for 1024)."""
    return max(1, (codebook_size - 1).bit_length())


def kbps_for_levels(levels: int, frame_rate: int, codebook_size: int) -> float:
    """Nominal bit rate of ``levels`` quantizer levels, without packet overhead."""
    return levels * frame_rate * bits_per_code(codebook_size) / 1000.0


def max_samples_for_frames(num_frames: int, sample_rate: int, frame_rate: int) -> int:
    """Largest sample count a stream of ``num_frames`` frames may claim (one frame of slack)."""
    return -(-(num_frames + 1) * sample_rate // frame_rate)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BitstreamError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise BitstreamError(f"{name} = {value} is out of range [{low}, {high}]")


@dataclass(frozen=True)
class StreamHeader:
    """What a decoder needs to know before the first packet.

    ``sample_rate``, ``channels`` and ``num_samples`` describe the original audio (restored after
    decoding); ``num_samples`` is None while a streaming writer does not know it yet.
    """

    sample_rate: int
    channels: int
    num_samples: int | None
    num_levels: int
    frame_rate: int
    codebook_size: int
    model_id: str

    def __post_init__(self) -> None:
        _check_int("sample_rate", self.sample_rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
        _check_int("channels", self.channels, 1, MAX_CHANNELS)
        if self.num_samples is not None:
            _check_int("num_samples", self.num_samples, 0, MAX_NUM_SAMPLES)
        _check_int("num_levels", self.num_levels, 1, MAX_LEVELS)
        _check_int("frame_rate", self.frame_rate, 1, MAX_FRAME_RATE)
        _check_int("codebook_size", self.codebook_size, 1, MAX_CODEBOOK_SIZE)
        if not isinstance(self.model_id, str):
            raise BitstreamError(f"model_id must be a str, got {type(self.model_id).__name__}")
        n = len(self.model_id.encode("utf-8", errors="surrogatepass"))
        if not 1 <= n <= MAX_MODEL_ID_BYTES:
            raise BitstreamError(f"model_id must be 1..{MAX_MODEL_ID_BYTES} UTF-8 bytes, got {n}")
        if not self.model_id.isprintable():
            raise BitstreamError(f"model_id {self.model_id!r} contains unprintable characters")

    @property
    def bits_per_code(self) -> int:
        return bits_per_code(self.codebook_size)

    def payload_bytes(self, num_frames: int) -> int:
        """Size of a data packet's payload holding ``num_frames`` frames."""
        return -(-self.num_levels * num_frames * self.bits_per_code // 8)

    def to_bytes(self) -> bytes:
        """The header as written at the start of a file, CRC included."""
        model_id = self.model_id.encode("utf-8")
        n = UNKNOWN_NUM_SAMPLES if self.num_samples is None else self.num_samples
        body = (
            _PREFIX.pack(MAGIC, VERSION)
            + _HEADER_V1.pack(
                self.channels,
                self.num_levels,
                self.frame_rate,
                self.sample_rate,
                self.codebook_size,
                n,
                len(model_id),
            )
            + model_id
        )
        return body + _CRC.pack(zlib.crc32(body))


# ---- bit packing ------------------------------------------------------------------------------


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """[levels, n] non-negative codes -> level-major, MSB-first bits, zero-padded to a byte."""
    flat = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    bit_matrix = ((flat[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1)).tobytes()


def unpack_codes(payload: bytes, levels: int, num_frames: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: -> int64 [levels, num_frames]."""
    count = levels * num_frames * bits
    raw = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=count)
    weights = np.left_shift(np.int64(1), np.arange(bits - 1, -1, -1, dtype=np.int64))
    return (raw.reshape(-1, bits).astype(np.int64) @ weights).reshape(levels, num_frames)


def _validate_codes(codes: object, levels: int, codebook_size: int) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[0] != levels:
        raise BitstreamError(f"codes must have shape [{levels}, frames], got {list(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise BitstreamError(f"codes must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= codebook_size):
        raise BitstreamError(
            f"code values must be in [0, {codebook_size - 1}], got range [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.int64)


# ---- writing ----------------------------------------------------------------------------------


class StreamWriter:
    """Writes an ``.ssc`` stream to a binary file object, packet by packet.

    The header is written on construction. Works on non-seekable outputs (pass
    ``sys.stdout.buffer``, not ``sys.stdout``). ``header.num_samples`` may be None (unknown);
    the true length is then given to :meth:`close`, which writes the end packet.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        header: StreamHeader,
        frames_per_packet: int = DEFAULT_FRAMES_PER_PACKET,
    ) -> None:
        _check_int("frames_per_packet", frames_per_packet, 1, MAX_FRAMES_PER_PACKET)
        self.header = header
        self.frames_per_packet = frames_per_packet
        self.num_frames = 0  # frames written into packets so far
        self.bytes_written = 0
        self._file = fileobj
        self._pending = np.zeros((header.num_levels, 0), dtype=np.int64)
        self._closed = False
        data = header.to_bytes()
        self._crc = _CRC.unpack(data[-_CRC.size :])[0]
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes_written += len(data)

    def _emit_packet(self, body: bytes) -> None:
        self._crc = zlib.crc32(body, self._crc)
        self._emit(body + _CRC.pack(self._crc))

    def _emit_data(self, codes: np.ndarray) -> None:
        n = codes.shape[1]
        self._write_payload(n, pack_codes(codes, self.header.bits_per_code))

    def _write_payload(self, n: int, payload: bytes) -> None:
        """Emit a data packet of ``n`` frames whose codes are already packed."""
        self._emit_packet(_COUNT.pack(n) + payload)
        self.num_frames += n

    def _check_open(self) -> None:
        if self._closed:
            raise BitstreamError("StreamWriter is closed")

    def write(self, codes: np.ndarray) -> None:
        """Buffer codes [num_levels, n] and emit every full packet."""
        self._check_open()
        arr = _validate_codes(codes, self.header.num_levels, self.header.codebook_size)
        total = self.num_frames + self._pending.shape[1] + arr.shape[1]
        if total > MAX_TOTAL_FRAMES:
            raise BitstreamError(f"stream too long: {total} frames > {MAX_TOTAL_FRAMES}")
        pending = np.concatenate([self._pending, arr], axis=1)
        k = self.frames_per_packet
        start = 0
        while pending.shape[1] - start >= k:
            self._emit_data(pending[:, start : start + k])
            start += k
        self._pending = pending[:, start:]

    def flush(self) -> None:
        """Emit buffered frames as a (possibly short) packet and flush the file object."""
        self._check_open()
        if self._pending.shape[1]:
            self._emit_data(self._pending)
            self._pending = self._pending[:, :0]
        flush = getattr(self._file, "flush", None)
        if flush is not None:
            flush()

    def close(self, num_samples: int | None = None) -> None:
        """Write the remaining frames and the end packet. Does not close the file object.

        ``num_samples`` is the true length; it is required when the header said unknown and
        must equal the header's value otherwise.
        """
        self._check_open()
        known = self.header.num_samples
        if num_samples is None:
            if known is None:
                raise BitstreamError("header length is unknown: close() needs num_samples")
            num_samples = known
        _check_int("num_samples", num_samples, 0, MAX_NUM_SAMPLES)
        if known is not None and num_samples != known:
            raise BitstreamError(f"num_samples {num_samples} differs from the header's {known}")
        total = self.num_frames + self._pending.shape[1]
        limit = max_samples_for_frames(total, self.header.sample_rate, self.header.frame_rate)
        if num_samples > limit:
            raise BitstreamError(
                f"num_samples {num_samples} is longer than {total} frames can cover ({limit})"
            )
        self.flush()
        self._emit_packet(_COUNT.pack(0) + _END.pack(self.num_frames, num_samples))
        self._closed = True
        flush = getattr(self._file, "flush", None)
        if flush is not None:
            flush()


def encode_stream(header: StreamHeader, codes: np.ndarray) -> bytes:
    """A whole ``.ssc`` file for codes [num_levels, frames]; ``header.num_samples`` is required."""
    if header.num_samples is None:
        raise BitstreamError("encode_stream needs a header with a known num_samples")
    out = io.BytesIO()
    writer = StreamWriter(out, header)
    writer.write(codes)
    writer.close()
    return out.getvalue()


# ---- reading ----------------------------------------------------------------------------------


class _PacketReader:
    """Reads and checks the header and raw packets; the shared core of reading and transcoding."""

    def __init__(self, fileobj: BinaryIO, expected_model_id: str | None) -> None:
        self._file = fileobj
        self.offset = 0
        self.header = self._read_header(expected_model_id)
        self.num_frames = 0
        self.num_samples = self.header.num_samples
        self.finished = False

    def _read_upto(self, n: int) -> bytes:
        """Up to ``n`` bytes (n is always a bounded value); fewer only at end of input."""
        chunks = []
        got = 0
        while got < n:
            chunk = self._file.read(n - got)
            if chunk is None:
                raise BitstreamError("non-blocking input is not supported")
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise BitstreamError(f"input must be a binary file, read() gave {type(chunk)}")
            if not chunk:
                break
            chunks.append(bytes(chunk))
            got += len(chunk)
        data = b"".join(chunks)
        self.offset += len(data)
        return data

    def _read(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes or BitstreamError naming ``what`` was cut off."""
        start = self.offset
        data = self._read_upto(n)
        if len(data) < n:
            raise BitstreamError(
                f"truncated .ssc stream: {what} needs {n} bytes at byte {start}, "
                f"only {len(data)} left"
            )
        return data

    def _read_header(self, expected_model_id: str | None) -> StreamHeader:
        prefix = self._read_upto(_PREFIX.size)
        if not prefix:
            raise BitstreamError("truncated .ssc stream: empty input")
        if not MAGIC.startswith(prefix[: len(MAGIC)]):
            raise BitstreamError(f"not an .ssc file: wrong magic {prefix[: len(MAGIC)]!r}")
        if len(prefix) < _PREFIX.size:
            raise BitstreamError(
                f"truncated .ssc stream: the file header needs {_PREFIX.size} bytes "
                f"at byte 0, only {len(prefix)} left"
            )
        _, version = _PREFIX.unpack(prefix)
        if version != VERSION:
            raise BitstreamError(
                f"unsupported .ssc version {version} (this reader supports version {VERSION})"
            )
        fixed = self._read(_HEADER_V1.size, "the file header")
        channels, levels, frame_rate, sample_rate, codebook_size, n, id_len = _HEADER_V1.unpack(
            fixed
        )
        model_id_bytes = self._read(id_len, "the model id")
        (crc,) = _CRC.unpack(self._read(_CRC.size, "the header CRC"))
        if zlib.crc32(prefix + fixed + model_id_bytes) != crc:
            raise BitstreamError("corrupted .ssc stream: header CRC mismatch")
        try:
            model_id = model_id_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BitstreamError(f"invalid .ssc header: model id is not UTF-8 ({e})") from e
        try:
            header = StreamHeader(
                sample_rate=sample_rate,
                channels=channels,
                num_samples=None if n == UNKNOWN_NUM_SAMPLES else n,
                num_levels=levels,
                frame_rate=frame_rate,
                codebook_size=codebook_size,
                model_id=model_id,
            )
        except BitstreamError as e:
            raise BitstreamError(f"invalid .ssc header: {e}") from e
        if expected_model_id is not None and model_id != expected_model_id:
            raise BitstreamError(
                f"file was made by model {model_id!r}, this is model {expected_model_id!r}"
            )
        self.crc = crc
        return header

    def _check_crc(self, body: bytes, what: str, start: int) -> None:
        (crc,) = _CRC.unpack(self._read(_CRC.size, f"the CRC of the {what}"))
        expected = zlib.crc32(body, self.crc)
        if crc != expected:
            raise BitstreamError(
                f"corrupted .ssc stream: CRC mismatch in the {what} at byte {start}"
            )
        self.crc = crc

    def next_packet(self) -> tuple[int, bytes] | None:
        """(frame count, payload) of the next data packet, or None after the end packet."""
        if self.finished:
            return None
        start = self.offset
        count_byte = self._read(_COUNT.size, "a packet (the end packet is missing)")
        (n,) = _COUNT.unpack(count_byte)
        if n == 0:
            self._finish(count_byte, start)
            return None
        payload = self._read(self.header.payload_bytes(n), "a data packet")
        self._check_crc(count_byte + payload, "data packet", start)
        pad = 8 * len(payload) - self.header.num_levels * n * self.header.bits_per_code
        if pad and payload[-1] & ((1 << pad) - 1):
            raise BitstreamError(f"invalid .ssc stream: nonzero padding bits at byte {start}")
        if self.num_frames + n > MAX_TOTAL_FRAMES:
            raise BitstreamError(f"invalid .ssc stream: more than {MAX_TOTAL_FRAMES} frames")
        self.num_frames += n
        return n, payload

    def _finish(self, count_byte: bytes, start: int) -> None:
        body = self._read(_END.size, "the end packet")
        self._check_crc(count_byte + body, "end packet", start)
        total_frames, num_samples = _END.unpack(body)
        h = self.header
        if total_frames != self.num_frames:
            raise BitstreamError(
                f"invalid .ssc stream: end packet says {total_frames} frames, "
                f"{self.num_frames} were read"
            )
        if num_samples > MAX_NUM_SAMPLES:
            raise BitstreamError(f"invalid .ssc end packet: num_samples = {num_samples}")
        if h.num_samples is not None and num_samples != h.num_samples:
            raise BitstreamError(
                f"invalid .ssc stream: end packet says {num_samples} samples, "
                f"header says {h.num_samples}"
            )
        limit = max_samples_for_frames(self.num_frames, h.sample_rate, h.frame_rate)
        if num_samples > limit:
            raise BitstreamError(
                f"invalid .ssc stream: {num_samples} samples is longer than "
                f"{self.num_frames} frames can cover ({limit})"
            )
        end = self.offset
        if self._read_upto(1):
            raise BitstreamError(f"trailing garbage after the .ssc end packet at byte {end}")
        self.num_samples = num_samples
        self.finished = True


class StreamReader:
    """Reads an ``.ssc`` stream incrementally from a binary file object (pipes included).

    ``.header`` is read on construction. Iterating yields int64 codes [num_levels, n] per data
    packet as it arrives; after exhaustion ``.num_samples`` is the true length (before that it
    is the header's value, None if unknown) and ``.num_frames`` the total frame count.
    """

    def __init__(self, fileobj: BinaryIO, expected_model_id: str | None = None) -> None:
        self._packets = _PacketReader(fileobj, expected_model_id)
        self.header = self._packets.header

    @property
    def num_samples(self) -> int | None:
        return self._packets.num_samples

    @property
    def num_frames(self) -> int:
        return self._packets.num_frames

    @property
    def bytes_read(self) -> int:
        return self._packets.offset

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        packet = self._packets.next_packet()
        if packet is None:
            raise StopIteration
        n, payload = packet
        h = self.header
        codes = unpack_codes(payload, h.num_levels, n, h.bits_per_code)
        if codes.max() >= h.codebook_size:
            raise BitstreamError(
                f"invalid .ssc stream: code value {codes.max()} >= codebook size {h.codebook_size}"
            )
        return codes


def decode_stream(
    data: bytes, expected_model_id: str | None = None
) -> tuple[StreamHeader, np.ndarray]:
    """Parse a whole ``.ssc`` file -> (header with the true num_samples, int64 [levels, frames])."""
    reader = StreamReader(io.BytesIO(data), expected_model_id)
    chunks = list(reader)
    h = reader.header
    codes = np.concatenate(chunks, axis=1) if chunks else np.zeros((h.num_levels, 0), np.int64)
    return replace(h, num_samples=reader.num_samples), codes


# ---- transcoding ------------------------------------------------------------------------------


def transcode_stream(
    fin: BinaryIO, fout: BinaryIO, levels: int | None = None, kbps: float | None = None
) -> StreamHeader:
    """Copy an ``.ssc`` stream keeping only its first ``levels`` levels (or as many as ``kbps``
    allows, :func:`spectrostream.config.levels_for_kbps`), packet by packet. Returns the
    output header.

    Level-major packing makes this a cut of each payload's leading bits; every input CRC is
    checked and every output CRC recomputed.
    """
    if (levels is None) == (kbps is None):
        raise UsageError("transcode needs exactly one of levels and kbps")
    packets = _PacketReader(fin, None)
    h = packets.header
    if kbps is not None:
        per_level = kbps_for_levels(1, h.frame_rate, h.codebook_size)
        levels = levels_for_kbps(kbps, per_level, h.num_levels)
    try:
        _check_int("levels", levels, 1, h.num_levels)
    except BitstreamError as e:
        raise BitstreamError(f"cannot transcode to {levels} levels: file has {h.num_levels}") from e
    writer = StreamWriter(fout, replace(h, num_levels=levels))
    bits = h.bits_per_code
    check_range = h.codebook_size < 1 << bits
    while (packet := packets.next_packet()) is not None:
        n, payload = packet
        kept_bits = levels * n * bits
        cut = bytearray(payload[: -(-kept_bits // 8)])
        if kept_bits % 8:
            cut[-1] &= (0xFF << (8 - kept_bits % 8)) & 0xFF
        if check_range and unpack_codes(bytes(cut), levels, n, bits).max() >= h.codebook_size:
            raise BitstreamError(
                f"invalid .ssc stream: code value >= codebook size {h.codebook_size}"
            )
        writer._write_payload(n, bytes(cut))
    writer.close(packets.num_samples)
    return writer.header


def transcode(data: bytes, levels: int) -> bytes:
    """A whole ``.ssc`` file cut to its first ``levels`` levels (see :func:`transcode_stream`)."""
    out = io.BytesIO()
    transcode_stream(io.BytesIO(data), out, levels)
    return out.getvalue()


# ---- description ------------------------------------------------------------------------------


def describe(header: StreamHeader, num_frames: int, file_size_bytes: int) -> str:
    """Human-readable multi-line summary of an ``.ssc`` file (``spectrostream info``)."""
    h = header
    coded_seconds = num_frames / h.frame_rate
    if h.num_samples is None:
        length = "unknown length"
    else:
        length = f"{h.num_samples / h.sample_rate:.3f} s ({h.num_samples} samples)"
    nominal = kbps_for_levels(h.num_levels, h.frame_rate, h.codebook_size)
    if num_frames:
        actual_kbps = file_size_bytes * 8 / coded_seconds / 1000.0
        overhead = 100.0 * (actual_kbps / nominal - 1.0)
        actual = f"{actual_kbps:.3f} kbps actual ({overhead:+.1f}% headers, packets and CRCs)"
    else:
        actual = "no frames"
    lines = [
        f"model:       {h.model_id}",
        f"audio:       {h.sample_rate} Hz, {h.channels} channel{'s' if h.channels != 1 else ''}",
        f"duration:    {length}",
        f"frames:      {num_frames} at {h.frame_rate} Hz ({coded_seconds:.3f} s coded)",
        f"levels:      {h.num_levels} x {h.codebook_size} codes ({h.bits_per_code} bits each)",
        f"bit rate:    {nominal:.3f} kbps nominal, {actual}",
        f"file size:   {file_size_bytes} bytes",
    ]
    return "\n".join(lines)
