"""Synthetic data and a tiny config for `scripts/gpu_round.sh --smoke`.

python scripts/smoke_data.py DIR            # DIR/train/*.wav, DIR/valid/*.wav (tones)
python scripts/smoke_data.py --config TOML  # a tiny round config with every stage in it
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SMOKE_CONFIG = """\
version = 1
model = "tiny"

[data]
train = []
crop_seconds = 0.32
batch_size = 2
num_workers = 0
valid_crops = 2
valid_batch_size = 2
augment_gain_db = 6.0
augment_flips = true

[optim]
lr = 1e-3
betas = [0.9, 0.99]
warmup_steps = 2
max_steps = 8
decay_steps = 4  # refitted by scripts/round_config.py to the round's second half
decay_final = 0.1
calibrate_init = true

[loss]  # configs/gpu_round.toml's losses
balance = true
bandcos = 0.20
mel = 0.30
envelope = 0.45
envelope_per_octave = [6, 24]
stationary = 0.05
adv_gen = 0.0
adv_feat = 0.0

[quantizer]
ae_steps = 3
ae_noise = 0.05
kmeans_frames = 200
kmeans_iters = 3
restart_distinct = true  # as configs/gpu_round.toml

[run]
device = "cpu"
log_every = 2
val_every = 4
ckpt_every = 4
keep_checkpoints = 2
progress = false
"""


def write_tones(root: Path, sr: int = 48000) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(2 * sr) / sr
    for split, n in (("train", 3), ("valid", 1)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            f0 = 110.0 * (i + 2) * (1.5 if split == "valid" else 1.0)
            x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 4))
            stereo = np.stack([x, np.roll(x, 41)], 1) * 0.2
            stereo += 0.002 * rng.standard_normal(stereo.shape)
            sf.write(root / split / f"tone{i}.wav", stereo.astype(np.float32), sr)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--config":
        Path(argv[1]).write_text(SMOKE_CONFIG)
    elif len(argv) == 1:
        write_tones(Path(argv[0]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
