"""Validation that exposes the known failure modes, and the audio examples it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import audio_io
from ..config import SAMPLE_RATE
from ..metrics import comb_share, envelope_distance, harmonic_correlation, top_band_db
from ..model import SpectroStream
from .config import TrainConfig
from .losses import MultiScaleMelLoss, si_sdr
from .nets import Nets
from .rvq import QuantizerTrainer
from .step import autocast

VALID_KBPS = (4, 8, 16)


@torch.no_grad()
def validate(
    cfg: TrainConfig,
    nets: Nets,
    loader: DataLoader,
    mel: MultiScaleMelLoss,
    device: torch.device,
    step: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Scores that expose the known failure modes, and audio examples for the first items.

    - mel distance and SI-SDR unquantized ("bypass") and at 4/8/16 kbps once the codebooks are
      fitted (identical scores at every rate: codes ignored, or the autoencoder's ceiling
      reached below 4 kbps; scripts/rate_curve.py tells them apart);
    - harmonic correlation, band-envelope distance (dB; what ViSQOL hears first), and the
      fixed-comb share of each output beside the reference's
      (above it: the decoder adds a frame-periodic pattern, a comb of tones);
    - the output's level above 16.5 kHz against the input's (dB; far below 0: a low-passed
      decoder, as one trained on a quality-0 Vorbis pack);
    - top-4 PCA share of the latent frames (near 1: a collapsed latent);
    - relative output change when 5% Gaussian noise is added to the latent (near 0: the
      decoder ignores the latent);
    - distinct codes per level on the validation crops, and dead codes (EMA usage below the
      restart threshold) per level.
    """
    model = nets.model
    quantized = bool(nets.rvq.initialized)
    top = model.config.max_kbps  # a small model's top rate stands in for higher ones
    levels = {k: model.config.levels_for_kbps(min(k, top)) for k in VALID_KBPS} if quantized else {}
    sums: dict[str, float] = {}
    examples: dict[str, Any] = {}
    model.eval()
    try:
        count, latents, used = _score_loader(
            cfg, model, loader, levels, mel, device, sums, examples
        )
    finally:
        model.train()
    out = {k: v / max(1, count) for k, v in sums.items()}
    if latents:
        out["val/pca_top4_share"] = pca_share(torch.cat(latents), 4)
    if used:
        out.update(code_stats(torch.cat(used, 1), nets.rvq, cfg))
    return out, examples


def _score_loader(
    cfg: TrainConfig,
    model: SpectroStream,
    loader: DataLoader,
    levels: dict[int, int],
    mel: MultiScaleMelLoss,
    device: torch.device,
    sums: dict[str, float],
    examples: dict[str, Any],
) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
    """Score every validation batch into ``sums``/``examples`` (codes only where ``levels``,
    i.e. once the codebooks are fitted); returns (items, latent frames, codes per batch)."""
    count, latents, used = 0, [], []
    gen = torch.Generator(device=device).manual_seed(1234)
    for x in loader:
        x = x.to(device, non_blocking=True)
        with autocast(cfg, device):
            emb = model.encode_embeddings(x).float()
        latents.append(emb.transpose(1, 2).reshape(-1, emb.shape[1]).cpu())
        if levels:
            codes = model.quantizer.encode(emb)  # [B, Q, N]
            used.append(codes.transpose(0, 1).reshape(codes.shape[1], -1))
        decoded = _decode_variants(cfg, model, emb, levels, gen, device, sums)
        _score_batch(cfg, x, decoded, mel, count, sums, examples)
        count += x.shape[0]
    return count, latents, used


def _decode_variants(
    cfg: TrainConfig,
    model: SpectroStream,
    emb: torch.Tensor,
    levels: dict[int, int],
    gen: torch.Generator,
    device: torch.device,
    sums: dict[str, float],
) -> dict[str, torch.Tensor]:
    """Decoded audio unquantized ("bypass") and at each rate; adds the summed output change
    under 5% latent noise to ``sums``."""
    outs = {"bypass": emb}
    for kbps, n in levels.items():
        outs[f"{kbps}kbps"] = model.quantizer.quantize(emb, n)[1]
    noise = torch.randn(emb.shape, generator=gen, device=device) * emb.std()
    outs["noisy"] = emb + 0.05 * noise
    decoded = {}
    for name, e in outs.items():
        with autocast(cfg, device):
            decoded[name] = model.decode_embeddings(e).float()
    y0, yn = decoded["bypass"], decoded.pop("noisy")
    change = (yn - y0).square().sum((1, 2)) / y0.square().sum((1, 2)).clamp_min(1e-12)
    sums["val/noise_change"] = sums.get("val/noise_change", 0.0) + change.sqrt().sum().item()
    return decoded


