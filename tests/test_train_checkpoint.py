"""Checkpoints: atomic writes survive a killed writer, pruning, weights_only loading, RNG state."""

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from spectrostream.train import checkpoint as ckpt

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _state(step):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), betas=(0.5, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "step": step,
        "train_config": "{}",
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "rng": [ckpt.rng_state()],
        "data": {"step": step},
    }


def test_save_prune_and_load_with_weights_only(tmp_path):
    for s in (5, 10, 15, 20):
        ckpt.save_checkpoint(tmp_path, _state(s), keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [15, 20]
    latest = ckpt.latest_checkpoint(tmp_path)
    state = ckpt.load_checkpoint(latest)  # uses torch.load(weights_only=True)
    assert state["step"] == 20 and state["format"] == "spectrostream-train"
    assert state["opt"]["param_groups"][0]["betas"] == (0.5, 0.9)
    assert ckpt.resolve_checkpoint(tmp_path) == latest
    assert not list((tmp_path / "checkpoints").glob("*.tmp*"))


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_wrong_or_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoints"):
        ckpt.resolve_checkpoint(tmp_path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ckpt.CheckpointError, match="not a spectrostream training checkpoint"):
        ckpt.load_checkpoint(other)
    path = ckpt.save_checkpoint(tmp_path, _state(1), keep=3)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(path)


WRITER = textwrap.dedent("""
    import sys, time, torch
    from spectrostream.train import checkpoint as ckpt
    run = sys.argv[1]
    ckpt.save_checkpoint(run, {"step": 1, "w": torch.arange(10.0)}, keep=3)
    real_save = torch.save
    def slow_save(obj, f):
        import io
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("half-written", flush=True)
        time.sleep(60)
        f.write(data[len(data) // 2:])
    torch.save = slow_save
    ckpt.save_checkpoint(run, {"step": 2, "w": torch.zeros(100000)}, keep=3)
""")


def test_killed_writer_leaves_previous_checkpoint_loadable(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "half-written"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stray = list((tmp_path / "checkpoints").glob("*.tmp*"))
    assert len(stray) == 1  # the partial write exists, under a temporary name
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(10.0))
    # The next save clears the stray temporary file.
    ckpt.save_checkpoint(tmp_path, {"step": 3}, keep=3)
    assert not list((tmp_path / "checkpoints").glob("*.tmp*"))
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 3]
