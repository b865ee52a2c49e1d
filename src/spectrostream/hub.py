"""Google's released SpectroStream weights from the Hugging Face Hub (``huggingface_hub``).

``fetch_official`` downloads ``resources/spectrostream/{encoder,quantizer,decoder}.safetensors``
from ``google/magenta-realtime-2`` into the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``,
``HF_TOKEN``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` are honoured by ``huggingface_hub``) and
returns the official tensors. When the decoder or quantizer file is absent from the revision, it
reads them from ``checkpoints/mrt2_small.safetensors`` instead, fetching only their byte ranges:

    safetensors = u64 little-endian header length N | N bytes of JSON
                  {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}
                  | data (offsets are relative to byte 8 + N)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from tqdm import tqdm

from .official import (
    PARTS,
    ModelError,
    OfficialTensors,
    checkpoint_name,
    read_official,
    read_safetensors,
)

REPO_ID = "google/magenta-realtime-2"
RESOURCE_FILES = {p: f"resources/spectrostream/{p}.safetensors" for p in PARTS}
CHECKPOINT_FILE = "checkpoints/mrt2_small.safetensors"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_HEADER_PROBE = 1 << 16  # first read: the length and, usually, the whole JSON header
_MERGE_GAP = 1 << 20  # byte ranges closer than this are fetched in one request


class HubError(ModelError):
    """The weights could not be fetched from the Hub (offline, missing file, bad download)."""


@dataclass(frozen=True)
class Fetched:
    """Official tensors of one revision: ``commit`` is the resolved sha, ``files`` the repo
    files they came from."""

    tensors: OfficialTensors
    commit: str
    files: tuple[str, ...]


def manual_route(repo_id: str = REPO_ID, revision: str | None = None) -> str:
    files = " ".join(f"{p}.safetensors" for p in PARTS)
    tree = f"https://huggingface.co/{repo_id}/tree/{revision or 'main'}/resources/spectrostream"
    return (
        f"download {files} from {tree} "
        "and run `spectrostream convert-official --encoder encoder.safetensors --decoder "
        "decoder.safetensors --quantizer quantizer.safetensors -o magenta-rt.safetensors`, "
        "then pass --model magenta-rt.safetensors"
    )


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, what: str) -> Iterator[None]:
    """huggingface_hub and network errors -> one-line HubError; its retry warnings (a dozen
    lines while the Hub is down) are silenced meanwhile, our error says what happened."""
    import httpx2
    from huggingface_hub import errors
    from huggingface_hub.utils import logging as hf_logging

    rev = revision or "main"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    except errors.LocalEntryNotFoundError as e:
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub is unreachable"
        raise HubError(f"{what} is not cached and {why}; {manual_route(repo_id, revision)}") from e
    except errors.RevisionNotFoundError as e:
        raise HubError(f"revision {rev!r} does not exist in {repo_id}") from e
    except errors.RepositoryNotFoundError as e:  # gated and private repos too
        raise HubError(
            f"{repo_id} is not accessible (HTTP {e.response.status_code}); if it is gated, accept "
            "its terms on huggingface.co and set HF_TOKEN"
        ) from e
    except (errors.HfHubHTTPError, httpx2.HTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"downloading {what} from {repo_id}@{rev} failed: {first}") from e
    finally:
        hf_logging.set_verbosity(verbosity)


def _probe(repo_id: str, filename: str, revision: str | None) -> None:
    """Fail fast when the Hub is unreachable and the file is not cached: one HEAD without
    retries, where ``hf_hub_download`` would retry for ~25 s (it offers no switch for that)."""
    import httpx2
    from huggingface_hub import (
        constants,
        errors,
        get_hf_file_metadata,
        hf_hub_url,
        try_to_load_from_cache,
    )

    if constants.is_offline_mode() or isinstance(
        try_to_load_from_cache(repo_id, filename, revision=revision), str
    ):
        return
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
    except httpx2.TransportError as e:  # refused, unresolvable, timed out
        raise errors.LocalEntryNotFoundError(str(e)) from e
    except errors.HfHubHTTPError:
        pass  # the Hub answered: hf_hub_download reports it as usual


def _commit_of(local: str, filename: str) -> str:
    """The commit sha from a cache path ``.../snapshots/<sha>/<filename>``."""
    return Path(local).parts[-(len(filename.split("/")) + 1)]


def _verify_blob(local: str, filename: str) -> None:
    """LFS blobs are named by their sha256 (the ETag): check it, and drop a bad blob so that
    the next run downloads it again rather than trusting it."""
    blob = Path(os.path.realpath(local))
    if not _SHA256.fullmatch(blob.name):
        return  # not an LFS blob, or the cache copies files (no symlinks): nothing to check
    h = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    if h.hexdigest() != blob.name:
        Path(local).unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise HubError(f"{filename}: the download is corrupt (sha256 mismatch); removed it")


def _download(repo_id: str, filename: str, revision: str | None) -> str | None:
    """Local path of a repo file (downloaded, checked), or None when the revision lacks it."""
    from huggingface_hub import errors, hf_hub_download

    try:
        local = hf_hub_download(repo_id, filename, revision=revision)
    except errors.RemoteEntryNotFoundError:
        return None
    _verify_blob(local, filename)
    return local


class RangeReader:
    """Byte ranges of one file on the Hub: a HEAD for size and location, then ranged GETs."""

    def __init__(self, repo_id: str, filename: str, revision: str | None) -> None:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(repo_id, filename, revision=revision)
        meta = get_hf_file_metadata(url)
        if meta.size is None or meta.commit_hash is None:
            raise HubError(f"{filename}: the Hub gave no size or commit for it")
        self.name, self.size, self.commit = filename, meta.size, meta.commit_hash
        self.url = meta.location
        self.headers = build_hf_headers()
        if urlsplit(self.url).hostname != urlsplit(url).hostname:
            self.headers.pop("authorization", None)  # a signed CDN address: no token off the Hub
        self.bytes_read = 0

    def read(
        self, begin: int, end: int, progress: Callable[[int], object] | None = None
    ) -> bytearray:
        from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

        if not 0 <= begin <= end <= self.size:
            raise HubError(f"{self.name}: bytes {begin}..{end} lie outside the file ({self.size})")
        headers = {**self.headers, "Range": f"bytes={begin}-{end - 1}"}
        data = bytearray()
        with http_stream_backoff("GET", self.url, headers=headers, follow_redirects=True) as r:
            hf_raise_for_status(r)
            if r.status_code != 206:
                raise HubError(
                    f"{self.name}: the server ignored a range request (HTTP {r.status_code})"
                )
            for chunk in r.iter_bytes(1 << 20):
                data += chunk
                if progress is not None:
                    progress(len(chunk))
        self.bytes_read += len(data)
        if len(data) != end - begin:
            raise HubError(f"{self.name}: got {len(data)} bytes for a range of {end - begin}")
        return data


def parse_header(reader: RangeReader) -> tuple[dict[str, dict], int]:
    """The safetensors JSON header and the offset where its data starts."""
    head = reader.read(0, min(_HEADER_PROBE, reader.size))
    if len(head) < 8:
        raise HubError(f"{reader.name}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    if 8 + n > reader.size:
        raise HubError(f"{reader.name}: header length {n} exceeds the file ({reader.size} bytes)")
    raw = head[8 : 8 + n] if 8 + n <= len(head) else head[8:] + reader.read(len(head), 8 + n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HubError(f"{reader.name}: unreadable safetensors header ({e})") from e
    header.pop("__metadata__", None)
    return header, 8 + n


def _spans(entries: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted byte ranges merged where the gap is small (fewer requests)."""
    spans: list[tuple[int, int]] = []
    for b, e in sorted(entries):
        if spans and b - spans[-1][1] <= _MERGE_GAP:
            spans[-1] = (spans[-1][0], max(spans[-1][1], e))
        else:
            spans.append((b, e))
    return spans


