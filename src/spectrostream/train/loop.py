"""The training loop: one discriminator step, then one generator step, per batch (DAC's shape).

    D step:  D(x), D(G(x).detach()) -> hinge loss -> backward -> clip -> Adam step
    G step:  losses {"mel/loss", "adv/gen", "adv/feat", "vq/commit", "aux/stft", "aux/wave"}
             weighted by one dict of lambdas -> backward -> clip -> Adam step

The generator forward is ``GeneratorStep``: encode_embeddings -> QuantizerTrainer (EMA update,
dropout, bypass, STE) -> decode_embeddings; it compares with x[..., :(N - 1) * 1920].
Under DDP both networks are wrapped (codebooks are synchronised by the quantizer trainer, so
buffers are not broadcast); the G step calls the unwrapped discriminator with its parameters
frozen, so no discriminator gradient is computed or all-reduced there.

No host synchronisation in the hot path: losses, norms and the non-finite flag accumulate on
the device and are read every ``log_every`` steps and before each checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from ..config import SAMPLE_RATE, SAMPLES_PER_CODE, ModelConfig
from ..model import SpectroStream
from . import checkpoint as ckpt
from .balance import output_gradient
from .config import TrainConfig
from .data import CropDataset, StepBatchSampler, ValidDataset, build_split, worker_seeder
from .discriminators import MultiScaleSTFTDiscriminator
from .init import calibrate
from .losses import (
    MultiScaleMelLoss,
    compressed_stft_loss,
    discriminator_hinge,
    feature_matching,
    generator_adversarial,
    sdr_loss,
    si_sdr,
    stft_l1,
    waveform_l1,
)
from .rvq import QuantizerTrainer, RVQOutput, codebook_stats
from .stages import fit_codebooks, needs_fit, stage

log = logging.getLogger(__name__)

VALID_KBPS = (4, 8, 16)


class TrainingError(RuntimeError):
    """The run cannot start or continue (bad resume, config mismatch, ...)."""


class DivergedError(TrainingError):
    """A loss became NaN or Inf; the run stopped before writing another checkpoint."""


# ---- processes and devices ------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> DistInfo:
    """Single process, or torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise TrainingError("run.device = 'cuda' but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", device_id=device if use_cuda else None
        )
    return DistInfo(rank, world, local_rank, device)


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, DDP) else m


# ---- networks -------------------------------------------------------------------------------


class GeneratorStep(nn.Module):
    """x [B, C, T] -> (y [B, C, (N - 1) * 1920], RVQOutput or None); the unit DDP wraps.

    ``quantize=False`` is the autoencoder stage: the decoder gets the embedding plus Gaussian
    noise of ``noise`` times its (detached) standard deviation.
    """

    def __init__(self, model: SpectroStream, rvq: QuantizerTrainer) -> None:
        super().__init__()
        self.model, self.rvq = model, rvq

    def forward(
        self, x: torch.Tensor, quantize: bool = True, noise: float = 0.0
    ) -> tuple[torch.Tensor, RVQOutput | None]:
        emb = self.model.encode_embeddings(x)
        if not quantize:
            if noise > 0:
                emb = emb + noise * emb.detach().float().std() * torch.randn_like(emb)
            return self.model.decode_embeddings(emb), None
        q = self.rvq(emb, self.model.quantizer.codebooks)
        return self.model.decode_embeddings(q.quantized), q


def build_model(model_cfg: ModelConfig) -> SpectroStream:
    if not model_cfg.weight_norm:
        model_cfg = model_cfg.with_(weight_norm=True)
    return SpectroStream(model_cfg)


