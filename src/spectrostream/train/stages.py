"""Quantizer stages: autoencoder warm-up -> residual k-means on many frames -> RVQ training.

The stage follows from the step and the fitted flag, so a resumed run continues in the right
stage: steps < ``ae_steps`` bypass the quantizer; the first step at or after ``ae_steps``
with unfitted codebooks first collects ``kmeans_frames`` embedding frames from fresh training
crops and fits the codebooks (``QuantizerTrainer.fit``).
"""

from __future__ import annotations

import sys
import time

import torch
from torch.utils.data import DataLoader

from ..config import SAMPLES_PER_CODE
from ..model import SpectroStream
from .config import TrainConfig
from .data import CropDataset
from .rvq import QuantizerTrainer

# Crop keys for k-means collection start here, far from the training keys (step * batch + i).
KMEANS_KEY_OFFSET = 1 << 48


def stage(cfg: TrainConfig, step: int) -> str:
    """'ae' (quantizer bypassed) or 'rvq'."""
    return "ae" if step < cfg.quantizer.ae_steps else "rvq"


def needs_fit(cfg: TrainConfig, rvq: QuantizerTrainer, step: int) -> bool:
    q = cfg.quantizer
    return q.kmeans_frames > 0 and step >= q.ae_steps and not bool(rvq.initialized)


@torch.no_grad()
def collect_embeddings(
    model: SpectroStream,
    dataset: CropDataset,
    frames: int,
    batch: int,
    device: torch.device,
    num_workers: int = 0,
) -> torch.Tensor:
    """Embedding frames [M >= frames, D] of fresh training crops (eval mode)."""
    per_crop = -(-dataset.crop_samples // SAMPLES_PER_CODE)
    n_batches = -(-frames // (per_crop * batch))
    sampler = [[KMEANS_KEY_OFFSET + j * batch + i for i in range(batch)] for j in range(n_batches)]
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers)
    out, have = [], 0
    was_training = model.training
    model.eval()
    try:
        for x, _, _ in loader:
            e = model.encode_embeddings(x.to(device)).float()
            out.append(e.transpose(1, 2).reshape(-1, e.shape[1]))
            have += out[-1].shape[0]
            if have >= frames:
                break
    finally:
        model.train(was_training)
    return torch.cat(out)


def fit_codebooks(
    cfg: TrainConfig,
    model: SpectroStream,
    rvq: QuantizerTrainer,
    dataset: CropDataset,
    device: torch.device,
    step_vectors: int,
    verbose: bool = True,
) -> None:
    t0 = time.perf_counter()
    x = collect_embeddings(
        model,
        dataset,
        cfg.quantizer.kmeans_frames,
        cfg.data.batch_size,
        device,
        cfg.data.num_workers,
    )
    t1 = time.perf_counter()
    rvq.fit(x, model.quantizer.codebooks, step_vectors)
    if verbose:
        print(
            f"k-means: {x.shape[0]} frames collected in {t1 - t0:.0f} s, "
            f"{rvq.num_levels} levels fitted in {time.perf_counter() - t1:.0f} s",
            file=sys.stderr,
        )
