"""The shipped default model: `spectrostream.load()` and the CLI work with no --model."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

import spectrostream
from spectrostream import bitstream
from spectrostream.codec import MODELS_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_default_model_keeps_the_paper_rate_structure():
    codec = spectrostream.load()
    cfg = codec.config
    assert (cfg.num_levels, cfg.codebook_size, cfg.embedding_dim) == (64, 1024, 256)
    assert codec.frame_rate == 25 and codec.sample_rate == 48000 and codec.channels == 2
    assert codec.parts == ("encoder", "quantizer", "decoder")
    card = json.loads((MODELS_DIR / "default.json").read_text())
    assert card["model_id"] == codec.model_id
    assert card["parameters"] == codec.model.num_parameters() <= 30_000_000


def test_default_model_round_trip_is_finite_and_exact_length():
    codec = spectrostream.load()
    rng = np.random.default_rng(0)
    t = np.arange(44100 * 2) / 44100
    x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)])
    x = (x + 0.01 * rng.standard_normal(x.shape)).astype(np.float32)
    data = codec.compress(x, 44100, kbps=8)
    y, sr = codec.decompress(data)
    assert sr == 44100 and y.shape == x.shape and np.isfinite(y.numpy()).all()
    h, codes = bitstream.decode_stream(data)
    assert h.model_id == codec.model_id and codes.shape[0] == 32


def test_cli_without_model_argument(tmp_path):
    x = (0.1 * np.random.default_rng(1).standard_normal((44100, 2))).astype(np.float32)
    sf.write(tmp_path / "song.flac", x, 44100)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    run = [sys.executable, "-m", "spectrostream"]
    enc = subprocess.run(
        [*run, "encode", str(tmp_path / "song.flac"), str(tmp_path / "song.ssc")],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert enc.returncode == 0, enc.stderr
    dec = subprocess.run(
        [*run, "decode", str(tmp_path / "song.ssc"), "-"],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert dec.returncode == 0, dec.stderr
    y, sr = sf.read(io.BytesIO(dec.stdout))
    assert sr == 44100 and y.shape == x.shape


def test_models_listing_states_the_shipped_step_count():
    # `spectrostream models` describes the default in one line; it must follow each new version.
    from spectrostream.weights import DEFAULT_MODEL, NAMED_MODELS

    card = json.loads((MODELS_DIR / "default.json").read_text())
    assert f"trained {card['steps']:,} steps" in NAMED_MODELS[DEFAULT_MODEL].description
    model_card = (ROOT / "docs" / "model-card.md").read_text()
    assert f"{card['steps']:,} steps" in model_card and card["model_id"] in model_card
