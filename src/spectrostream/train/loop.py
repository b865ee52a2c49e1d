"""The training run: data, networks, resume, the step loop, logging, validation, checkpoints.

One file per job: ``distributed.py`` (processes and devices), ``nets.py`` (networks and
optimizers), ``step.py`` (one D + G step), ``stages.py`` (quantizer stages), ``validation.py``
(failure-mode validation), ``checkpoint.py`` (files). This module strings them together.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..config import SAMPLE_RATE, SAMPLES_PER_CODE, ModelConfig
from ..errors import DivergedError, TrainingError
from ..model import SpectroStream
from . import checkpoint as ckpt
from .config import TrainConfig
from .data import (
    CropDataset,
    DataSplit,
    StepBatchSampler,
    ValidDataset,
    build_split,
    worker_seeder,
)
from .distributed import DistInfo, gather_rng, seed_all, setup_distributed
from .distributed import out_of_time as _out_of_time
from .nets import GeneratorStep, Nets, build_model, build_nets, load_init_weights
from .rvq import QuantizerTrainer
from .stages import fit_codebooks, needs_fit
from .step import StepRunner
from .validation import VALID_KBPS, format_validation, validate, write_examples

__all__ = [
    "VALID_KBPS",
    "DistInfo",
    "DivergedError",
    "GeneratorStep",
    "StepRunner",
    "TrainResult",
    "TrainingError",
    "build_model",
    "build_nets",
    "load_init_weights",
    "train",
]

log = logging.getLogger(__name__)


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
    nets.rvq.load_state_dict(state["quantizer_ema"], strict=True)
    nets.opt_g.load_state_dict(state["opt_g"])
    if saved_cfg.discriminator == cfg.discriminator:
        nets.disc.load_state_dict(state["discriminator"], strict=True)
        nets.opt_d.load_state_dict(state["opt_d"])
    elif dinfo.main:
        log.warning("the [discriminator] config changed: the discriminators start afresh")
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
        seed_all(cfg.run.seed, dinfo.rank, int(state["step"]))
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
    _check_args(cfg, resume, init, dinfo)
    if dinfo.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    resume_state = _open_run(run_dir, resume, dinfo)
    torch.manual_seed(cfg.run.seed + dinfo.rank)
    np.random.seed((cfg.run.seed + dinfo.rank) % 2**32)
    split, train_ds, valid_ds = _datasets(cfg, run_dir, dinfo)
    nets = build_nets(cfg, dinfo, init)
    start = 0 if resume_state is None else _restore(resume_state, cfg, nets, dinfo)
    del resume_state
    run = _Run(cfg, run_dir, dinfo, nets, train_ds, valid_ds, deadline)
    try:
        if dinfo.main:
            run.open_log(split, start)
        step = run.loop(start)
    finally:
        run.close()
    return TrainResult(step, run_dir, run.last_ckpt, nets.model, nets.rvq)


def _check_args(cfg: TrainConfig, resume: bool, init: str | None, dinfo: DistInfo) -> None:
    if resume and init is not None:
        raise TrainingError("--resume and --init are exclusive")
    if cfg.data.batch_size % dinfo.world:
        raise TrainingError(
            f"batch_size {cfg.data.batch_size} is not divisible by the {dinfo.world} processes"
        )


def _open_run(run_dir: Path, resume: bool, dinfo: DistInfo) -> dict[str, Any] | None:
    """The checkpoint to resume from (None for a fresh run); refuses to overwrite a run."""
    if not resume:
        if ckpt.latest_checkpoint(run_dir) is not None:
            raise TrainingError(
                f"{run_dir} already holds checkpoints; pass --resume to continue "
                "or choose another --out"
            )
        return None
    if ckpt.latest_checkpoint(run_dir) is None:
        raise TrainingError(f"--resume: no checkpoint in {ckpt.checkpoint_dir(run_dir)}")
    path, state = ckpt.load_latest_intact(run_dir, map_location="cpu")
    if dinfo.main:
        print(f"resuming from {path} (step {state['step']})", file=sys.stderr)
    return state


def _datasets(
    cfg: TrainConfig, run_dir: Path, dinfo: DistInfo
) -> tuple[DataSplit, CropDataset, ValidDataset]:
    """Rank 0 builds the manifest cache first; the others then read it."""
    cache = Path(cfg.data.manifest_cache) if cfg.data.manifest_cache else run_dir / "manifest.json"
    if dinfo.main:
        split = build_split(cfg.data.train, cfg.data.valid_fraction, cache)
    if dinfo.world > 1:
        dist.barrier()
    if not dinfo.main:
        split = build_split(cfg.data.train, cfg.data.valid_fraction, cache)
    d, channels = cfg.data, cfg.model_config().audio_channels
    train_ds = CropDataset(
        split.train,
        cfg.crop_samples,
        channels,
        cfg.run.seed,
        dinfo.rank,
        d.silence_db,
        d.silence_retries,
        gain_db=d.augment_gain_db,
        flips=d.augment_flips,
    )
    valid_ds = ValidDataset(
        split.valid, cfg.crop_samples, channels, d.valid_crops, cfg.run.seed, d.silence_db
    )
    return split, train_ds, valid_ds


class _Run:
    """The step loop with its logging, validation, checkpoints and stage changes."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        dinfo: DistInfo,
        nets: Nets,
        train_ds: CropDataset,
        valid_ds: ValidDataset,
        deadline: float | None,
    ) -> None:
        self.cfg, self.run_dir, self.dinfo, self.nets = cfg, run_dir, dinfo, nets
        self.train_ds, self.valid_ds, self.deadline = train_ds, valid_ds, deadline
        self.per_rank = cfg.data.batch_size // dinfo.world
        self.runner = StepRunner(cfg, nets, dinfo.device)
        self.writer: Any = None
        self.bar: Any = None
        self.last_ckpt = ckpt.latest_checkpoint(run_dir) if dinfo.main else None
        self.read_failures = self.quiet_crops = self.skipped_seen = 0
        self.t_last, self.steps_last = time.perf_counter(), 0

    def open_log(self, split: DataSplit, start: int) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        (run_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))
        total_files = len(split.train) + len(split.valid) + len(split.failures)
        self.writer.add_scalar("data/unreadable_files", len(split.failures), start)
        print(
            f"data: {len(split.train)} train / {len(split.valid)} valid tracks "
            f"({sum(t.seconds for t in split.train) / 3600:.2f} h train), "
            f"{len(split.failures)} of {total_files} files unreadable; "
            f"{self.dinfo.world} process(es), batch {cfg.data.batch_size}, "
            f"device {self.dinfo.device}",
            file=sys.stderr,
        )
        self.bar = _progress(cfg, self.dinfo, start)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def loop(self, start: int) -> int:
        cfg, dinfo, nets = self.cfg, self.dinfo, self.nets
        loader = _loader(cfg, self.train_ds, self.per_rank, start, dinfo)
        step = start
        for x, fails, quiet in loader:
            self.read_failures += int(fails.sum())
            self.quiet_crops += int(quiet.sum())
            x = x.to(dinfo.device, non_blocking=True)
            if needs_fit(cfg, nets.rvq, step):
                frames = -(-cfg.crop_samples // SAMPLES_PER_CODE)
                fit_codebooks(
                    cfg, nets.model, nets.rvq, self.train_ds, dinfo.device, self.per_rank * frames
                )
            self.runner.step(x, step)
            index, step = step, step + 1
            self.steps_last += 1
            if self.bar is not None:
                self.bar.update(1)
            if index % cfg.run.log_every == 0 or step == cfg.optim.max_steps:
                self.log(index, step)
            if step % cfg.run.val_every == 0 and len(self.valid_ds):
                self.validate(step)
            out_of_time = _out_of_time(self.deadline, dinfo)
            if step % cfg.run.ckpt_every == 0 or step == cfg.optim.max_steps or out_of_time:
                self.checkpoint(step)
            if out_of_time:
                if dinfo.main:
                    print(f"time limit reached at step {step}", file=sys.stderr)
                break
        return step

    def log(self, index: int, step: int) -> None:
        stats = self.runner.read_stats()
        self.runner.check_finite(step, self.run_dir)
        skipped = int(stats["train/skipped_updates"])
        if skipped > self.skipped_seen and self.dinfo.main:
            log.warning(
                "%d update(s) dropped by step %d: NaN/Inf gradient (train/skipped_updates)",
                skipped - self.skipped_seen,
                step,
            )
        self.skipped_seen = skipped
        now = time.perf_counter()
        rate = self.steps_last / max(now - self.t_last, 1e-9)
        self.t_last, self.steps_last = now, 0
        audio_per_step = self.cfg.data.batch_size * self.cfg.crop_samples / SAMPLE_RATE
        stats.update(
            {
                "perf/steps_per_s": rate,
                "perf/audio_s_per_s": rate * audio_per_step,
                "data/read_failures": self.read_failures,
                "data/quiet_crops": self.quiet_crops,
                "lr": self.nets.opt_g.param_groups[0]["lr"],
            }
        )
        if self.writer is not None:
            for k, v in stats.items():
                self.writer.add_scalar(k, v, index)
        if self.bar is not None:
            self.bar.set_postfix(
                mel=f"{stats.get('mel/loss', float('nan')):.2f}",
                sisdr=f"{stats['metrics/si_sdr']:.1f}",
                aps=f"{rate * audio_per_step:.0f}",
            )

    def validate(self, step: int) -> None:
        if self.dinfo.main:
            loader = DataLoader(
                self.valid_ds,
                batch_size=self.cfg.data.valid_batch_size,
                num_workers=min(2, self.cfg.data.num_workers),
            )
            vstats, examples = validate(
                self.cfg, self.nets, loader, self.runner.mel, self.dinfo.device, step
            )
            print(format_validation(step, vstats), file=sys.stderr, flush=True)
            for k, v in vstats.items():
                self.writer.add_scalar(k, v, step)
            write_examples(self.run_dir, step, examples, self.writer)
        if self.dinfo.world > 1:
            dist.barrier()

    def checkpoint(self, step: int) -> None:
        self.runner.check_finite(step, self.run_dir)
        rngs = gather_rng(self.dinfo)
        if self.dinfo.main:
            self.last_ckpt = ckpt.save_checkpoint(
                self.run_dir, _state(self.cfg, self.nets, step, rngs), self.cfg.run.keep_checkpoints
            )
        if self.dinfo.world > 1:
            dist.barrier()


def _progress(cfg: TrainConfig, dinfo: DistInfo, start: int) -> Any:
    if not (dinfo.main and cfg.run.progress):
        return None
    from tqdm import tqdm

    return tqdm(
        total=cfg.optim.max_steps, initial=start, unit="step", dynamic_ncols=True, smoothing=0.05
    )
