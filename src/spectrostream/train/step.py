"""One training step (D then G) and the device-side running sums read at log time.

    D step:  D(x), D(G(x).detach()) -> hinge loss -> backward -> clip -> Adam step
    G step:  every loss that reads the decoded audio y -> gradients w.r.t. y (train/balance.py:
             plain weights or gradient shares) -> one backward through the network together
             with the commitment loss -> clip -> Adam step

An update whose gradient norm is NaN or Inf is dropped (its gradients zeroed) and counted in
``train/skipped_updates``; a non-finite loss still stops the run. No host synchronisation in
the hot path: losses, norms, the skip count and the non-finite flag accumulate on the device
and are read every ``log_every`` steps and before each checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import DivergedError
from . import checkpoint as ckpt
from .balance import output_gradient
from .config import LossConfig, OptimConfig, TrainConfig
from .losses import (
    LogMagnitudeLoss,
    MultiScaleMelLoss,
    band_cosine_loss,
    compressed_stft_loss,
    cosine_loss,
    discriminator_hinge,
    envelope_loss,
    feature_matching,
    generator_adversarial,
    phase_advance_loss,
    sdr_loss,
    si_sdr,
    stationary_loss,
    stft_l1,
    waveform_l1,
)
from .nets import Nets
from .rvq import codebook_stats
from .stages import stage

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and cfg.run.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _plain_losses(lc: LossConfig, logmag: LogMagnitudeLoss) -> dict[str, LossFn]:
    """Loss key -> f(reference, output) for the output losses that need nothing else."""
    return {
        "aux/stft": stft_l1,
        "aux/wave": waveform_l1,
        "wave/sdr": functools.partial(sdr_loss, scale_invariant=lc.sdr_scale_invariant),
        "wave/cos": cosine_loss,
        "stft/compressed": functools.partial(compressed_stft_loss, power=lc.cstft_power),
        "stft/bandcos": band_cosine_loss,
        "stft/stationary": stationary_loss,
        "stft/envelope": functools.partial(envelope_loss, per_octave=lc.envelope_widths()),
        "stft/logmag": logmag,
        "stft/ifreq": functools.partial(phase_advance_loss, axis="time"),
        "stft/gdelay": functools.partial(phase_advance_loss, axis="freq"),
    }


def _split(ts: list[torch.Tensor], b: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [t[:b] for t in ts], [t[b:] for t in ts]


class StepRunner:
    """Runs training steps and keeps device-side running sums for logging."""

    def __init__(self, cfg: TrainConfig, nets: Nets, device: torch.device) -> None:
        self.cfg, self.nets, self.device = cfg, nets, device
        self.lambdas = cfg.loss.lambdas()
        self.mel = MultiScaleMelLoss(cfg.loss.mel_scales, cfg.loss.mel_bins).to(device)
        self.logmag = LogMagnitudeLoss(cfg.loss.logmag_scales).to(device)
        self.plain_losses = _plain_losses(cfg.loss, self.logmag)
        self.reset_stats()
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.skipped = torch.zeros((), device=device)  # updates dropped for a NaN/Inf gradient
        self.last_counts: torch.Tensor | None = None

    def reset_stats(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def _acc(self, key: str, value: torch.Tensor) -> None:
        v = value.detach().float()
        self.sums[key] = self.sums[key] + v if key in self.sums else v

    def set_lr(self, step: int) -> None:
        o = self.cfg.optim
        scale = lr_scale(o, step)
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
        with autocast(cfg, self.device):
            y, q = nets.gen_step(x, quantize, cfg.quantizer.ae_noise)
        x_ref = x[..., : y.shape[-1]]
        if adversarial:
            self._disc_step(x_ref, y)
        losses = self._output_losses(x_ref, y, adversarial)
        lam = self.lambdas
        grad_y, shares, norms = output_gradient(losses, y, lam, cfg.loss.balance)
        nets.opt_g.zero_grad(set_to_none=True)
        if q is not None:
            torch.autograd.backward([y, lam["vq/commit"] * q.commit], [grad_y, None])
        else:
            y.backward(grad_y)
        gn_g = torch.nn.utils.clip_grad_norm_(nets.model.parameters(), self.cfg.optim.grad_clip)
        self.skipped += drop_nonfinite_gradients(nets.model.parameters(), gn_g)
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
            self._acc(f"grad_y/{k}", norms[k])
        self._acc("loss/generator", total)
        self._acc("grad/gen_norm", gn_g)
        with torch.no_grad():
            self._acc("metrics/si_sdr", si_sdr(x_ref, y.detach()).mean())
            if q is not None:
                self._acc("vq/levels_mean", q.levels.float().mean())
                self._acc("vq/bypass_share", q.bypass.float().mean())
                self.last_counts = q.counts
        self.n += 1

    def _disc_step(self, x_ref: torch.Tensor, y: torch.Tensor) -> None:
        nets, b = self.nets, x_ref.shape[0]
        with autocast(self.cfg, self.device):
            logits, _ = nets.disc_run(torch.cat([x_ref, y.detach()]))
        real, fake = _split(logits, b)
        d_loss = discriminator_hinge(real, fake)
        nets.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        gn_d = torch.nn.utils.clip_grad_norm_(nets.disc.parameters(), self.cfg.optim.grad_clip)
        self.skipped += drop_nonfinite_gradients(nets.disc.parameters(), gn_d)
        nets.opt_d.step()
        self._acc("d/loss", d_loss)
        self._acc("grad/disc_norm", gn_d)
        self.nonfinite |= ~torch.isfinite(d_loss)

    def _output_losses(
        self, x_ref: torch.Tensor, y: torch.Tensor, adversarial: bool
    ) -> dict[str, torch.Tensor]:
        """Every enabled loss that reads the decoded audio y."""
        lam = self.lambdas
        losses: dict[str, torch.Tensor] = {}
        if lam["mel/loss"] > 0:
            losses["mel/loss"] = self.mel(x_ref, y)
        if adversarial:
            b = x_ref.shape[0]
            self.nets.disc.requires_grad_(False)
            try:
                with autocast(self.cfg, self.device):
                    logits, feats = self.nets.disc(torch.cat([x_ref, y]))
            finally:
                self.nets.disc.requires_grad_(True)
            _, fake_logits = _split(logits, b)
            real_feats, fake_feats = zip(*(_split(f, b) for f in feats), strict=True)
            losses["adv/gen"] = generator_adversarial(fake_logits)
            losses["adv/feat"] = feature_matching(real_feats, fake_feats)
        for key, fn in self.plain_losses.items():
            if lam[key] > 0:
                losses[key] = fn(x_ref, y)
        return losses

    def read_stats(self) -> dict[str, float]:
        """Averages since the last read (one host sync), plus codebook stats of the last step."""
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] for k in keys] + [self.skipped]).cpu().tolist()
        out = {k: v / max(1, self.n) for k, v in zip(keys, values[:-1], strict=True)}
        out["train/skipped_updates"] = values[-1]  # since the run (re)started, not averaged
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

    def check_finite(self, step: int, run_dir: Path) -> None:
        if bool(self.nonfinite):
            raise DivergedError(
                f"non-finite loss (NaN/Inf) detected by step {step}; stopping. "
                + ckpt.describe_latest(run_dir)
            )


def drop_nonfinite_gradients(params: Iterable[torch.Tensor], norm: torch.Tensor) -> torch.Tensor:
    """Zero every gradient of ``params`` when their total ``norm`` is NaN or Inf, so that one
    bad batch cannot write NaN into the weights (the optimizer then only coasts on its
    momentum). Returns 1.0 for a dropped update, else 0.0, without a host sync."""
    bad = ~torch.isfinite(norm)
    for p in params:
        if p.grad is not None:
            p.grad.masked_fill_(bad, 0.0)
    return bad.float()


def lr_scale(o: OptimConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then the optional cosine decay to decay_final."""
    scale = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
    if o.decay_steps > 0 and step > o.decay_start:
        t = min(1.0, (step - o.decay_start) / o.decay_steps)
        scale *= o.decay_final + (1 - o.decay_final) * 0.5 * (1 + math.cos(math.pi * t))
    return scale