def _score_batch(
    cfg: TrainConfig,
    x: torch.Tensor,
    decoded: dict[str, torch.Tensor],
    mel: MultiScaleMelLoss,
    first: int,
    sums: dict[str, float],
    examples: dict[str, Any],
) -> None:
    """Per-item mel distance, SI-SDR, harmonic correlation, band-envelope distance (dB) and
    fixed-comb share of every variant (and the reference's comb share) into ``sums``; the first
    ``val_audio_examples`` items' audio into ``examples``."""
    for name, y in decoded.items():
        ref = x[..., : y.shape[-1]]
        harmonic = harmonic_correlation(ref.float(), y.float()).mean(-1).tolist()  # per item
        envelope = envelope_distance(ref.float(), y.float()).mean(-1).tolist()
        # Items with nothing above 16.5 kHz count as right (0 dB).
        top = top_band_db(ref.float(), y.float()).nan_to_num(0.0).mean(-1).tolist()
        combs = {name: comb_share(y.float()).mean(-1).sum().item()}
        if name == "bypass":
            combs["reference"] = comb_share(ref.float()).mean(-1).sum().item()
        for key, value in combs.items():
            sums[f"val/comb_{key}"] = sums.get(f"val/comb_{key}", 0.0) + value
        for i in range(x.shape[0]):
            m = mel(ref[i : i + 1], y[i : i + 1]).item()
            s = si_sdr(ref[i : i + 1], y[i : i + 1]).mean().item()
            values = {
                "mel": m,
                "si_sdr": s,
                "harmonic": harmonic[i],
                "envelope": envelope[i],
                "top_band": top[i],
            }
            for key, value in values.items():
                sums[f"val/{key}_{name}"] = sums.get(f"val/{key}_{name}", 0.0) + value
            j = first + i
            if j < cfg.run.val_audio_examples:
                examples.setdefault(f"{j}/reference", ref[i].float().cpu())
                examples[f"{j}/{name}"] = y[i].float().cpu()


def pca_share(frames: torch.Tensor, k: int) -> float:
    """Share of the variance of frames [M, D] held by the top k principal components; NaN
    when it cannot be computed (non-finite frames, no variance, a solver that fails): a
    validation number must never stop a run (an eigensolver on x^T x once did, at step 14,600
    of a CPU run)."""
    x = frames.double()
    if not bool(torch.isfinite(x).all()):
        return float("nan")
    x = x - x.mean(0, keepdim=True)
    try:
        power = torch.linalg.svdvals(x).square()  # descending; no squared condition number
    except RuntimeError:  # torch.linalg.LinAlgError
        return float("nan")
    total = float(power.sum())
    return float(power[:k].sum()) / total if total > 0 else float("nan")


def code_stats(codes: torch.Tensor, rvq: QuantizerTrainer, cfg: TrainConfig) -> dict[str, float]:
    """codes [Q, M] on validation -> distinct codes per level; EMA-dead codes per level."""
    out: dict[str, float] = {}
    distinct = [int(torch.unique(c).numel()) for c in codes]
    uniform = rvq.cluster_size.mean(1, keepdim=True)  # EMA vectors per step / codebook size
    dead = (rvq.cluster_size < cfg.quantizer.dead_code_fraction * uniform).sum(1)
    for i, (d, z) in enumerate(zip(distinct, dead.cpu().tolist(), strict=True)):
        out[f"val_codes_distinct/level_{i:02d}"] = d
        out[f"val_codes_dead/level_{i:02d}"] = z
    out["val/codes_distinct_mean"] = float(np.mean(distinct))
    out["val/codes_dead_mean"] = float(dead.float().mean())
    return out


def format_validation(step: int, v: dict[str, float]) -> str:
    """One line for the log: SI-SDR / mel per rate, PCA share, noise change, codes."""
    parts = [f"validation step {step}:"]
    for name in ("bypass", *(f"{k}kbps" for k in VALID_KBPS)):
        if f"val/si_sdr_{name}" in v:
            parts.append(
                f"{name} SI-SDR {v[f'val/si_sdr_{name}']:.2f} dB mel {v[f'val/mel_{name}']:.2f} "
                f"harmonic {v.get(f'val/harmonic_{name}', float('nan')):.3f} "
                f"envelope {v.get(f'val/envelope_{name}', float('nan')):.2f} dB "
                f"comb {v.get(f'val/comb_{name}', float('nan')):.4f} "
                f"above 16.5 kHz {v.get(f'val/top_band_{name}', float('nan')):+.1f} dB;"
            )
    if "val/comb_reference" in v:
        parts.append(f"reference comb {v['val/comb_reference']:.4f};")
    parts.append(f"PCA top-4 {v.get('val/pca_top4_share', float('nan')):.3f};")
    parts.append(f"5% latent noise -> {100 * v.get('val/noise_change', float('nan')):.1f}% change;")
    if "val/codes_distinct_mean" in v:
        parts.append(
            f"codes distinct {v['val/codes_distinct_mean']:.0f} dead "
            f"{v['val/codes_dead_mean']:.0f} (mean per level)"
        )
    return " ".join(parts)


def spectrogram_image(audio: torch.Tensor, n_fft: int = 2048) -> np.ndarray:
    """audio [C, T] -> [1, F, frames] in [0, 1]: channel-mean log magnitude, -100..0 dB."""
    x = audio.float().mean(0)
    spec = torch.stft(x, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
    db = 20 * torch.log10(spec.abs() / (n_fft / 4) + 1e-6)
    img = ((db + 100) / 100).clamp(0, 1).flip(0)
    return img[None].numpy()


def write_examples(run_dir: Path, step: int, examples: dict[str, Any], writer: Any) -> None:
    out_dir = run_dir / "samples" / f"step_{step:08d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, audio in examples.items():
        a = audio.clamp(-1, 1)
        path = out_dir / f"{name.replace('/', '_')}.wav"
        audio_io.write_audio(path, a.numpy(), SAMPLE_RATE, subtype="PCM_16")
        if writer is not None:
            writer.add_audio(f"val_audio/{name}", a.mean(0), step, sample_rate=SAMPLE_RATE)
            writer.add_image(f"val_spec/{name}", spectrogram_image(a), step, dataformats="CHW")
