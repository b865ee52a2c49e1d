"""The recipe's losses learn phase: a tiny model overfits one fixed batch to SI-SDR > 0 dB.

With the old losses (mel + L1 on the complex STFT and waveform) the same network could not
memorise one batch (SI-SDR stayed far below 0 dB while the mel distance fell); see
docs/training.md.
"""

import numpy as np
import torch

from spectrostream.train.config import TrainConfig
from spectrostream.train.loop import DistInfo, StepRunner, build_nets
from spectrostream.train.losses import si_sdr


def fixed_batch(channels: int, seconds: float, sr: int = 48000) -> torch.Tensor:
    """Two crops of harmonic tones (different pitch, phase and stereo image)."""
    t = np.arange(int(seconds * sr)) / sr
    crops = []
    for f0, phase in ((220.0, 0.0), (331.0, 1.0)):
        x = sum(np.sin(2 * np.pi * f0 * h * t + phase * h) / h for h in range(1, 5))
        y = np.sin(2 * np.pi * 1.5 * f0 * t + phase)
        crops.append(np.stack([x, y][:channels]))
    return torch.tensor(np.stack(crops) * 0.2, dtype=torch.float32)


def recipe(steps: int) -> TrainConfig:
    return TrainConfig(model="tiny").with_(
        model_overrides={"audio_channels": 1},
        optim={"lr": 3e-3, "betas": (0.9, 0.99), "max_steps": steps, "calibrate_init": True},
        loss={
            "balance": True,
            "sdr": 0.4,
            "cstft": 0.4,
            "mel": 0.2,
            "mel_scales": (256, 1024),
            "adv_gen": 0.0,
            "adv_feat": 0.0,
        },
        quantizer={"ae_steps": steps},
        run={"device": "cpu"},
    )


def test_tiny_model_overfits_one_batch_with_phase():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        steps = 300
        cfg = recipe(steps)
        nets = build_nets(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
        runner = StepRunner(cfg, nets, torch.device("cpu"))
        x = fixed_batch(1, 0.32)
        first = None
        for step in range(steps):
            runner.step(x, step)
            if step == 0:
                first = runner.read_stats()["metrics/si_sdr"]
        with torch.no_grad():
            y = nets.model.decode_embeddings(nets.model.encode_embeddings(x))
            final = si_sdr(x[..., : y.shape[-1]], y).mean().item()
    finally:
        torch.set_num_threads(n)
    assert first < -20.0  # starts without phase
    assert final > 0.0, final
