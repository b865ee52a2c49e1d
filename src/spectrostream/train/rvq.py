"""Training side of the residual VQ: EMA codebooks, k-means init, dead-code restart, dropout.

The codebooks live in the model (``model.quantizer.codebooks``, a buffer [Q, K, D]) and are
updated in place here; the EMA statistics live in ``QuantizerTrainer`` (saved in training
checkpoints, never in the exported model).

Per training step (all under no_grad, float32):
1. greedy residual search through all Q levels with the current codebooks;
2. EMA update of every level from every example: the residual that reaches level l does not
   depend on how many levels an example will use, so dropout does not starve deep levels;
3. codes whose EMA usage falls below ``dead_code_fraction`` of uniform usage are replaced by
   random residuals of the batch (their statistics reset to uniform usage);
4. per example, n levels are drawn (biased dropout) and, with probability ``bypass_rate``, the
   decoder gets the unquantized embedding. The commitment loss ||z - sg(zq_n)||^2 uses the
   example's own n levels (for bypassed examples too, so the encoder stays near the codebooks).
The straight-through estimator passes the decoder's gradient to the encoder unchanged.

In DDP the batch statistics (counts, sums) are all-reduced before the EMA update, k-means runs
on rank 0, and restart candidates come from rank 0, so every rank keeps identical codebooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from ..quantizer import nearest_code
from .config import QuantizerTrainConfig

# Paper schedule for Q = 64: 1..16 step 1, 18..32 step 2, 36..64 step 4 (32 values, uniform).
BIASED_LEVELS_64 = (*range(1, 17), *range(18, 33, 2), *range(36, 65, 4))


def dropout_levels(num_levels: int, mode: str = "biased") -> torch.Tensor:
    """The values n is drawn from, uniformly (duplicates weight a value), LongTensor [S].

    "biased" is the paper's 32-value schedule for Q = 64; for other Q each value v becomes
    ceil(v * Q / 64), which keeps the 4:2:1 weighting of the three ranges of the level axis.
    """
    q = num_levels
    if mode == "biased":
        vals = [max(1, math.ceil(v * q / 64)) for v in BIASED_LEVELS_64]
    elif mode == "uniform":
        vals = list(range(1, q + 1))
    elif mode == "none":
        vals = [q]
    else:
        raise ValueError(f"unknown dropout mode {mode!r}")
    return torch.tensor(vals, dtype=torch.long)


@dataclass
class RVQOutput:
    quantized: torch.Tensor  # [B, D, N] what the decoder gets (STE; bypassed examples = z)
    commit: torch.Tensor  # scalar, mean over elements of (z - sg(zq_n))^2
    codes: torch.Tensor  # [B, Q, N] codes of all levels (before this step's EMA update)
    levels: torch.Tensor  # [B] levels used per example
    bypass: torch.Tensor  # [B] bool
    counts: torch.Tensor  # [Q, K] code counts in this (global) batch


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _nearest(x: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """x [M, D], cb [K, D] -> index [M] of the nearest codeword (squared L2)."""
    return nearest_code(x, cb.t(), (cb * cb).sum(1))


def kmeans(
    x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Lloyd's k-means on x [M, D] -> centroids [k, D]. Empty clusters keep their centroid.

    With fewer points than clusters, initial centroids are drawn with replacement plus a tiny
    jitter so that they differ.
    """
    m, d = x.shape
    if m >= k:
        idx = torch.randperm(m, device=x.device, generator=generator)[:k]
        cent = x[idx].clone()
    else:
        idx = torch.randint(0, m, (k,), device=x.device, generator=generator)
        scale = x.std() * 1e-3 + 1e-6
        cent = x[idx] + scale * torch.randn(k, d, device=x.device, generator=generator)
    for _ in range(iters):
        assign = _nearest(x, cent)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        cent = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], cent)
    return cent


