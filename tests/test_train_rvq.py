"""Training-side RVQ: dropout schedule, k-means, EMA update, dead-code restart, STE, bypass."""

from collections import Counter

import pytest
import torch

from spectrostream.quantizer import ResidualVQ
from spectrostream.train.config import QuantizerTrainConfig
from spectrostream.train.rvq import (
    BIASED_LEVELS_64,
    QuantizerTrainer,
    codebook_stats,
    dropout_levels,
    kmeans,
)


def test_biased_schedule_for_64_levels_is_the_papers():
    levels = dropout_levels(64, "biased").tolist()
    assert len(levels) == 32 and len(set(levels)) == 32
    assert levels == list(range(1, 17)) + list(range(18, 33, 2)) + list(range(36, 65, 4))
    assert levels == list(BIASED_LEVELS_64)


def test_biased_sampling_frequencies():
    torch.manual_seed(0)
    t = QuantizerTrainer(64, 8, 4, QuantizerTrainConfig())
    n = t.sample_levels(200_000, torch.device("cpu"))
    counts = Counter(n.tolist())
    assert set(counts) == set(BIASED_LEVELS_64)  # support: exactly the 32 values
    for v in BIASED_LEVELS_64:  # each value 1/32
        assert abs(counts[v] / 200_000 - 1 / 32) < 0.004
    # Per level of the level axis: 1-16 twice as likely as 17-32, four times 33-64.
    per_level = {lvl: counts[lvl] for lvl in range(1, 65)}
    low = sum(per_level[i] for i in range(1, 17)) / 16
    mid = sum(per_level[i] for i in range(17, 33)) / 16
    high = sum(per_level[i] for i in range(33, 65)) / 32
    assert low / mid == pytest.approx(2.0, rel=0.05)
    assert low / high == pytest.approx(4.0, rel=0.05)


def test_schedule_scales_to_other_level_counts():
    levels = dropout_levels(8, "biased").tolist()
    assert len(levels) == 32 and min(levels) == 1 and max(levels) == 8
    c = Counter(levels)
    assert c[1] == 8 and c[2] == 8  # 1-16 of 64 -> 1-2 of 8: half of the draws
    assert dropout_levels(8, "uniform").tolist() == list(range(1, 9))
    assert dropout_levels(8, "none").tolist() == [8]


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centers])
    best = None
    for seed in range(5):  # Lloyd's can land in a local minimum; one of a few seeds suffices
        cent = kmeans(x, 3, 20, torch.Generator().manual_seed(seed))
        err = torch.cdist(centers, cent).min(dim=1).values.max()
        best = err if best is None else min(best, err)
    assert best < 0.05


def test_kmeans_with_fewer_points_than_codes_gives_distinct_codes():
    x = torch.randn(5, 3)
    cent = kmeans(x, 16, 3, torch.Generator().manual_seed(0))
    assert torch.isfinite(cent).all() and torch.unique(cent, dim=0).shape[0] == 16


def _trainer(q=3, k=16, d=4, **kw):
    cfg = QuantizerTrainConfig(**{"kmeans_iters": 5, "bypass_rate": 0.0, **kw})
    return QuantizerTrainer(q, k, d, cfg)


def test_first_step_runs_kmeans_per_level_and_sets_uniform_stats():
    torch.manual_seed(0)
    t = _trainer()
    cb = torch.zeros(3, 16, 4)
    emb = torch.randn(4, 4, 32)  # M = 128 vectors
    out = t(emb, cb)
    assert bool(t.initialized)
    assert torch.count_nonzero(cb) > 0
    # Level 0 codebook is near the data scale; deeper levels model smaller residuals.
    assert cb[0].norm(dim=1).mean() > cb[2].norm(dim=1).mean()
    # Commitment is the error at each example's own number of levels.
    assert out.commit > 0 and torch.isfinite(out.commit)


def test_ema_update_matches_manual_formula():
    torch.manual_seed(0)
    t = _trainer(q=1, k=4, d=2, dead_code_fraction=0.0, kmeans_init=False, dropout="none")
    cb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]])
    emb = torch.tensor([[[0.9, 1.1, 0.0], [0.1, -0.1, 0.8]]])  # [1, D=2, N=3]
    cs0 = torch.full((1, 4), 3 / 4)  # uniform usage: 3 vectors / 4 codes
    es0 = cb * 3 / 4
    t(emb, cb)
    x = emb[0].t()
    assign = torch.tensor([0, 0, 1])
    counts = torch.bincount(assign, minlength=4).float()
    sums = torch.zeros(4, 2).index_add_(0, assign, x)
    cs = 0.99 * cs0[0] + 0.01 * counts
    es = 0.99 * es0[0] + 0.01 * sums
    n = cs.sum()
    smoothed = (cs + 1e-5) / (n + 4 * 1e-5) * n
    torch.testing.assert_close(t.cluster_size[0], cs)
    torch.testing.assert_close(t.embed_sum[0], es)
    torch.testing.assert_close(cb[0], es / smoothed[:, None])