def load_init_weights(model: SpectroStream, path: str) -> None:
    """Initialize a weight-normed training model from an exported (plain-conv) model.

    The exported state dict must match a plain model of the same config exactly (strict);
    each weight-normed conv then gets its weight assigned, which re-derives (g, v).
    """
    from torch.nn.utils import parametrize

    from ..codec import load

    src = load(path).model
    plain_cfg = model.config.with_(weight_norm=False)
    if src.config.with_(weight_norm=False) != plain_cfg:
        raise TrainingError(
            f"--init model config does not match the training config:\n  init:  "
            f"{src.config.to_json()}\n  train: {plain_cfg.to_json()}"
        )
    plain = SpectroStream(plain_cfg)
    plain.load_state_dict(src.state_dict(), strict=True)
    plain_modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, m in model.named_modules():
            if "parametrizations" in name.split("."):
                continue  # weight-norm internals (g, v): set through ``m.weight =`` below
            src_m = plain_modules[name]
            for pname, p in m.named_parameters(recurse=False):
                p.copy_(getattr(src_m, pname))
            for bname, b in m.named_buffers(recurse=False):
                b.copy_(getattr(src_m, bname))
            if parametrize.is_parametrized(m, "weight"):
                m.weight = src_m.weight.detach().clone()
    # Check numerically that the re-derived (g, v) give back the source weights.
    for name, m in model.named_modules():
        wn = parametrize.is_parametrized(m, "weight")
        if wn and not torch.allclose(m.weight, plain_modules[name].weight, atol=1e-6, rtol=1e-5):
            raise TrainingError(f"--init: weight norm re-application failed at {name}")


@dataclass
class Nets:
    model: SpectroStream
    rvq: QuantizerTrainer
    disc: MultiScaleSTFTDiscriminator
    gen_step: nn.Module  # GeneratorStep, DDP-wrapped when distributed
    disc_run: nn.Module  # discriminator, DDP-wrapped when distributed
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def build_nets(cfg: TrainConfig, dinfo: DistInfo, init: str | None = None) -> Nets:
    model_cfg = cfg.model_config()
    model = build_model(model_cfg)
    if init is not None:
        load_init_weights(model, init)
    elif cfg.optim.calibrate_init:
        calibrate(model)
    rvq = QuantizerTrainer(
        model_cfg.num_quantizers,
        model_cfg.codebook_size,
        model_cfg.embedding_dim,
        cfg.quantizer,
        init_from_codebooks=init is not None,
    )
    disc = MultiScaleSTFTDiscriminator(
        cfg.discriminator.windows, model_cfg.audio_channels, cfg.discriminator.base_width
    )
    dev = dinfo.device
    model.to(dev)
    rvq.to(dev)
    disc.to(dev)
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
        disc.to(memory_format=torch.channels_last)
    if cfg.run.compile:
        # Six discriminators share one code object and run with and without parameter grads:
        # allow that many specializations instead of falling back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        model.encoder.compile()
        model.decoder.compile()
        for d in disc.discriminators:
            d.stack.compile(dynamic=False)
    gen_step: nn.Module = GeneratorStep(model, rvq)
    disc_run: nn.Module = disc
    if dinfo.world > 1:
        ids = [dinfo.local_rank] if dev.type == "cuda" else None
        gen_step = DDP(gen_step, device_ids=ids, broadcast_buffers=False)
        disc_run = DDP(disc, device_ids=ids, broadcast_buffers=False)
    o = cfg.optim
    opt_g = torch.optim.Adam(model.parameters(), lr=o.lr, betas=o.betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=o.lr, betas=o.betas)
    return Nets(model, rvq, disc, gen_step, disc_run, opt_g, opt_d)


# ---- one step -------------------------------------------------------------------------------


