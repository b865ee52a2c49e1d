"""scripts/gpu_round.sh --smoke: the GPU round end to end at tiny size on the CPU."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spectrostream.codec import load

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs bash")
def test_gpu_round_smoke(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS="1", PYTHON=sys.executable)
    env["PYTHONPATH"] = str(ROOT / "src")
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_round.sh"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())
    parts = sorted(out.glob("model.safetensors.part-*"))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"".join(p.read_bytes() for p in parts))
    digest = (out / "model.sha256").read_text().split()[0]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    summary = json.loads((out / "round.json").read_text())
    assert summary["steps"] == 8
    # the batch probe ran at the config's batch, 2x and 4x, and the round used its choice;
    # the decay was fitted to the second half of the 8 steps
    fit, cfg = summary["fit"], summary["train_config"]
    assert [r["batch"] for r in fit["probe"]] == [2, 4, 8]
    assert all(r["error"] is None and r["steps_per_s"] > 0 for r in fit["probe"])
    assert cfg["data"]["batch_size"] == fit["batch_size"] in (2, 4, 8)
    assert (cfg["optim"]["decay_start"], cfg["optim"]["decay_steps"]) == (4, 4)
    v = summary["validation"]
    for key in (
        "val/si_sdr_bypass",
        "val/si_sdr_16kbps",
        "val/pca_top4_share",
        "val/top_band_16kbps",
    ):
        assert key in v, key
    assert 0 < v["val/comb_reference"]["value"] < 1 and 0 < v["val/comb_16kbps"]["value"] < 1
    assert set(summary["loss_shares"]) == {
        "share/mel/loss",
        "share/stft/bandcos",
        "share/stft/envelope",
        "share/stft/stationary",
    }
    # the GPU-vs-CPU inference check ran (CPU against CPU here: identical codes and audio)
    check = json.loads((out / "gpu_check.json").read_text())
    fp32 = check["files"][0]["fp32"]
    assert fp32["codes_equal"] == 1.0 and fp32["decode_snr_db"] is None
    assert 0 < check["files"][0]["bf16"]["level0_equal"] <= 1
    log = (out / "train.log").read_text()
    assert "k-means:" in log and "validation step 8" in log
    codec = load(model)
    assert codec.model.config.num_levels == 8


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs bash")
def test_gpu_round_refuses_a_low_passed_pack(tmp_path):
    # Vorbis below quality 0.3 is low-passed at 16-17 kHz (spectrostream.data.pack).
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"vorbis_quality": 0.0}))
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON="python")
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_round.sh"), "--data", str(data)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert r.returncode == 2 and "low-passed" in r.stderr, r.stderr
    assert not (tmp_path / "out" / "train.log").exists()
