"""Property: random sequences of CLI operations on a small tree of good and bad files never
change an input, and every reported success leaves a valid output (issue 10)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spectrostream import atomic, bitstream
from spectrostream.cli import main
from spectrostream.codec import Codec
from spectrostream.config import tiny_config
from spectrostream.model import SpectroStream

INPUTS = ["in", "in/a.wav", "in/b.flac", "in/bad.wav", "in/empty.wav", "in/g.ssc", "in/cut.ssc"]
TARGETS = [*INPUTS, "out", "out/x.ssc", "out/x.wav", "out/x.flac", "out/sub", "missing/y.ssc"]
COMMANDS = ["encode", "decode", "roundtrip", "transcode", "info"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    Codec(SpectroStream(tiny_config(num_levels=8, codebook_size=64))).save(path)
    return path


def make_tree(root: Path, model: Path) -> None:
    (root / "in").mkdir()
    t = np.arange(9000) / 44100
    x = 0.3 * np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 440 * t)])
    sf.write(root / "in/a.wav", x.T, 44100)
    sf.write(root / "in/b.flac", x[:1].T, 22050)
    (root / "in/bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (root / "in/empty.wav").write_bytes(b"")
    assert (
        main(["encode", str(root / "in/a.wav"), str(root / "in/g.ssc"), "--model", str(model)]) == 0
    )
    data = (root / "in/g.ssc").read_bytes()
    (root / "in/cut.ssc").write_bytes(data[: len(data) * 2 // 3])


def snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def valid(path: Path) -> bool:
    """A complete .ssc file (every CRC checks) or a readable, non-empty audio file."""
    if path.read_bytes()[:4] == bitstream.MAGIC:
        bitstream.decode_stream(path.read_bytes())
        return True
    return sf.info(str(path)).frames > 0


def run(root: Path, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse refusing arguments
        return int(e.code)


operation = st.tuples(
    st.sampled_from(COMMANDS),
    st.sampled_from(INPUTS),
    st.sampled_from(TARGETS),
    st.sampled_from([[], ["--levels", "2"], ["--levels", "9"], ["--kbps", "0.5"], ["--force"]]),
    st.booleans(),
)


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, min_size=2, max_size=4))
def test_no_input_changes_and_every_success_is_valid(model, ops):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tree(root, model)
        for command, src, dst, options, salvage in ops:
            argv = [command, str(root / src)]
            if command != "info":
                argv.append(str(root / dst))
            if command == "transcode" and not any(o in options for o in ("--levels", "--kbps")):
                options = [*options, "--levels", "1"]
            if command in ("encode", "decode", "roundtrip"):
                argv += ["--model", str(model)]
            if command == "decode" and salvage:
                argv.append("--salvage")
            if command != "info":
                argv += [o for o in options if command != "decode" or o == "--force"]
            argv = [a for a in argv if a != "--force" or command in ("encode", "transcode")]
            before = snapshot(root)
            code = run(root, argv)
            assert code in (0, 2), argv
            after = snapshot(root)
            # Every file stays as it was, except the one the user named as the output.
            named = {dst} if command != "info" and dst != src else set()
            assert {k: after.get(k) for k in before if k not in named} == {
                k: v for k, v in before.items() if k not in named
            }, argv
            written = [k for k in after if after[k] != before.get(k)]
            if command == "info" or (code != 0 and src != "in"):  # batches keep going
                assert written == [], argv
            assert all(valid(root / k) for k in written), (argv, written)
            leftovers = [p for p in root.rglob(f"{atomic.TEMP_PREFIX}*")]
            assert not leftovers, (argv, leftovers)