def _entries(
    header: dict[str, dict], base: int, reader: RangeReader, keep: Callable[[str], bool]
) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
    """name -> (dtype, shape, begin, end) in the file, checked against the file size."""
    out = {}
    for name, info in header.items():
        if not keep(name):
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            b, e = (base + int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise HubError(f"{reader.name}: bad header entry for {name!r} ({err})") from err
        count = 1
        for s in shape:
            count *= s
        if e - b != count * dtype.itemsize or not base <= b <= e <= reader.size:
            raise HubError(f"{reader.name}: header entry for {name!r} does not fit the file")
        out[name] = (dtype, shape, b, e)
    return out


def read_tensors_ranged(
    reader: RangeReader, keep: Callable[[str], bool]
) -> dict[str, torch.Tensor]:
    """The tensors whose names ``keep`` accepts, reading only their bytes."""
    header, base = parse_header(reader)
    entries = _entries(header, base, reader, keep)
    spans = _spans([(b, e) for _, _, b, e in entries.values()])
    blobs: dict[int, bytearray] = {}
    total = sum(e - b for b, e in spans)
    name = Path(reader.name).name
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr, disable=None
    ) as bar:
        for b, e in spans:
            blobs[b] = reader.read(b, e, bar.update)
    out = {}
    for name, (dtype, shape, b, e) in entries.items():
        start = max(s for s in blobs if s <= b)
        if e == b:
            out[name] = torch.empty(shape, dtype=dtype)
        else:  # a view into the span's buffer: no copy
            n = (e - b) // dtype.itemsize
            t = torch.frombuffer(blobs[start], dtype=dtype, count=n, offset=b - start)
            out[name] = t.reshape(shape)
    return out