def _one_live_code(batch: tuple[int, int, int], **kw) -> tuple:
    """One level of 8 codes of which only code 0 is alive (and the only one the data picks),
    after one step on a random batch [B, 2, N] -> (trainer, codebooks [1, 8, 2]) and the batch
    as x [B N, 2]."""
    torch.manual_seed(0)
    t = _trainer(q=1, k=8, d=2, dead_code_fraction=0.5, kmeans_init=False, dropout="none", **kw)
    cb = torch.full((1, 8, 2), 100.0)
    cb[0, 0] = 0.0
    t.cluster_size.fill_(0.01)  # every code but the used one is dead after this step
    t.cluster_size[0, 0] = 100.0
    t.embed_sum.copy_(cb * t.cluster_size[..., None])
    t.initialized.fill_(True)
    emb = torch.randn(*batch)
    t(emb, cb)
    return t, cb, emb.transpose(1, 2).reshape(-1, 2)


def test_dead_codes_are_restarted_from_batch_residuals():
    t, cb, x = _one_live_code((2, 2, 16))
    restarted = cb[0, 1:]
    # Restarted codes are residuals (= inputs at level 0) drawn from the batch.
    d = (restarted[:, None] - x[None]).norm(dim=-1).min(dim=1).values
    assert torch.all(d < 1e-6)
    uniform = 32 / 8
    torch.testing.assert_close(t.cluster_size[0, 1:], torch.full((7,), uniform))
    torch.testing.assert_close(t.embed_sum[0, 1:], restarted * uniform)


def test_distinct_restarts_leave_no_exact_copies():
    """Seven dead codes, a batch of four vectors: drawn at random (the old rule) some dead codes
    take the same vector and become exact copies, which can never be chosen (a tie goes to the
    lower index); with ``restart_distinct`` the first four take the four vectors, one each, and
    the other three the same vectors with jitter, so no two codewords are equal."""
    copies = {}
    for distinct in (False, True):
        _, cb, x = _one_live_code((1, 2, 4), restart_distinct=distinct)
        copies[distinct] = 8 - torch.unique(cb[0], dim=0).shape[0]
        if distinct:
            first = cb[0, 1:5]
            assert torch.equal(first[first[:, 0].argsort()], x[x[:, 0].argsort()])
            d = (cb[0, 5:, None] - x[None]).norm(dim=-1).min(dim=1).values
            assert torch.all((d > 0) & (d < 0.1 * x.norm(dim=1).max()))
    assert copies[False] > 0 and copies[True] == 0


def test_sparse_and_dense_restarts_agree():
    """The CPU's by-index restart and the GPU's by-mask one leave the same state."""
    for distinct in (False, True):
        _sparse_equals_dense(distinct)


def _sparse_equals_dense(distinct: bool) -> None:
    states = []
    for dense in (False, True):
        torch.manual_seed(0)
        t = _trainer(
            q=3,
            k=32,
            d=4,
            dead_code_fraction=0.8,
            dropout="uniform",
            ema_decay=0.5,
            restart_distinct=distinct,
        )
        if dense:
            t._restart_sparse = t._restart_dense
        cb = torch.zeros(3, 32, 4)
        emb = torch.randn(2, 4, 24)
        for _ in range(4):  # k-means, then steps that restart codes the batch did not use
            t(emb, cb)
        states.append((cb, t.cluster_size.clone(), t.embed_sum.clone()))
    restarted = states[0][1] == 48 / 32  # usage reset to uniform on the last step
    assert restarted.any() and not restarted.all()
    for a, b in zip(*states, strict=True):
        assert torch.equal(a, b)


def test_straight_through_and_bypass():
    torch.manual_seed(0)
    t = _trainer(q=2, k=8, d=4, bypass_rate=1.0)
    cb = torch.zeros(2, 8, 4)
    emb = torch.randn(3, 4, 5, requires_grad=True)
    out = t(emb, cb)
    assert out.bypass.all()
    torch.testing.assert_close(out.quantized, emb)  # bypass: the unquantized embedding
    t2 = _trainer(q=2, k=8, d=4, bypass_rate=0.0)
    emb2 = emb.detach().clone().requires_grad_(True)
    out2 = t2(emb2, torch.zeros(2, 8, 4))
    assert not out2.bypass.any()
    # STE: the forward value is the quantized one, the gradient is the identity.
    w = torch.randn_like(emb2)
    (out2.quantized * w).sum().backward()
    torch.testing.assert_close(emb2.grad, w)


def test_quantized_output_uses_each_examples_levels():
    torch.manual_seed(0)
    t = _trainer(q=4, k=16, d=4, dropout="uniform", ema_decay=0.999999)
    cb = torch.zeros(4, 16, 4)
    emb = torch.randn(6, 4, 8)
    t(emb, cb)  # k-means init
    before = cb.clone()
    out = t(emb, cb)
    rvq = ResidualVQ(4, 16, 4)
    rvq.codebooks.copy_(before)
    for b in range(6):
        n = int(out.levels[b])
        _, ref = rvq.quantize(emb[b : b + 1], n)
        torch.testing.assert_close(out.quantized[b : b + 1], ref, atol=1e-5, rtol=1e-5)
    # And the codes equal the inference quantizer's codes with the pre-update codebooks.
    codes, _ = rvq.quantize(emb, 4)
    assert torch.equal(out.codes, codes)


def test_codebook_stats():
    counts = torch.tensor([[4.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    usage, ppl = codebook_stats(counts)
    torch.testing.assert_close(usage, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(ppl, torch.tensor([2.0, 4.0]))
