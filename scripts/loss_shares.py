"""Measure each loss's share of the gradient that reaches the decoded audio.

    python scripts/loss_shares.py CONFIG.toml DATA_DIR [--checkpoint RUN_DIR_OR_PT] [--batches N]

For the generator (fresh and calibrated per CONFIG, or from a checkpoint) and N training
batches (quantizer bypassed), prints ||dL_i/dy|| for every reconstruction loss and the share
each would get under three weightings: the shipped 600-step model's (mel 1, aux_stft 1000,
aux_wave 1000), the old configs/cpu_default.toml's (mel 0.05, aux_stft 1000, aux_wave 1000)
and the balanced recipe's (by construction its configured shares).
"""

from __future__ import annotations

import argparse
import json

import torch

from spectrostream.train import checkpoint as ckpt
from spectrostream.train.config import TrainConfig
from spectrostream.train.data import CropDataset, build_split
from spectrostream.train.loop import DistInfo, build_nets
from spectrostream.train.losses import (
    MultiScaleMelLoss,
    compressed_stft_loss,
    sdr_loss,
    stft_l1,
    waveform_l1,
)

WEIGHTINGS = {
    "shipped 600-step model": {"mel": 1.0, "aux_stft": 1000.0, "aux_wave": 1000.0},
    "old cpu_default.toml": {"mel": 0.05, "aux_stft": 1000.0, "aux_wave": 1000.0},
    "recipe weights unbalanced": {"mel": 0.2, "cstft": 0.4, "si_sdr": 0.4},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("data")
    ap.add_argument("--checkpoint")
    ap.add_argument("--batches", type=int, default=3)
    a = ap.parse_args()
    cfg = TrainConfig.from_toml(a.config)
    torch.manual_seed(0)
    nets = build_nets(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    step = 0
    if a.checkpoint:
        path = ckpt.resolve_checkpoint(a.checkpoint)
        state = ckpt.load_checkpoint(path)
        nets.model.load_state_dict(state["generator"])
        step = int(state["step"])
    split = build_split((a.data,), cfg.data.valid_fraction, None)
    ds = CropDataset(split.train, cfg.crop_samples, 2, seed=123)
    mel = MultiScaleMelLoss(cfg.loss.mel_scales, cfg.loss.mel_bins)
    fns = {
        "mel": mel,
        "aux_stft": stft_l1,
        "aux_wave": waveform_l1,
        "cstft": lambda x, y: compressed_stft_loss(x, y, cfg.loss.cstft_power),
        "si_sdr": lambda x, y: sdr_loss(x, y, scale_invariant=True),
    }
    sums = dict.fromkeys(fns, 0.0)
    for b in range(a.batches):
        x = torch.stack([ds[b * cfg.data.batch_size + i][0] for i in range(cfg.data.batch_size)])
        y = nets.model.decode_embeddings(nets.model.encode_embeddings(x))
        xr = x[..., : y.shape[-1]]
        for k, fn in fns.items():
            (g,) = torch.autograd.grad(fn(xr, y), [y], retain_graph=True)
            sums[k] += g.norm().item() / a.batches
    out = {"step": step, "grad_norm_wrt_output": sums, "shares": {}}
    for name, w in WEIGHTINGS.items():
        tot = sum(w[k] * sums[k] for k in w)
        out["shares"][name] = {k: round(w[k] * sums[k] / tot, 4) for k in w}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
