"""The networks of a run: generator (weight-normed), quantizer trainer, discriminators and
their optimizers; ``GeneratorStep`` is the unit DDP wraps."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import ModelConfig
from ..errors import TrainingError
from ..model import SpectroStream
from .config import TrainConfig
from .discriminators import MultiScaleSTFTDiscriminator
from .distributed import DistInfo
from .init import calibrate
from .rvq import QuantizerTrainer, RVQOutput

log = logging.getLogger(__name__)


def _can_compile(dev: torch.device) -> bool:
    """inductor needs a C++ compiler for CPU kernels: without one, say so and run eager
    (same results) instead of failing at the first step."""
    if dev.type != "cpu":
        return True
    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if any(n and shutil.which(n) for n in names):
        return True
    log.warning(
        "run.compile: no C++ compiler found (inductor needs one on the CPU); training uncompiled"
    )
    return False


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
        model_cfg.num_levels,
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
    if cfg.run.compile and _can_compile(dev):
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
