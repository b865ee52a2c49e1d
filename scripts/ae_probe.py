"""Short controlled autoencoder-stage runs (quantizer bypassed) for diagnosing the AE plateau.

    OMP_NUM_THREADS=1 python scripts/ae_probe.py CONFIG.toml DATA_DIR --steps 300 \
        --loss sisdr:1 [--balance] [--lr 5e-4] [--warmup 50] [--clip 1000] [--crop 0.64] \
        [--batch 4] [--no-calibrate] [--noise 0.05] [--json OUT.json]

Loss terms (name:weight, comma separated): ``sisdr`` (negative SI-SDR dB), ``sdr`` (negative
scale-dependent SDR dB), ``nmse`` (per-example normalised waveform MSE, |x - y|^2 / |x|^2,
linear), ``stft_nmse`` (per-example normalised squared error of the codec's complex STFT, no
compression), ``cstft`` (the recipe's magnitude-compressed complex STFT), ``mel``.

Training crops come from a fixed pool of 1.28 s crops of the training tracks (cached in
/tmp, built once with the run's data code), so runs differ only in what is being tested;
the held-out numbers are on the config's fixed validation crops (1.28 s, held-out tracks).
Every ``--eval-every`` steps it prints: mean train SI-SDR over the interval, held-out SI-SDR
and mel distance, the relative output change under 5% latent noise, the change under 5%
input noise, the top-4 PCA share, and the gradient norms reaching the encoder and decoder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from spectrostream.config import SAMPLE_RATE
from spectrostream.train.config import TrainConfig
from spectrostream.train.data import CropDataset, ValidDataset, build_split
from spectrostream.train.init import calibrate
from spectrostream.train.losses import (
    MultiScaleMelLoss,
    codec_stft,
    compressed_stft_loss,
    sdr_loss,
    si_sdr,
)
from spectrostream.train.nets import build_model, load_init_weights
from spectrostream.train.validation import pca_share

POOL_SECONDS = 1.28


def nmse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x - y).square().sum(-1) / (x.square().sum(-1) + 1e-8)).mean()


def neg_cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of mean-removed x and y per signal: scale-invariant like SI-SDR,
    but its gradient is bounded and always points towards +x."""
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1) + 1e-8)
    return (1 - cos).mean()


def stft_nmse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    b, c, _ = x.shape
    zx = torch.view_as_real(codec_stft(x)).reshape(b * c, -1)
    zy = torch.view_as_real(codec_stft(y)).reshape(b * c, -1)
    return ((zx - zy).square().sum(-1) / (zx.square().sum(-1) + 1e-8)).mean()


