"""scripts/rate_curve.py: SI-SDR by level count, checked against the codec's own round trip."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from spectrostream.codec import Codec, load
from spectrostream.config import SAMPLE_RATE, tiny_config
from spectrostream.metrics import si_sdr
from spectrostream.model import SpectroStream

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "rate_curve.py"
_spec = importlib.util.spec_from_file_location("rate_curve", SCRIPT)
rate_curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rate_curve)


def test_level_counts():
    assert rate_curve.level_counts(64) == [1, 2, 4, 8, 16, 32, 64]
    assert rate_curve.level_counts(6) == [1, 2, 4, 6]
    assert rate_curve.level_counts(1) == [1]


def test_all_levels_match_the_codec_round_trip(tmp_path):
    torch.manual_seed(0)
    codec = Codec(SpectroStream(tiny_config(num_levels=8, codebook_size=64)))
    codec.save(tmp_path / "tiny.safetensors")
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    audio = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], 1) * 0.3
    (tmp_path / "clips").mkdir()
    sf.write(
        tmp_path / "clips" / "tone.wav", audio.astype(np.float32), SAMPLE_RATE, subtype="FLOAT"
    )
    out = tmp_path / "curve.json"
    args = ["--model", tmp_path / "tiny.safetensors", "--data", tmp_path / "clips", "--json", out]
    run = subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)], check=False, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    curve = json.loads(out.read_text())
    assert list(curve["si_sdr_db"]["tone"]) == ["1", "2", "4", "8", "unquantized"]
    x = torch.from_numpy(audio.T.astype(np.float32))[None]
    model = load(tmp_path / "tiny.safetensors").model
    with torch.inference_mode():
        y = model.decode(model.encode(x))
    n = min(x.shape[-1], y.shape[-1])
    expected = float(si_sdr(x[0, :, :n], y[0, :, :n]).mean())
    assert abs(curve["si_sdr_db"]["tone"]["8"] - expected) < 1e-4
    assert all(np.isfinite(v) for v in curve["mean_latent_snr_db"].values())


def test_empty_folder_is_one_line_and_exit_2(tmp_path):
    run = subprocess.run(
        [sys.executable, SCRIPT, "--data", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "no .flac or .wav" in run.stderr