class QuantizerTrainer(nn.Module):
    """EMA state for codebooks [Q, K, D]; ``forward`` quantizes and updates them in training."""

    def __init__(
        self,
        num_levels: int,
        codebook_size: int,
        dim: int,
        cfg: QuantizerTrainConfig,
        init_from_codebooks: bool = False,
    ) -> None:
        super().__init__()
        self.num_levels, self.k, self.d = num_levels, codebook_size, dim
        self.cfg = cfg
        self.init_from_codebooks = init_from_codebooks or not cfg.kmeans_init
        self.register_buffer("cluster_size", torch.zeros(num_levels, codebook_size))
        self.register_buffer("embed_sum", torch.zeros(num_levels, codebook_size, dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer(
            "levels_table", dropout_levels(num_levels, cfg.dropout), persistent=False
        )
        self._init_checked = False  # avoids a host sync per step once initialization is known

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._init_checked = False
        super()._load_from_state_dict(*args, **kwargs)

    # ---- sampling --------------------------------------------------------------------------
    def sample_levels(self, batch: int, device: torch.device) -> torch.Tensor:
        """n levels per example [B], drawn uniformly from the dropout table."""
        table = self.levels_table.to(device)
        return table[torch.randint(0, table.numel(), (batch,), device=device)]

    def sample_bypass(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.rand(batch, device=device) < self.cfg.bypass_rate

    # ---- initialisation --------------------------------------------------------------------
    @torch.no_grad()
    def _initialize(self, x: torch.Tensor, codebooks: torch.Tensor) -> None:
        """x [M, D] (local flattened embeddings); fills codebooks and EMA statistics."""
        uniform = self._uniform_usage(x.shape[0])
        if not self.init_from_codebooks:
            residual = x.clone()
            for level in range(self.num_levels):
                if not _dist_on() or dist.get_rank() == 0:
                    codebooks[level] = kmeans(residual, self.k, self.cfg.kmeans_iters)
                if _dist_on():
                    dist.broadcast(codebooks[level], 0)
                residual = residual - codebooks[level][_nearest(residual, codebooks[level])]
        self.cluster_size.fill_(uniform)
        self.embed_sum.copy_(codebooks.float() * uniform)
        self.initialized.fill_(True)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, codebooks: torch.Tensor, step_vectors: int) -> None:
        """Residual k-means on x [M, D] (many frames, not one batch), level by level.

        The EMA state starts from the k-means assignment counts scaled to ``step_vectors``
        (vectors per training step), so dead-code restarts work from the first step.
        """
        residual = x.float().clone()
        scale = self._uniform_usage(step_vectors) * self.k / x.shape[0]
        for level in range(self.num_levels):
            if not _dist_on() or dist.get_rank() == 0:
                codebooks[level] = kmeans(residual, self.k, self.cfg.kmeans_iters)
            if _dist_on():
                dist.broadcast(codebooks[level], 0)
            idx = _nearest(residual, codebooks[level].float())
            counts = torch.bincount(idx, minlength=self.k).float() * scale
            self.cluster_size[level] = counts
            self.embed_sum[level] = codebooks[level].float() * counts[:, None]
            residual = residual - codebooks[level][idx]
        if _dist_on():  # every rank must start from rank 0's EMA state
            dist.broadcast(self.cluster_size, 0)
            dist.broadcast(self.embed_sum, 0)
        self.initialized.fill_(True)
        self._init_checked = True

    def _uniform_usage(self, local_vectors: int) -> float:
        world = dist.get_world_size() if _dist_on() else 1
        return local_vectors * world / self.k

    # ---- training step ---------------------------------------------------------------------
    def forward(self, emb: torch.Tensor, codebooks: torch.Tensor) -> RVQOutput:
        """emb [B, D, N] (encoder output), codebooks [Q, K, D] (updated in place)."""
        b, d, n = emb.shape
        device = emb.device
        with torch.autocast(device_type=device.type, enabled=False):
            z = emb.float()
            x = z.detach().transpose(1, 2).reshape(b * n, d)
            if not self._init_checked:
                if not bool(self.initialized):
                    self._initialize(x, codebooks)
                self._init_checked = True
            levels = self.sample_levels(b, device)
            bypass = self.sample_bypass(b, device)
            zq, codes, counts = self._search_and_update(x, codebooks, levels, n)
            zq = zq.reshape(b, n, d).transpose(1, 2)
            commit = (z - zq).square().mean()
            ste = z + (zq - z).detach()
            out = torch.where(bypass[:, None, None], z, ste)
        return RVQOutput(
            out,
            commit,
            codes.reshape(b, n, self.num_levels).permute(0, 2, 1),
            levels,
            bypass,
            counts,
        )

    @torch.no_grad()
    def _search_and_update(
        self, x: torch.Tensor, codebooks: torch.Tensor, levels: torch.Tensor, frames: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, d = x.shape
        device = x.device
        rows_levels = levels.repeat_interleave(frames)[:, None]  # [M, 1]
        cand_idx = None
        if not self.cfg.restart_distinct:
            cand_idx = torch.randint(0, m, (self.num_levels, self.k), device=device)
        residuals = torch.empty(self.num_levels, m, d, device=device)  # what reaches each level
        codes = torch.empty(self.num_levels, m, dtype=torch.long, device=device)
        total = torch.zeros_like(x)
        residual = x
        for level in range(self.num_levels):
            cb = codebooks[level].float()
            idx = _nearest(residual, cb)
            chosen = cb[idx]
            residuals[level], codes[level] = residual, idx
            total = total + chosen * (rows_levels > level)
            residual = residual - chosen
        counts = torch.zeros(self.num_levels, self.k, device=device)
        counts.scatter_add_(1, codes, torch.ones_like(codes, dtype=counts.dtype))
        if _dist_on():
            dist.all_reduce(counts)
        self._ema_update(codebooks, codes, residuals, counts, cand_idx)
        return total, codes.t(), counts

    @torch.no_grad()
    def _ema_update(
        self,
        codebooks: torch.Tensor,
        codes: torch.Tensor,
        residuals: torch.Tensor,
        counts: torch.Tensor,
        cand_idx: torch.Tensor | None,
    ) -> None:
        """EMA of usage and per-code residual sums (codes [Q, M], residuals [Q, M, D], counts
        [Q, K] of the global batch), new codebooks = sums / smoothed usage, then dead codes
        restarted from batch residuals (level q's code k from residuals[q, cand_idx[q, k]];
        None: ``restart_distinct``, see ``_distinct_candidates``)."""
        decay = self.cfg.ema_decay
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self._add_code_sums(codes, residuals, decay)
        total = self.cluster_size.sum(dim=1, keepdim=True)
        eps = 1e-5
        smoothed = (self.cluster_size + eps) / (total + self.k * eps) * total
        if codebooks.dtype == torch.float32:
            torch.div(self.embed_sum, smoothed[..., None], out=codebooks)
        else:
            codebooks.copy_(self.embed_sum / smoothed[..., None])
        uniform = self._uniform_usage(codes.shape[1])
        dead = self.cluster_size < self.cfg.dead_code_fraction * uniform  # [Q, K]
        jitter = None
        if cand_idx is None:
            cand_idx, jitter = _distinct_candidates(dead, residuals)
        restart = self._restart_sparse if codebooks.device.type == "cpu" else self._restart_dense
        restart(codebooks, dead, residuals, cand_idx, uniform, jitter)

    def _add_code_sums(self, codes: torch.Tensor, residuals: torch.Tensor, decay: float) -> None:
        """embed_sum = decay * embed_sum + (1 - decay) * each code's sum of the residuals that
        chose it (all ranks' in DDP)."""
        weight = 1 - decay
        self.embed_sum.mul_(decay)
        if not _dist_on():  # in place, level by level: no dense [Q, K, D] temporary
            for level in range(self.num_levels):
                self.embed_sum[level].index_add_(0, codes[level], residuals[level], alpha=weight)
            return
        sums = torch.zeros_like(self.embed_sum)
        for level in range(self.num_levels):
            sums[level].index_add_(0, codes[level], residuals[level])
        dist.all_reduce(sums)
        self.embed_sum.add_(sums, alpha=weight)

    def _restart_sparse(self, codebooks, dead, residuals, cand_idx, uniform, jitter) -> None:
        """Dead codes restarted by index: one host sync, no pass over the [Q, K, D] tables
        (on the CPU those passes cost 4x the rest of the update)."""
        q, k = dead.nonzero(as_tuple=True)
        cand = residuals[q, cand_idx[q, k]]  # [dead, D]
        if jitter is not None:
            cand = cand + jitter.at(q, k)
        if _dist_on():  # every rank has the same dead codes (their usage is global)
            dist.broadcast(cand, 0)
        codebooks[q, k] = cand.to(codebooks.dtype)
        self.embed_sum[q, k] = cand * uniform
        self.cluster_size[q, k] = uniform

    def _restart_dense(self, codebooks, dead, residuals, cand_idx, uniform, jitter) -> None:
        """The same by masks over the whole tables: no host sync (a GPU keeps queueing)."""
        levels = torch.arange(self.num_levels, device=dead.device)[:, None]
        cand = residuals[levels, cand_idx]
        if jitter is not None:
            cand = cand + jitter.at(levels, torch.arange(self.k, device=dead.device)[None])
        if _dist_on():
            dist.broadcast(cand, 0)
        mask = dead[..., None]
        codebooks.copy_(torch.where(mask, cand.to(codebooks.dtype), codebooks))
        self.embed_sum.copy_(torch.where(mask, cand * uniform, self.embed_sum))
        self.cluster_size.masked_fill_(dead, uniform)


class _Jitter(NamedTuple):
    """Restart jitter for ``restart_distinct``: ``noise`` [Q, n, D] Gaussian draws, one per level
    and batch vector (n = min(M, K): only a level with more dead codes than batch vectors
    repeats one), ``slot`` [Q, K] which draw a code takes, ``scale`` [Q, K] its size."""

    noise: torch.Tensor
    slot: torch.Tensor
    scale: torch.Tensor

    def at(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The jitter of codes (q, k), index tensors that broadcast: [..., D]."""
        return self.noise[q, self.slot[q, k]] * self.scale[q, k, None]


def _distinct_candidates(
    dead: torch.Tensor, residuals: torch.Tensor
) -> tuple[torch.Tensor, _Jitter]:
    """Restart vectors for ``restart_distinct``: dead [Q, K], residuals [Q, M, D] -> (cand_idx
    [Q, K], jitter). The j-th dead code of a level takes the j-th vector of a random order of
    the batch's M, so no two codes restarted in one step get the same vector while M suffices;
    beyond M the order repeats, and the r-th repeat of a vector adds r times one Gaussian draw
    of 1% of the level's residual RMS, so that the repeats are not exact copies (an exact copy
    of a lower-index codeword can never be chosen: ties go to the lower index, so it only dies
    again). The draws are [Q, min(M, K), D], not one per code: on the CPU (M = 64, K = 1,024)
    a [Q, K, D] draw cost ~120 ms per step."""
    q, m = residuals.shape[:2]
    order = torch.rand(q, m, device=dead.device).argsort(dim=1)
    rank = (dead.cumsum(1) - 1).clamp(min=0)  # [Q, K]: which dead code of its level
    slot = rank % m
    cand_idx = order.gather(1, slot)
    rms = residuals.square().mean(dim=(1, 2)).sqrt()  # [Q]
    noise = torch.randn(q, min(m, dead.shape[1]), residuals.shape[2], device=dead.device)
    return cand_idx, _Jitter(noise, slot, 0.01 * rms[:, None] * (rank // m))


def codebook_stats(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """counts [Q, K] -> (usage [Q]: share of codes used, perplexity [Q]: exp(entropy))."""
    usage = (counts > 0).float().mean(dim=1)
    p = counts / counts.sum(dim=1, keepdim=True).clamp_min(1e-9)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)
    return usage, torch.exp(entropy)