def load_pool(cfg: TrainConfig, data: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    cache = Path(f"/tmp/ae_probe_pool_{count}.pt")
    if cache.exists():
        d = torch.load(cache, weights_only=True)
        return d["train"], d["valid"]
    split = build_split((data,), cfg.data.valid_fraction, Path("/tmp/ae_probe_manifest.json"))
    n = round(POOL_SECONDS * SAMPLE_RATE)
    ds = CropDataset(split.train, n, 2, seed=777)
    train = torch.stack([ds[i][0] for i in range(count)])
    vds = ValidDataset(split.valid, n, 2, cfg.data.valid_crops, cfg.run.seed)
    valid = torch.stack([vds[i] for i in range(len(vds))])
    torch.save({"train": train, "valid": valid}, cache)
    return train, valid


def make_losses(spec: str, mel: MultiScaleMelLoss) -> dict:
    fns = {
        "sisdr": lambda x, y: sdr_loss(x, y, True),
        "sdr": lambda x, y: sdr_loss(x, y, False),
        "nmse": nmse,
        "cos": neg_cos,
        "stft_nmse": stft_nmse,
        "cstft": compressed_stft_loss,
        "mel": mel,
    }
    out = {}
    for term in spec.split(","):
        name, w = term.split(":")
        out[name] = (fns[name], float(w))
    return out


@torch.no_grad()
def evaluate(model, valid: torch.Tensor, mel: MultiScaleMelLoss) -> dict[str, float]:
    model.eval()
    g = torch.Generator().manual_seed(1)
    sd, ml, nz, nin, lat, gain = [], [], [], [], [], []
    for i in range(0, len(valid), 4):
        x = valid[i : i + 4]
        emb = model.encode_embeddings(x)
        y = model.decode_embeddings(emb)
        ref = x[..., : y.shape[-1]]
        sd.append(si_sdr(ref, y).mean(1))
        gain.append((y.square().mean((1, 2)) / ref.square().mean((1, 2)).clamp_min(1e-12)).sqrt())
        ml.append(torch.stack([mel(ref[j : j + 1], y[j : j + 1]) for j in range(len(x))]))
        yn = model.decode_embeddings(emb + 0.05 * emb.std() * torch.randn(emb.shape, generator=g))
        nz.append(((yn - y).square().sum((1, 2)) / y.square().sum((1, 2)).clamp_min(1e-12)).sqrt())
        xn = x + 0.05 * x.std() * torch.randn(x.shape, generator=g)
        yi = model.decode_embeddings(model.encode_embeddings(xn))
        nin.append(((yi - y).square().sum((1, 2)) / y.square().sum((1, 2)).clamp_min(1e-12)).sqrt())
        lat.append(emb.transpose(1, 2).reshape(-1, emb.shape[1]))
    model.train()
    return {
        "val_si_sdr": float(torch.cat(sd).mean()),
        "val_mel": float(torch.cat(ml).mean()),
        "latent_noise_change": float(torch.cat(nz).mean()),
        "input_noise_change": float(torch.cat(nin).mean()),
        "pca_top4": pca_share(torch.cat(lat), 4),
        "out_rms_ratio": float(torch.cat(gain).mean()),
    }


def grad_norm(params) -> float:
    gs = [p.grad.norm() for p in params if p.grad is not None]
    return float(torch.stack(gs).norm()) if gs else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--loss", default="sisdr:1")
    ap.add_argument("--balance", action="store_true")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--betas", default="0.9,0.99")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--clip", type=float, default=1000.0)
    ap.add_argument("--crop", type=float, default=0.64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--init", help="start from an exported model (as train --init)")
    ap.add_argument("--pool", type=int, default=512)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()

    cfg = TrainConfig.from_toml(a.config)
    train, valid = load_pool(cfg, a.data, a.pool)
    torch.manual_seed(a.seed)
    model = build_model(cfg.model_config())
    if a.init:
        load_init_weights(model, a.init)
    elif not a.no_calibrate:
        calibrate(model)
    mel = MultiScaleMelLoss(cfg.loss.mel_scales, cfg.loss.mel_bins)
    losses = make_losses(a.loss, mel)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=tuple(map(float, a.betas.split(","))))
    crop = round(a.crop * SAMPLE_RATE)
    rng = np.random.default_rng(a.seed)
    rows, train_sd, gnorms = [], [], []
    row = {"step": 0, **evaluate(model, valid, mel)}
    print(json.dumps(row), flush=True)
    rows.append(row)
    t0 = time.time()
    for step in range(a.steps):
        idx = rng.integers(0, len(train), a.batch)
        offs = rng.integers(0, train.shape[-1] - crop + 1, a.batch)
        x = torch.stack([train[i, :, o : o + crop] for i, o in zip(idx, offs, strict=True)])
        lr = a.lr * min(1.0, (step + 1) / a.warmup) if a.warmup > 0 else a.lr
        for gr in opt.param_groups:
            gr["lr"] = lr
        emb = model.encode_embeddings(x)
        if a.noise > 0:
            emb = emb + a.noise * emb.detach().std() * torch.randn_like(emb)
        y = model.decode_embeddings(emb)
        ref = x[..., : y.shape[-1]]
        grads = []
        for fn, w in losses.values():
            (gy,) = torch.autograd.grad(fn(ref, y), [y], retain_graph=True)
            grads.append(w * gy / (gy.norm() + 1e-12) if a.balance else w * gy)
        opt.zero_grad(set_to_none=True)
        y.backward(sum(grads))
        genc = grad_norm(model.encoder.parameters())
        gdec = grad_norm(model.decoder.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        train_sd.append(float(si_sdr(ref, y.detach()).mean()))
        gnorms.append((genc, gdec))
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            g = np.array(gnorms)
            row = {
                "step": step + 1,
                "train_si_sdr": float(np.mean(train_sd)),
                "grad_enc": float(g[:, 0].mean()),
                "grad_dec": float(g[:, 1].mean()),
                "s_per_step": (time.time() - t0) / (step + 1),
                **evaluate(model, valid, mel),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            train_sd, gnorms = [], []
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