def _autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and cfg.run.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _split(ts: list[torch.Tensor], b: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [t[:b] for t in ts], [t[b:] for t in ts]


class StepRunner:
    """Runs training steps and keeps device-side running sums for logging."""

    def __init__(self, cfg: TrainConfig, nets: Nets, device: torch.device) -> None:
        self.cfg, self.nets, self.device = cfg, nets, device
        self.lambdas = cfg.loss.lambdas()
        self.mel = MultiScaleMelLoss(cfg.loss.mel_scales, cfg.loss.mel_bins).to(device)
        self.reset_stats()
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.last_counts: torch.Tensor | None = None

    def reset_stats(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def _acc(self, key: str, value: torch.Tensor) -> None:
        v = value.detach().float()
        self.sums[key] = self.sums[key] + v if key in self.sums else v

    def set_lr(self, step: int) -> None:
        o = self.cfg.optim
        scale = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
        betas = o.gan_betas if self._adversarial(step) else o.betas
        for opt in (self.nets.opt_g, self.nets.opt_d):
            for g in opt.param_groups:
                g["lr"] = o.lr * scale
                g["betas"] = betas

    def _adversarial(self, step: int) -> bool:
        adv_on = self.lambdas["adv/gen"] > 0 or self.lambdas["adv/feat"] > 0
        return adv_on and step >= self.cfg.loss.adv_start_step

    def step(self, x: torch.Tensor, step: int) -> None:
        cfg, nets = self.cfg, self.nets
        self.set_lr(step)
        adversarial = self._adversarial(step)  # no discriminator work at all when off
        quantize = stage(cfg, step) == "rvq"
        with _autocast(cfg, self.device):
            y, q = nets.gen_step(x, quantize, cfg.quantizer.ae_noise)
        x_ref = x[..., : y.shape[-1]]
        if adversarial:
            self._disc_step(x_ref, y)
        losses = self._output_losses(x_ref, y, adversarial)
        lam = self.lambdas
        grad_y, shares = output_gradient(losses, y, lam, cfg.loss.balance)
        nets.opt_g.zero_grad(set_to_none=True)
        if q is not None:
            torch.autograd.backward([y, lam["vq/commit"] * q.commit], [grad_y, None])
        else:
            y.backward(grad_y)
        gn_g = torch.nn.utils.clip_grad_norm_(nets.model.parameters(), self.cfg.optim.grad_clip)
        nets.opt_g.step()

        total = sum(lam[k] * v.detach() for k, v in losses.items())
        if q is not None:
            losses["vq/commit"] = q.commit
            total = total + lam["vq/commit"] * q.commit.detach()
        self.nonfinite |= ~torch.isfinite(total)
        for k, v in losses.items():
            self._acc(k, v)
        for k, v in shares.items():
            self._acc(f"share/{k}", v)
        self._acc("loss/generator", total)
        self._acc("grad/gen_norm", gn_g)
        with torch.no_grad():
            self._acc("metrics/si_sdr", si_sdr(x_ref, y.detach()).mean())
            if q is not None:
                self._acc("vq/levels_mean", q.n_levels.float().mean())
                self._acc("vq/bypass_share", q.bypass.float().mean())
                self.last_counts = q.counts
        self.n += 1

    def _disc_step(self, x_ref: torch.Tensor, y: torch.Tensor) -> None:
        nets, b = self.nets, x_ref.shape[0]
        with _autocast(self.cfg, self.device):
            logits, _ = nets.disc_run(torch.cat([x_ref, y.detach()]))
        real, fake = _split(logits, b)
        d_loss = discriminator_hinge(real, fake)
        nets.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        gn_d = torch.nn.utils.clip_grad_norm_(nets.disc.parameters(), self.cfg.optim.grad_clip)
        nets.opt_d.step()
        self._acc("d/loss", d_loss)
        self._acc("grad/disc_norm", gn_d)
        self.nonfinite |= ~torch.isfinite(d_loss)

    def _output_losses(
        self, x_ref: torch.Tensor, y: torch.Tensor, adversarial: bool
    ) -> dict[str, torch.Tensor]:
        """Every enabled loss that reads the decoded audio y."""
        lam, lc = self.lambdas, self.cfg.loss
        losses: dict[str, torch.Tensor] = {}
        if lam["mel/loss"] > 0:
            losses["mel/loss"] = self.mel(x_ref, y)
        if adversarial:
            b = x_ref.shape[0]
            self.nets.disc.requires_grad_(False)
            try:
                with _autocast(self.cfg, self.device):
                    logits, feats = self.nets.disc(torch.cat([x_ref, y]))
            finally:
                self.nets.disc.requires_grad_(True)
            _, fake_logits = _split(logits, b)
            real_feats, fake_feats = zip(*(_split(f, b) for f in feats), strict=True)
            losses["adv/gen"] = generator_adversarial(fake_logits)
            losses["adv/feat"] = feature_matching(real_feats, fake_feats)
        if lam["aux/stft"] > 0:
            losses["aux/stft"] = stft_l1(x_ref, y)
        if lam["aux/wave"] > 0:
            losses["aux/wave"] = waveform_l1(x_ref, y)
        if lam["wave/sdr"] > 0:
            losses["wave/sdr"] = sdr_loss(x_ref, y, lc.sdr_scale_invariant)
        if lam["stft/compressed"] > 0:
            losses["stft/compressed"] = compressed_stft_loss(x_ref, y, lc.cstft_power)
        return losses

    def read_stats(self) -> dict[str, float]:
        """Averages since the last read (one host sync), plus codebook stats of the last step."""
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).cpu().tolist() if keys else []
        out = {k: v / max(1, self.n) for k, v in zip(keys, values, strict=True)}
        if self.last_counts is not None:
            usage, ppl = codebook_stats(self.last_counts)
            usage_l, ppl_l = usage.cpu().tolist(), ppl.cpu().tolist()
            for i, (u, p) in enumerate(zip(usage_l, ppl_l, strict=True)):
                out[f"vq_usage/level_{i:02d}"] = u
                out[f"vq_perplexity/level_{i:02d}"] = p
            out["vq/usage_mean"] = float(np.mean(usage_l))
            out["vq/perplexity_mean"] = float(np.mean(ppl_l))
        self.reset_stats()
        return out

    def check_finite(self, step: int) -> None:
        if bool(self.nonfinite):
            raise DivergedError(
                f"non-finite loss (NaN/Inf) detected by step {step}; stopping. The last "
                "checkpoint was written before this and is intact."
            )


# ---- validation -----------------------------------------------------------------------------


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
      fitted (identical scores at every rate mean the codes are ignored);
    - top-4 PCA share of the latent frames (near 1: a collapsed latent);
    - relative output change when 5% Gaussian noise is added to the latent (near 0: the
      decoder ignores the latent);
    - distinct codes per level on the validation crops, and dead codes (EMA usage below the
      restart threshold) per level.
    """
    model = nets.model
    model.eval()
    quantized = bool(nets.rvq.initialized)
    levels = {k: model.config.levels_for_kbps(k) for k in VALID_KBPS} if quantized else {}
    sums: dict[str, float] = {}
    count = 0
    examples: dict[str, Any] = {}
    latents, used = [], []
    gen = torch.Generator(device=device).manual_seed(1234)
    try:
        for x in loader:
            x = x.to(device, non_blocking=True)
            with _autocast(cfg, device):
                emb = model.encode_embeddings(x).float()
            latents.append(emb.transpose(1, 2).reshape(-1, emb.shape[1]).cpu())
            outs = {"bypass": emb}
            for kbps, n in levels.items():
                outs[f"{kbps}kbps"] = model.quantizer.quantize(emb, n)[1]
            if quantized:
                codes = model.quantizer.encode(emb)  # [B, Q, N]
                used.append(codes.transpose(0, 1).reshape(codes.shape[1], -1))
            noise = torch.randn(emb.shape, generator=gen, device=device) * emb.std()
            outs["noisy"] = emb + 0.05 * noise
            decoded = {}
            for name, e in outs.items():
                with _autocast(cfg, device):
                    decoded[name] = model.decode_embeddings(e).float()
            y0 = decoded.pop("bypass")
            yn = decoded.pop("noisy")
            change = (yn - y0).square().sum((1, 2)) / y0.square().sum((1, 2)).clamp_min(1e-12)
            sums["val/noise_change"] = (
                sums.get("val/noise_change", 0.0) + change.sqrt().sum().item()
            )
            decoded = {"bypass": y0, **decoded}
            for name, y in decoded.items():
                ref = x[..., : y.shape[-1]]
                for i in range(x.shape[0]):
                    m = mel(ref[i : i + 1], y[i : i + 1]).item()
                    s = si_sdr(ref[i : i + 1], y[i : i + 1]).mean().item()
                    sums[f"val/mel_{name}"] = sums.get(f"val/mel_{name}", 0.0) + m
                    sums[f"val/si_sdr_{name}"] = sums.get(f"val/si_sdr_{name}", 0.0) + s
                    j = count + i
                    if j < cfg.run.val_audio_examples:
                        examples.setdefault(f"{j}/reference", ref[i].float().cpu())
                        examples[f"{j}/{name}"] = y[i].float().cpu()
            count += x.shape[0]
    finally:
        model.train()
    out = {k: v / max(1, count) for k, v in sums.items()}
    if latents:
        out["val/pca_top4_share"] = pca_share(torch.cat(latents), 4)
    if used:
        out.update(code_stats(torch.cat(used, 1), nets.rvq, cfg))
    return out, examples


def pca_share(frames: torch.Tensor, k: int) -> float:
    """Share of the variance of frames [M, D] held by the top k principal components."""
    x = frames.double() - frames.double().mean(0, keepdim=True)
    ev = torch.linalg.eigvalsh(x.T @ x)
    return float(ev[-k:].sum() / ev.sum().clamp_min(1e-30))


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
                f"{name} SI-SDR {v[f'val/si_sdr_{name}']:.2f} dB mel {v[f'val/mel_{name}']:.2f};"
            )
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


# ---- the run --------------------------------------------------------------------------------


def _loader(
    cfg: TrainConfig, dataset: CropDataset, per_rank_batch: int, start: int, dinfo: DistInfo
) -> DataLoader:
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(per_rank_batch, start, cfg.optim.max_steps),
        num_workers=workers,
        pin_memory=dinfo.device.type == "cuda",
        worker_init_fn=worker_seeder(cfg.run.seed, dinfo.rank, start),
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        # Our own generator: creating the iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(cfg.run.seed),
    )


def _state(cfg: TrainConfig, nets: Nets, step: int, rngs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "step": step,
        "train_config": cfg.to_json(),
        "model_config": nets.model.config.to_json(),
        "generator": nets.model.state_dict(),
        "discriminator": nets.disc.state_dict(),
        "quantizer_ema": nets.rvq.state_dict(),
        "opt_g": nets.opt_g.state_dict(),
        "opt_d": nets.opt_d.state_dict(),
        "rng": rngs,
        "data": {"step": step},
    }


def _gather_rng(dinfo: DistInfo) -> list[dict[str, Any]]:
    mine = ckpt.rng_state()
    if dinfo.world == 1:
        return [mine]
    out: list[Any] = [None] * dinfo.world
    dist.all_gather_object(out, mine)
    return [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in r.items()} for r in out]


def _restore(state: dict[str, Any], cfg: TrainConfig, nets: Nets, dinfo: DistInfo) -> int:
    saved_model = ModelConfig.from_json(state["model_config"])
    if saved_model != nets.model.config:
        raise TrainingError(
            "the checkpoint's model config differs from this config's model:\n"
            f"  checkpoint: {saved_model.to_json()}\n"
            f"  config:     {nets.model.config.to_json()}"
        )
    saved_cfg = TrainConfig.from_json(state["train_config"])
    if saved_cfg != cfg and dinfo.main:
        diff = _diff(saved_cfg.to_dict(), cfg.to_dict())
        log.warning("resuming with a changed training config: %s", "; ".join(diff))
    nets.model.load_state_dict(state["generator"], strict=True)
    nets.disc.load_state_dict(state["discriminator"], strict=True)
    nets.rvq.load_state_dict(state["quantizer_ema"], strict=True)
    nets.opt_g.load_state_dict(state["opt_g"])
    nets.opt_d.load_state_dict(state["opt_d"])
    rngs = state["rng"]
    if len(rngs) == dinfo.world:
        ckpt.set_rng_state(rngs[dinfo.rank])
    else:
        log.warning(
            "checkpoint has RNG states for %d processes, this run has %d: reseeding "
            "from (seed, rank, step); the random stream will differ from an "
            "uninterrupted run",
            len(rngs),
            dinfo.world,
        )
        _seed_all(cfg.run.seed, dinfo.rank, int(state["step"]))
    return int(state["data"]["step"])


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def _seed_all(seed: int, rank: int, step: int) -> None:
    ss = np.random.SeedSequence([seed, rank, step])
    s = int(ss.generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    import random

    random.seed(s)


def _write_examples(run_dir: Path, step: int, examples: dict[str, Any], writer: Any) -> None:
    out_dir = run_dir / "samples" / f"step_{step:08d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, audio in examples.items():
        a = audio.clamp(-1, 1)
        sf.write(
            out_dir / f"{name.replace('/', '_')}.wav", a.T.numpy(), SAMPLE_RATE, subtype="PCM_16"
        )
        if writer is not None:
            writer.add_audio(f"val_audio/{name}", a.mean(0), step, sample_rate=SAMPLE_RATE)
            writer.add_image(f"val_spec/{name}", spectrogram_image(a), step, dataformats="CHW")


@dataclass(frozen=True)
class TrainResult:
    step: int
    run_dir: Path
    last_checkpoint: Path | None
    model: SpectroStream  # the trained generator (weight norm still applied)
    quantizer_ema: QuantizerTrainer


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    init: str | None = None,
    max_minutes: float | None = None,
) -> TrainResult:
    """Run (or continue) training until ``cfg.optim.max_steps`` or, with ``max_minutes``, until
    that much wall time has passed (then a checkpoint is written and the run stops early).
    Raises TrainingError/DataError."""
    run_dir = Path(run_dir)
    dinfo = setup_distributed(cfg.run.device)
    if dinfo.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shapes: pick the fastest kernels
    try:
        deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
        return _train(cfg, run_dir, resume, init, dinfo, deadline)
    finally:
        if dinfo.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    init: str | None,
    dinfo: DistInfo,
    deadline: float | None = None,
) -> TrainResult:
    if resume and init is not None:
        raise TrainingError("--resume and --init are exclusive")
    if cfg.data.batch_size % dinfo.world:
        raise TrainingError(
            f"batch_size {cfg.data.batch_size} is not divisible by the {dinfo.world} processes"
        )
    per_rank = cfg.data.batch_size // dinfo.world
    device = dinfo.device
    if dinfo.main:
        run_dir.mkdir(parents=True, exist_ok=True)

    resume_state = None
    if resume:
        path = ckpt.latest_checkpoint(run_dir)
        if path is None:
            raise TrainingError(f"--resume: no checkpoint in {ckpt.checkpoint_dir(run_dir)}")
        resume_state = ckpt.load_checkpoint(path, map_location="cpu")
        if dinfo.main:
            print(f"resuming from {path} (step {resume_state['step']})", file=sys.stderr)
    elif ckpt.latest_checkpoint(run_dir) is not None:
        raise TrainingError(
            f"{run_dir} already holds checkpoints; pass --resume to continue "
            "or choose another --out"
        )

    torch.manual_seed(cfg.run.seed + dinfo.rank)
    np.random.seed((cfg.run.seed + dinfo.rank) % 2**32)

    # Data (rank 0 builds the manifest cache first; the others then read it).
    cache = Path(cfg.data.manifest_cache) if cfg.data.manifest_cache else run_dir / "manifest.json"
    if dinfo.main:
        split = build_split(cfg.data.train, cfg.data.valid_fraction, cache)
    if dinfo.world > 1:
        dist.barrier()
    if not dinfo.main:
        split = build_split(cfg.data.train, cfg.data.valid_fraction, cache)
    channels = cfg.model_config().audio_channels
    train_ds = CropDataset(
        split.train,
        cfg.crop_samples,
        channels,
        cfg.run.seed,
        dinfo.rank,
        cfg.data.silence_db,
        cfg.data.silence_retries,
        gain_db=cfg.data.augment_gain_db,
        flips=cfg.data.augment_flips,
    )
    valid_ds = ValidDataset(
        split.valid,
        cfg.crop_samples,
        channels,
        cfg.data.valid_crops,
        cfg.run.seed,
        cfg.data.silence_db,
    )

    nets = build_nets(cfg, dinfo, init)
    start = 0
    if resume_state is not None:
        start = _restore(resume_state, cfg, nets, dinfo)
        del resume_state
    runner = StepRunner(cfg, nets, device)

    writer = None
    if dinfo.main:
        (run_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
        total_files = len(split.train) + len(split.valid) + len(split.failures)
        writer.add_scalar("data/unreadable_files", len(split.failures), start)
        print(
            f"data: {len(split.train)} train / {len(split.valid)} valid tracks "
            f"({sum(t.seconds for t in split.train) / 3600:.2f} h train), "
            f"{len(split.failures)} of {total_files} files unreadable; "
            f"{dinfo.world} process(es), batch {cfg.data.batch_size}, device {device}",
            file=sys.stderr,
        )

    loader = _loader(cfg, train_ds, per_rank, start, dinfo)
    valid_loader = DataLoader(
        valid_ds, batch_size=cfg.data.valid_batch_size, num_workers=min(2, cfg.data.num_workers)
    )
    audio_per_step = cfg.data.batch_size * cfg.crop_samples / SAMPLE_RATE
    read_failures = quiet_crops = 0
    last_ckpt = ckpt.latest_checkpoint(run_dir) if dinfo.main else None
    bar = _progress(cfg, dinfo, start)
    t_last, steps_last = time.perf_counter(), 0
    step = start
    try:
        for x, fails, quiet in loader:
            read_failures += int(fails.sum())
            quiet_crops += int(quiet.sum())
            x = x.to(device, non_blocking=True)
            if needs_fit(cfg, nets.rvq, step):
                frames = -(-cfg.crop_samples // SAMPLES_PER_CODE)
                fit_codebooks(cfg, nets.model, nets.rvq, train_ds, device, per_rank * frames)
            runner.step(x, step)
            index, step = step, step + 1
            steps_last += 1
            if bar is not None:
                bar.update(1)
            if index % cfg.run.log_every == 0 or step == cfg.optim.max_steps:
                stats = runner.read_stats()
                runner.check_finite(step)
                now = time.perf_counter()
                rate = steps_last / max(now - t_last, 1e-9)
                t_last, steps_last = now, 0
                stats.update(
                    {
                        "perf/steps_per_s": rate,
                        "perf/audio_s_per_s": rate * audio_per_step,
                        "data/read_failures": read_failures,
                        "data/quiet_crops": quiet_crops,
                        "lr": nets.opt_g.param_groups[0]["lr"],
                    }
                )
                if writer is not None:
                    for k, v in stats.items():
                        writer.add_scalar(k, v, index)
                if bar is not None:
                    bar.set_postfix(
                        mel=f"{stats.get('mel/loss', float('nan')):.2f}",
                        sisdr=f"{stats['metrics/si_sdr']:.1f}",
                        aps=f"{rate * audio_per_step:.0f}",
                    )
            if step % cfg.run.val_every == 0 and len(valid_ds):
                if dinfo.main:
                    vstats, examples = validate(cfg, nets, valid_loader, runner.mel, device, step)
                    print(format_validation(step, vstats), file=sys.stderr, flush=True)
                    for k, v in vstats.items():
                        writer.add_scalar(k, v, step)
                    _write_examples(run_dir, step, examples, writer)
                if dinfo.world > 1:
                    dist.barrier()
            out_of_time = _out_of_time(deadline, dinfo)
            if step % cfg.run.ckpt_every == 0 or step == cfg.optim.max_steps or out_of_time:
                runner.check_finite(step)
                rngs = _gather_rng(dinfo)
                if dinfo.main:
                    last_ckpt = ckpt.save_checkpoint(
                        run_dir, _state(cfg, nets, step, rngs), cfg.run.keep_checkpoints
                    )
                if dinfo.world > 1:
                    dist.barrier()
            if out_of_time:
                if dinfo.main:
                    print(f"time limit reached at step {step}", file=sys.stderr)
                break
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return TrainResult(step, run_dir, last_ckpt, nets.model, nets.rvq)


def _out_of_time(deadline: float | None, dinfo: DistInfo) -> bool:
    """Rank 0's clock decides, so that every process stops at the same step."""
    if deadline is None:
        return False
    flag = torch.tensor([time.monotonic() > deadline], dtype=torch.int32)
    if dinfo.world > 1:
        flag = flag.to(dinfo.device)
        dist.broadcast(flag, 0)
    return bool(flag.item())


def _progress(cfg: TrainConfig, dinfo: DistInfo, start: int):
    if not (dinfo.main and cfg.run.progress):
        return None
    from tqdm import tqdm

    return tqdm(
        total=cfg.optim.max_steps, initial=start, unit="step", dynamic_ncols=True, smoothing=0.05
    )
