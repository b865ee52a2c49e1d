"""Training never continues on corrupted weights or lies about its checkpoints (issue 10)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from spectrostream.errors import CheckpointError, DivergedError
from spectrostream.train import checkpoint as ckpt
from spectrostream.train.config import TrainConfig
from spectrostream.train.data import CropDataset, ValidDataset, build_split
from spectrostream.train.loop import StepRunner, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _state(step: int) -> dict:
    torch.manual_seed(step)
    return {"step": step, "w": torch.randn(1000), "data": {"step": step}}


def _flip_a_byte_in_the_tensor_data(path: Path, value: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    at = bytes(data).find(value[:4].numpy().tobytes())  # the tensor's raw bytes in the zip
    assert at > 0
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_caught_and_resume_falls_back(tmp_path, caplog):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, _state(step), keep=3)
    newest = ckpt.checkpoint_path(tmp_path, 3)
    assert ckpt.checksum_path(newest).read_text().split()[1] == newest.name  # sha256sum format
    _flip_a_byte_in_the_tensor_data(newest, _state(3)["w"])
    torch.load(newest, weights_only=True)  # torch alone loads it without complaint
    with pytest.raises(CheckpointError, match="corrupted"):
        ckpt.load_checkpoint(newest)
    with caplog.at_level(logging.WARNING):
        path, state = ckpt.load_latest_intact(tmp_path)
    assert path.name == "step_00000002.pt" and torch.equal(state["w"], _state(2)["w"])
    assert "skipping checkpoint step_00000003.pt" in caplog.text
    for step in (1, 2):
        _flip_a_byte_in_the_tensor_data(ckpt.checkpoint_path(tmp_path, step), _state(step)["w"])
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        ckpt.load_latest_intact(tmp_path)


def test_pruning_removes_sidecars_and_old_checkpoints_load_with_a_warning(tmp_path, caplog):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, _state(step), keep=2)
    names = sorted(p.name for p in ckpt.checkpoint_dir(tmp_path).iterdir())
    assert names == [f"step_0000000{s}.pt{x}" for s in (2, 3) for x in ("", ".sha256")]
    ckpt.checksum_path(ckpt.checkpoint_path(tmp_path, 3)).unlink()  # as written before sidecars
    with caplog.at_level(logging.WARNING):
        assert ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 3))["step"] == 3
    assert "no checksum file" in caplog.text


def _write(path: Path, x: np.ndarray) -> None:
    sf.write(path, x.T.astype(np.float32), 48000, subtype="FLOAT")


def test_non_finite_crops_are_skipped_with_a_warning(tmp_path, caplog):
    t = np.arange(48000) / 48000
    _write(tmp_path / "good.wav", 0.2 * np.stack([np.sin(2 * np.pi * 220 * t)] * 2))
    _write(tmp_path / "nan.wav", np.full((2, 48000), np.nan))
    tracks = build_split([tmp_path], 0.0, None).train
    assert len(tracks) == 2  # the header is fine: only the samples are bad
    ds = CropDataset(tracks, 2400, 2, seed=0)
    with caplog.at_level(logging.WARNING):
        items = [ds[k] for k in range(12)]
    assert all(torch.isfinite(c).all() for c, _, _ in items)
    assert sum(f for _, f, _ in items) == 1 and "nan.wav" in caplog.text


def test_non_finite_validation_crops_become_silence_with_a_warning(tmp_path, caplog):
    _write(tmp_path / "nan.wav", np.full((2, 48000), np.nan))
    tracks = build_split([tmp_path], 0.0, None).train
    with caplog.at_level(logging.WARNING):
        crop = ValidDataset(tracks, 2400, 2, count=1)[0]
    assert torch.equal(crop, torch.zeros(2, 2400)) and "non-finite" in caplog.text


def test_divergence_message_is_true(tmp_path):
    runner = SimpleNamespace(nonfinite=torch.tensor(True))
    with pytest.raises(DivergedError, match="No checkpoint was written"):
        StepRunner.check_finite(runner, 1, tmp_path)
    ckpt.save_checkpoint(tmp_path, _state(5), keep=1)
    with pytest.raises(DivergedError, match="step_00000005.pt, was written before this"):
        StepRunner.check_finite(runner, 7, tmp_path)


def test_a_nan_file_does_not_end_a_training_run(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    t = np.arange(48000) / 48000
    for i in range(2):
        _write(music / f"t{i}.wav", 0.2 * np.stack([np.sin(2 * np.pi * 220 * (i + 1) * t)] * 2))
    _write(music / "nan.wav", np.full((2, 48000), np.nan))
    cfg = TrainConfig.from_toml(CONFIGS / "tiny.toml").with_(
        data={"train": (str(music),)}, optim={"max_steps": 3}, run={"log_every": 1}
    )
    torch.set_num_threads(1)
    result = train(cfg, tmp_path / "run")
    assert result.step == 3
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
