"""``load("magenta-rt")``: the real huggingface_hub client against a loopback stand-in of the Hub.

The stand-in (a threading ``http.server`` on 127.0.0.1) answers what huggingface_hub 2.4 asks
when it downloads a file: ``HEAD`` and ``GET /{repo}/resolve/{revision}/{path}`` with
``X-Repo-Commit``, ``ETag`` (the sha256, as the Hub gives for LFS files), ``Content-Length``,
``Range`` (206) and the Hub's ``X-Error-Code`` 404s (plus a 404 for the once-a-day
``/api/agent-harnesses`` registry that the client asks for when it first builds its headers). It serves the parity fixture's weights
(``../shared/spec/parity/gen_weights.py``) in the official layout, with a different name prefix
in each file. In this process the client's settings are patched in ``huggingface_hub.constants``
(it reads the environment once, at import); the subprocess test uses the real variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.numpy import save as st_save
from safetensors.torch import save as st_save_torch

from spectrostream import load
from spectrostream.cli import main
from spectrostream.hub import CHECKPOINT_FILE, REPO_ID, RESOURCE_FILES
from spectrostream.official import ATTRIBUTION, PARTS, ModelError, OfficialTensors, check_names
from spectrostream.weights import read_metadata

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_loopbacktesttoken"
SMALL_MARGIN = {(4, 57), (21, 46)}  # near-tie RVQ decisions of the parity fixture (its README)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    """Revisions -> commit sha -> {path: bytes}; records every request."""

    def __init__(self) -> None:
        self.refs: dict[str, str] = {}
        self.commits: dict[str, dict[str, bytes]] = {}
        self.faults: dict[tuple[str, str], str] = {}  # (commit, path) -> corrupt|drop|short
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self.bytes_sent: dict[str, int] = {}
        self.etags: dict[int, str] = {}  # id(bytes) -> sha256
        self.dropped: dict[str, bool] = {}
        self.lock = threading.Lock()

    def add(self, ref: str, files: dict[str, bytes]) -> str:
        commit = sha(ref.encode())[:40]
        self.refs[ref] = self.refs[commit] = commit
        self.commits[commit] = files
        for data in files.values():
            if id(data) not in self.etags:
                self.etags[id(data)] = sha(data)
        return commit


def make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _error(self, code: int, error: str, commit: str | None = None) -> None:
            self.send_response(code)
            self.send_header("X-Error-Code", error)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, body: bool) -> None:
            with hub.lock:
                hub.requests.append(
                    (
                        self.command,
                        self.path,
                        self.headers.get("Range"),
                        self.headers.get("Authorization"),
                    )
                )
            prefix = f"/{REPO_ID}/resolve/"
            if not self.path.startswith(prefix):
                return self._error(404, "RepoNotFound")
            rev, _, path = self.path[len(prefix) :].partition("/")
            commit = hub.refs.get(unquote(rev))
            if commit is None:
                return self._error(404, "RevisionNotFound")
            path = unquote(path)
            data = hub.commits[commit].get(path)
            if data is None:
                return self._error(404, "EntryNotFound", commit)
            fault = hub.faults.get((commit, path))
            etag = hub.etags[id(data)]
            if fault == "corrupt":
                data = data[:1000] + bytes(b ^ 0xFF for b in data[1000:1100]) + data[1100:]
            begin, end = 0, len(data)
            rng = self.headers.get("Range")
            if body and fault == "drop" and hub.dropped.get(commit):
                return self._error(503, "Unavailable")  # the client's retry fails too
            if rng:
                a, b = rng.removeprefix("bytes=").split("-")
                begin, end = int(a), min(int(b) + 1 if b else len(data), len(data))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {begin}-{end - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Accept-Ranges", "bytes")
            served = data[begin:end]
            if fault == "short" and body:
                served = served[: len(served) // 2]  # honest length, half the file
            self.send_header("Content-Length", str(len(served)))
            self.end_headers()
            if not body:
                return
            if fault == "drop":
                served = served[: len(served) // 2]  # then the connection closes early
                hub.dropped[commit] = True
            self.wfile.write(served)
            with hub.lock:
                hub.bytes_sent[path] = hub.bytes_sent.get(path, 0) + len(served)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

    return Handler


@contextlib.contextmanager
def hub_env(hub_url: str, home: Path, offline: bool = False):
    """HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE for this process."""
    from huggingface_hub import constants

    values = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "ENDPOINT": hub_url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub_url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": offline,
        "HF_TOKEN_PATH": str(home / "token"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in values.items():
            mp.setattr(constants, k, v)
        mp.setenv("HF_TOKEN", TOKEN)
        mp.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield


def subprocess_env(hub_url: str, home: Path, offline: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_HOME=str(home),
        HF_HUB_CACHE=str(home / "hub"),
        HF_ENDPOINT=hub_url,
        HF_HUB_OFFLINE="1" if offline else "0",
        PYTHONPATH=str(ROOT / "src"),
        OMP_NUM_THREADS="1",
    )
    return env


# ---- the official files ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def official_files(parity_dir):
    """The parity weights in the official layout, fp16 (they are fp16-exact), one file per part
    with a different prefix each, and a Magenta RT checkpoint with a large foreign subtree."""
    from gen_weights import make_param

    manifest = json.loads((parity_dir / "manifest.json").read_text())
    params = {
        k: make_param(k, tuple(v["shape"])).astype(np.float16)
        for k, v in manifest["params"].items()
    }
    enc = {f"params/{k}": v for k, v in params.items() if k.startswith("encoder/")}
    dec = {f"soundstream/{k}": v for k, v in params.items() if k.startswith("decoder/")}
    quant = {"embedding": params["quantizer/embedding"]}  # named below the part
    ck = {f"params/soundstream/{k}": v for k, v in params.items() if not k.startswith("encoder/")}
    # The language model's own params/decoder/... must not be taken for the codec's decoder.
    ck["params/decoder/layers_0/mlp/kernel"] = np.zeros((4096, 8192), np.float16)
    ck["params/encoder/layers_0/mlp/kernel"] = np.zeros((4096, 8192), np.float16)
    return {
        "encoder": st_save(enc),
        "decoder": st_save(dec),
        "quantizer": st_save(quant),
        "checkpoint": st_save(ck),
        "names": sorted(params),
    }


@pytest.fixture(scope="module")
def hub(official_files):
    hub = FakeHub()
    f = official_files
    resources = {RESOURCE_FILES[p]: f[p] for p in PARTS}
    hub.main = hub.add("main", resources)
    hub.fallback = hub.add(
        "fallback", {RESOURCE_FILES["encoder"]: f["encoder"], CHECKPOINT_FILE: f["checkpoint"]}
    )
    hub.add("no-encoder", {CHECKPOINT_FILE: f["checkpoint"]})
    hub.add("no-decoder", {RESOURCE_FILES[p]: f[p] for p in ("encoder", "quantizer")})
    for fault in ("corrupt", "drop", "short"):
        commit = hub.add(fault, resources)
        hub.faults[(commit, RESOURCE_FILES["encoder"])] = fault
    mixed = {
        "params/soundstream/decoder/a/conv/kernel": torch.randn(3, 5).to(torch.bfloat16),
        "params/soundstream/decoder/a/conv/bias": torch.randn(7),
        "params/lm/big": torch.zeros(1 << 20),
        "params/soundstream/quantizer/step": torch.arange(4),
    }
    hub.mixed = mixed
    hub.add("mixed-dtypes", {CHECKPOINT_FILE: st_save_torch(mixed)})
    bad_decoder = st_save({"decoder/decoder_0/conv2d_3x3/conv/kernel": np.zeros((1,), np.float16)})
    hub.add("bad-names", {**resources, RESOURCE_FILES["decoder"]: bad_decoder})
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield hub
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fetched(hub, tmp_path_factory):
    """The first ``load("magenta-rt")`` into an empty cache."""
    home = tmp_path_factory.mktemp("hf_home")
    hub.requests.clear()
    err = io.StringIO()
    with hub_env(hub.url, home), contextlib.redirect_stderr(err):
        codec = load("magenta-rt")
    return {"codec": codec, "home": home, "requests": list(hub.requests), "stderr": err.getvalue()}


def entries(home: Path) -> list[str]:
    """Files in our cache folder and unfinished downloads in the Hub cache."""
    ours = sorted(p.name for p in (home / "spectrostream").glob("*")) if home.exists() else []
    partial = sorted(
        p.name for p in home.rglob("*") if p.name.endswith((".incomplete", ".partial"))
    )
    return ours + partial


# ---- tests -----------------------------------------------------------------------------------
def test_load_magenta_rt_matches_the_official_network(fetched, parity_dir):
    codec = fetched["codec"]
    fx = dict(np.load(parity_dir / "spectrostream_parity_fixture.npz"))
    audio = torch.from_numpy(fx["audio_in"]).permute(0, 2, 1)  # [1, 2, T]
    with torch.no_grad():
        emb = codec.model.encode_embeddings(audio)
        codes = codec.model.quantizer.encode(emb, 64)[0].T.numpy()  # [25, 64]
    ref = fx["codes_64"][0]
    for frame in np.nonzero((codes != ref).any(1))[0]:
        first = np.nonzero(codes[frame] != ref[frame])[0][0]
        assert (frame, first) in SMALL_MARGIN  # only a documented near-tie may flip
    out = codec.decode(torch.from_numpy(ref.T[None].astype(np.int64)))[0].T.numpy()
    ref_out = fx["audio_out_64"][0]
    assert np.abs(out - ref_out).max() / np.abs(ref_out).max() < 1e-4


def test_first_fetch_downloads_three_files_records_revision_and_attribution(fetched, hub):
    resolve = [r for r in fetched["requests"] if "/resolve/" in r[1]]
    # Besides files, huggingface_hub asks (once a day) for its /api/agent-harnesses registry.
    assert {p for _, p, _, _ in fetched["requests"]} - {p for _, p, _, _ in resolve} <= {
        "/api/agent-harnesses"
    }
    methods = sorted((m, p.rsplit("/", 1)[1]) for m, p, _, _ in resolve)
    files = sorted(f"{p}.safetensors" for p in PARTS)
    # The encoder is asked for twice: a HEAD without retries first, to fail fast when offline.
    heads = sorted([*files, "encoder.safetensors"])
    assert methods == [("GET", f) for f in files] + [("HEAD", f) for f in heads]
    # The first file resolves "main"; the others are asked for at that commit.
    assert sum(f"/resolve/{hub.main}/" in p for _, p, _, _ in resolve) == 4
    assert all(auth == f"Bearer {TOKEN}" for _, _, _, auth in resolve)  # HF_TOKEN
    assert fetched["stderr"].count(ATTRIBUTION) == 1
    path = fetched["home"] / "spectrostream" / "magenta-rt@main.safetensors"
    meta = read_metadata(path)
    assert meta["revision"] == hub.main and meta["license"] == "CC-BY-4.0"
    assert meta["attribution"] == ATTRIBUTION and meta["model_id"] == fetched["codec"].model_id
    assert fetched["codec"].model_id.startswith("mrt-")
    assert fetched["codec"].parts == PARTS
    assert entries(fetched["home"]) == ["magenta-rt@main.safetensors"]


def test_second_load_makes_no_request(fetched, hub):
    hub.requests.clear()
    err = io.StringIO()
    with hub_env(hub.url, fetched["home"]), contextlib.redirect_stderr(err):
        again = load("magenta-rt")
    assert hub.requests == []
    assert ATTRIBUTION not in err.getvalue()  # printed once, when fetched
    assert again.model_id == fetched["codec"].model_id


def test_convert_official_gives_the_same_model_id(fetched, official_files, tmp_path):
    for p in PARTS:
        (tmp_path / f"{p}.safetensors").write_bytes(official_files[p])
    out = tmp_path / "model.safetensors"
    args = [f"--{p}={tmp_path / f'{p}.safetensors'}" for p in PARTS]
    assert main(["convert-official", *args, "-o", str(out)]) == 0
    assert read_metadata(out)["model_id"] == fetched["codec"].model_id


def test_fallback_reads_only_the_needed_byte_ranges(fetched, hub, official_files):
    """A revision without decoder/quantizer files: they come from the checkpoint, by range."""
    hub.requests.clear()
    hub.bytes_sent.clear()
    with hub_env(hub.url, fetched["home"]), contextlib.redirect_stderr(io.StringIO()):
        from spectrostream.weights import resolve_model

        path = resolve_model("magenta-rt", revision="fallback")
    meta = read_metadata(path)
    assert meta["revision"] == hub.fallback and path.name == "magenta-rt@fallback.safetensors"
    assert meta["model_id"] == fetched["codec"].model_id  # the same weights, by another route
    assert (
        CHECKPOINT_FILE in meta["source_files"]
        and "decoder.safetensors" not in meta["source_files"]
    )
    size = len(official_files["checkpoint"])
    sent = hub.bytes_sent[CHECKPOINT_FILE]
    needed = len(official_files["decoder"]) + len(official_files["quantizer"])
    assert sent < 1.01 * needed + (1 << 16) and sent < 0.6 * size, (sent, needed, size)
    assert all(r for m, p, r, _ in hub.requests if m == "GET" and CHECKPOINT_FILE in p)


def test_offline_with_an_empty_cache_is_one_clear_line(hub, tmp_path, capsys):
    hub.requests.clear()
    with hub_env(hub.url, tmp_path, offline=True):
        with pytest.raises(ModelError) as e:
            load("magenta-rt")
        assert main(["encode", "x.wav", "x.ssc", "--model", "magenta-rt"]) == 2
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and "convert-official" in msg
    assert f"huggingface.co/{REPO_ID}" in msg
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE" in err
    assert hub.requests == [] and entries(tmp_path) == []


@pytest.mark.parametrize(
    ("revision", "match"),
    [
        ("corrupt", "corrupt"),  # bytes that do not match the sha256 ETag
        ("drop", "failed"),  # half the body, connection closed, then the retry fails
        ("short", "failed"),  # a body shorter than the announced size
    ],
)
def test_bad_downloads_fail_cleanly_and_leave_nothing(hub, tmp_path, revision, match):
    quiet = contextlib.redirect_stderr(io.StringIO())
    with hub_env(hub.url, tmp_path), quiet, pytest.raises(ModelError, match=match) as e:
        load("magenta-rt", revision=revision)
    assert "\n" not in str(e.value)
    assert entries(tmp_path) == []
    blobs = list((tmp_path / "hub").rglob("blobs/*"))
    assert blobs == []  # nothing half-written or unverified is kept to be trusted later


def test_missing_tensors_say_what_was_expected_and_found(hub, official_files, tmp_path):
    quiet = contextlib.redirect_stderr(io.StringIO())
    with hub_env(hub.url, tmp_path), quiet, pytest.raises(ModelError) as e:
        load("magenta-rt", revision="bad-names")
    msg = str(e.value)
    n_dec = sum(n.startswith("decoder/") for n in official_files["names"])
    assert "expected the 97 tensors" in msg and f"found {97 - n_dec + 1} " in msg
    assert f"missing {n_dec - 1}: decoder/" in msg
    assert "decoder/decoder_0/conv2d_3x3/conv/kernel" in msg  # the one found, as named
    assert "decoder/decoder_0/conv2d_3x3/conv/bias" in msg  # the first missing one
    assert f"{REPO_ID}/{RESOURCE_FILES['decoder']}@" in msg
    assert entries(tmp_path) == []


def test_missing_files_and_revisions_are_clear_errors(hub, tmp_path):
    with hub_env(hub.url, tmp_path), pytest.raises(ModelError, match="encoder"):
        load("magenta-rt", revision="no-encoder")
    with hub_env(hub.url, tmp_path), pytest.raises(ModelError, match="does not exist"):
        load("magenta-rt", revision="v999")
    with hub_env(hub.url, tmp_path), pytest.raises(ModelError, match=f"nor {CHECKPOINT_FILE}"):
        load("magenta-rt", revision="no-decoder")
    with pytest.raises(ModelError, match="applies to hub models"):
        load("default", revision="main")


def test_range_reads_give_exact_tensors_of_any_dtype(hub, tmp_path):
    from spectrostream.hub import RangeReader, read_tensors_ranged

    hub.bytes_sent.clear()
    with hub_env(hub.url, tmp_path):
        reader = RangeReader(REPO_ID, CHECKPOINT_FILE, "mixed-dtypes")
        got = read_tensors_ranged(reader, lambda n: "soundstream" in n)
    want = {k: v for k, v in hub.mixed.items() if "soundstream" in k}
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert hub.bytes_sent[CHECKPOINT_FILE] < reader.size // 8  # the 4 MiB tensor is not read


@pytest.mark.parametrize("prefix", ["", "params/", "params/soundstream/", "soundstream/"])
def test_every_prefix_is_accepted_in_each_file(official_files, prefix):
    from spectrostream.config import official_config

    for relative in (False, True):  # "decoder/x/..." or, in the decoder's own file, "x/..."
        tensors = OfficialTensors()
        for part in PARTS:
            names = [n for n in official_files["names"] if n.startswith(part + "/")]
            if relative:
                names = [n.split("/", 1)[1] for n in names]
            tensors.add((part, {prefix + n: torch.empty(0) for n in names}), part, [part])
        assert sorted(tensors.params) == official_files["names"]
        check_names(tensors.found, PARTS, official_config(), "files")


def test_cli_models_encode_and_info(fetched, hub, tmp_path, capsys):
    """``--model magenta-rt`` in a fresh process, offline, from the cache; then models and info."""
    wav = tmp_path / "a.wav"
    t = np.arange(9600) / 48000
    sf.write(wav, np.stack([np.sin(2 * np.pi * 440 * t)] * 2, 1).astype(np.float32) * 0.3, 48000)
    hub.requests.clear()
    env = subprocess_env(hub.url, fetched["home"], offline=True)
    cmd = [sys.executable, "-m", "spectrostream", "encode", str(wav), str(tmp_path / "a.ssc")]
    r = subprocess.run(
        [*cmd, "--model", "magenta-rt", "--kbps", "4"], env=env, capture_output=True, check=False
    )
    assert r.returncode == 0, r.stderr.decode()
    assert hub.requests == []
    with hub_env(hub.url, fetched["home"]):
        assert main(["info", str(tmp_path / "a.ssc")]) == 0
        info = capsys.readouterr().out
        assert fetched["codec"].model_id in info and ATTRIBUTION in info
        assert main(["models"]) == 0
        listing = capsys.readouterr().out
    lines = {line.split()[0]: line for line in listing.splitlines() if not line.startswith(" ")}
    assert lines["magenta-rt"].split()[1] == "CC-BY-4.0" and "MiB" in lines["magenta-rt"]
    assert "revision " + hub.main[:12] in listing and "placeholder" in listing
    assert "default" in lines and "Apache-2.0" in lines["default"]


def test_models_lists_magenta_rt_as_not_downloaded(hub, tmp_path, capsys):
    with hub_env(hub.url, tmp_path):
        assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "not downloaded" in out.splitlines()[0] and "magenta-rt" in out.splitlines()[0]