def _from_checkpoint(repo_id: str, commit: str, want: tuple[str, ...]) -> tuple[str, dict]:
    """The ``want`` parts from the Magenta RT checkpoint of the commit, by byte ranges."""
    from huggingface_hub import errors

    label = f"{repo_id}/{CHECKPOINT_FILE}@{commit[:12]}"
    try:
        reader = RangeReader(repo_id, CHECKPOINT_FILE, commit)
    except errors.RemoteEntryNotFoundError as e:
        missing = ", ".join(RESOURCE_FILES[p] for p in want)
        raise HubError(
            f"{repo_id}@{commit[:12]} has neither {missing} nor {CHECKPOINT_FILE}"
        ) from e
    tensors = read_tensors_ranged(
        reader, lambda n: (checkpoint_name(n) or "").split("/", 1)[0] in want
    )
    return f"{label} ({'+'.join(want)}: {reader.bytes_read} of {reader.size} bytes read)", tensors


def fetch_official(revision: str | None = None, repo_id: str = REPO_ID) -> Fetched:
    """Download (or take from the Hugging Face cache) the official tensors of one revision."""
    what = "magenta-rt (Google's SpectroStream weights)"
    with _hub_errors(repo_id, revision, what):
        _probe(repo_id, RESOURCE_FILES["encoder"], revision)
        enc = _download(repo_id, RESOURCE_FILES["encoder"], revision)
        if enc is None:
            raise HubError(
                f"{repo_id}@{revision or 'main'} has no {RESOURCE_FILES['encoder']}, and no other "
                "released file holds the SpectroStream encoder; choose another revision"
            )
        commit = _commit_of(enc, RESOURCE_FILES["encoder"])  # all files from this one commit
        local = {"encoder": enc}
        local |= {
            p: _download(repo_id, RESOURCE_FILES[p], commit) for p in ("quantizer", "decoder")
        }
        sources = {
            p: (f"{repo_id}/{RESOURCE_FILES[p]}@{commit[:12]}", read_safetensors(path))
            for p, path in local.items()
            if path is not None
        }
        want = tuple(p for p in PARTS if p not in sources)
        checkpoint = _from_checkpoint(repo_id, commit, want) if want else None
        tensors = read_official(
            sources["encoder"], checkpoint, sources.get("decoder"), sources.get("quantizer")
        )
    files = [label for label, _ in sources.values()] + ([checkpoint[0]] if checkpoint else [])
    return Fetched(tensors, commit, tuple(files))
