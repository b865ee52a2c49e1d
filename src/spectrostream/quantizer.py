"""Residual vector quantizer: greedy search by squared L2, dequantization by summing codewords.

On the CPU (``EXACT_CPU_SEARCH``) each level's code is the exact nearest codeword: a product
ranks all codewords (float16 weights with float32 sums where fbgemm exists, else float32),
every codeword within that ranking's proven error bound of the best is re-ranked by its float64
distance, and the float64 nearest (the lowest index on a tie) is the code. So the codes do not
depend on how many frames one call searches (a 40 ms stream step and a whole file give the same
codes) nor on the BLAS's summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .streaming import tensor_version


def nearest_code(
    x: torch.Tensor, codebook_t: torch.Tensor, norms: torch.Tensor, doubled: bool = False
) -> torch.Tensor:
    """Greedy search step: x [M, D] (or 2 x if ``doubled``), codebook_t [D, K] (codewords as
    columns), norms [K] = ||c||^2 -> index [M] of the nearest codeword in squared L2
    (||x||^2, common to all codes, is left out). A contiguous ``codebook_t`` is read row by
    row, the fast layout for M = 1.
    """
    return torch.sub(norms, (x if doubled else 2.0 * x) @ codebook_t).argmin(dim=1)


# The exact CPU search (module docstring); False: the float32 torch search (benchmarks).
EXACT_CPU_SEARCH = True


@dataclass
class SearchTables:
    """Per-level views for the search: ||c||^2 [K], codebook rows [K, D] in float32 and as
    stored (for decoding), codebooks transposed [D, K] (contiguous, float32; made on first use:
    the CPU search does not need them); on the CPU also ``exact`` (ExactTables)."""

    norms: list[torch.Tensor]
    rows: list[torch.Tensor]
    stored: list[torch.Tensor]
    exact: ExactTables | None = None
    _transposed: list[torch.Tensor] | None = None

    def transposed(self) -> list[torch.Tensor]:
        if self._transposed is None:
            self._transposed = [r.t().contiguous() for r in self.rows]
        return self._transposed


# The ranking bias of a codeword that repeats one of lower index: finite (compiled code may
# assume finite math), far above any real score, so never the best nor within a window.
COPY_BIAS = 2.0**126

# The exact CPU search ranks with fbgemm's float16-weight product where it exists (x86): it reads
# half the bytes of float32 codebooks (the search is memory-bound); the weights' float16
# rounding error widens the re-rank window (ExactTables.window). False: float32 numpy ranking.
HALF_CPU_RANKING = True


@dataclass
class ExactTables:
    """The exact CPU search's tables: ``rows`` [K, D] float32 per level (numpy views of the
    torch rows), ``norms`` [K] float64 per level: ||c_k|| (the larger of the float32 row's and
    its float16 copy's), ``bound``: a score's float32 rounding error per unit of
    ||c_k||^2 + ||x|| ||c_k||, ``rounding_bound(D + 1)`` (a float32 sum of D + 1 terms,
    gamma_{D+1}, over a float32 norm, gamma_D, is within it).

    Ranking (``rank``), one of: ``half``, per level fbgemm float16 packs of -fp16(c_k) with
    the float32 bias ||c_k||^2, and ``half_error`` [K] = ||c_k - fp16(c_k)||, which adds
    ||x|| half_error_k to score k's error; or ``scores``, per level [D+1, K] float32: -c_k as
    columns over ||c_k||^2, so [x, 1] @ scores = ||c||^2 - x . c in one product. ``bias``
    [L, K] float32: the ||c_k||^2 the rankings add, ``COPY_BIAS`` for a codeword equal to one
    of lower index (``_copies``): it could only tie with its twin, which wins the tie.

    Outliers: a trained codebook can hold a few codewords far longer than the rest (default v3:
    norms near 50 where 99% are below 4-38). A window sized by the longest codeword would send
    hundreds of ordinary ones to the float64 re-rank every level (a 3x slower stream), so each
    level's window covers the ordinary codewords (norm <= ``cap``: twice the 90th percentile,
    at most the longest) and the ``outliers`` get their own, per codeword (v3: 12 at most per
    level). Which codewords count as outliers changes the speed only, never the codes."""

    rows: list[np.ndarray]
    norms: np.ndarray  # [L, K]
    bound: float
    half: list[object] | None = None
    half_error: np.ndarray | None = None  # [L, K]
    scores: list[np.ndarray] | None = None
    cap: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [L, (norm, half error)]
    outliers: list[np.ndarray] = field(default_factory=list)
    # [L, 3]: per level the shortest outlier's float32 norm, the longest's norm, their largest
    # half error, for a test that no outlier can come near (``outliers_far``)
    outlier_span: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    has_outliers: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # [L]
    bias: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @classmethod
    def build(cls, rows: list[torch.Tensor], norms: list[torch.Tensor]) -> ExactTables:
        tab = cls(
            rows=[r.numpy() for r in rows],
            norms=np.stack([n.double().sqrt().numpy() for n in norms]) if norms else np.zeros(0),
            bound=rounding_bound(rows[0].shape[1] + 1) if rows else 0.0,
        )
        # a copy of a lower-index codeword never wins (ties go to the lower index)
        norms = [n.masked_fill(_copies(r), COPY_BIAS) for r, n in zip(rows, norms, strict=True)]
        tab.bias = torch.stack(norms).numpy() if norms else np.zeros((0, 0), np.float32)
        if not (HALF_CPU_RANKING and rows and tab._build_half(rows, norms)):
            tab.scores = [_score_table(r, n) for r, n in zip(rows, norms, strict=True)]
        tab._split_outliers()
        return tab

    def _build_half(self, rows: list[torch.Tensor], norms: list[torch.Tensor]) -> bool:
        """The float16 packs, if fbgemm is there and every codeword fits float16; checked on
        one product against float64 (a backend that rounded x to float16 would fail it)."""
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            return False
        if max(float(r.abs().max()) for r in rows) >= 60000.0:
            return False
        self.half, self.half_error = [], np.zeros_like(self.norms)
        for level, (r, n) in enumerate(zip(rows, norms, strict=True)):
            h = r.half().float()  # exact in float16: the pack's conversion changes nothing
            self.half.append(torch.ops.quantized.linear_prepack_fp16(-h, n.contiguous()))
            self.half_error[level] = (r.double() - h.double()).norm(dim=1).numpy()
            self.norms[level] = np.maximum(self.norms[level], h.double().norm(dim=1).numpy())
        x = torch.randn(1, rows[0].shape[1], generator=torch.Generator().manual_seed(0))
        got = self.rank(0, np.ones(x.shape[1] + 1, np.float32), x).astype(np.float64)
        want = (norms[0].double() - rows[0].half().double() @ x[0].double()).numpy()
        c = float(self.norms[0].max())
        live = self.bias[0] < COPY_BIAS
        if not np.all(np.abs(got - want)[live] <= self.bound * (c * c + float(x.norm()) * c)):
            self.half = self.half_error = None
            return False
        return True

    def _split_outliers(self) -> None:
        caps, spans = [], []
        for level, n in enumerate(self.norms):
            cap = ordinary_cap(n)
            out = np.flatnonzero(n > cap)
            herr = self.half_error[level] if self.half_error is not None else np.zeros_like(n)
            ordinary = np.delete(herr, out)
            caps.append((cap, float(ordinary.max()) if ordinary.size else 0.0))
            self.outliers.append(out)
            if out.size:
                exact = np.sqrt((self.rows[level][out].astype(np.float64) ** 2).sum(1))
                span = (float(exact.min()), float(n[out].max()), float(herr[out].max()))
            else:
                span = (0.0, 0.0, 0.0)
            spans.append(span)
        self.cap = np.array(caps, np.float64).reshape(-1, 2)
        self.outlier_span = np.array(spans, np.float64).reshape(-1, 3)
        self.has_outliers = np.array([o.size > 0 for o in self.outliers], bool)

    def outliers_far(self, level, x_norm, best, top):
        """True when no outlier codeword of ``level`` can lie within its window of the best
        score ``top`` (codeword ``best``), from norms alone: an outlier's exact score
        ||c||^2 - x . c is at least ||c||^2 - ||x|| ||c|| (Cauchy-Schwarz), which grows with
        ||c|| beyond ||x|| / 2, and its float32 score errs by at most its error bound. True for
        a level without outliers. Scalars, or arrays of levels (and their inputs) alike."""
        low, high, herr = self.outlier_span[level].T
        err = self.bound * (high * high + x_norm * high) + herr * x_norm
        floor = low * low - x_norm * low - err
        limit = top + 2.0 * (self.error(level, x_norm, best) + err)
        far = (low > x_norm / 2) & (floor > limit + 1e-6 * np.abs(limit))
        return ~self.has_outliers[level] | far

    def rank(self, level: int, aug: np.ndarray, x: torch.Tensor | None) -> np.ndarray:
        """Scores ~ ||c_k||^2 - x . c_k (float32) of every codeword k: aug = [x, 1] ([D+1] or
        [M, D+1], for ``scores``), x [M, D] float32 contiguous (for ``half``; None without it)
        -> [K] or [M, K]."""
        if self.half is not None:
            out = torch.ops.quantized.linear_dynamic_fp16(x, self.half[level]).numpy()
            return out[0] if aug.ndim == 1 else out
        return aug @ self.scores[level]

    def error(self, level: int, x_norm, codes=None):
        """Bound on the float32 score error of codewords ``codes`` (default: any ordinary one,
        at the cap) for an input of norm ``x_norm``: bound (c^2 + ||x|| c) + ||x|| half_error."""
        if codes is None:
            c, h = self.cap[level].T
        else:
            c = self.norms[level, codes]
            h = 0.0 if self.half_error is None else self.half_error[level, codes]
        return self.bound * (c * c + x_norm * c) + h * x_norm

    def window(self, level: int, x_norm, best, codes=None):
        """How far above the best score (codeword ``best``) the float64-nearest codeword can
        lie among ``codes`` (default: the ordinary ones): the two scores' error bounds added,
        doubled as a margin for rounding the limit to float32 and for a float32 ||x||."""
        return 2.0 * (self.error(level, x_norm, best) + self.error(level, x_norm, codes))


def _copies(rows: torch.Tensor) -> torch.Tensor:
    """[K, D] -> [K] bool: rows equal to a row of lower index (trained codebooks hold many:
    dead codewords restarted from one vector; default v6 has 10,372 of 65,536)."""
    _, first = np.unique(rows.numpy(), axis=0, return_index=True)
    out = torch.ones(rows.shape[0], dtype=torch.bool)
    out[torch.from_numpy(first)] = False
    return out


def ordinary_cap(norms: np.ndarray) -> float:
    """The longest norm a level's ordinary codewords may have (``ExactTables``): twice the 90th
    percentile, at most the longest; longer ones are outliers with windows of their own."""
    return min(float(norms.max()), 2.0 * float(np.quantile(norms, 0.9)))


def _score_table(rows: torch.Tensor, norms: torch.Tensor) -> np.ndarray:
    s = np.empty((rows.shape[1] + 1, rows.shape[0]), np.float32)
    np.negative(rows.numpy().T, out=s[:-1])
    s[-1] = norms.numpy()
    return s


def rounding_bound(dim: int) -> float:
    """beta such that |a_k - e_k| <= beta (C^2 + ||x|| C) for every codeword k of a level.

    e_k = ||c_k||^2 - x . c_k (exact; the greedy search ranks by it, x = 2 x residual),
    a_k = fl32(n_k - fl32(x . c_k)) with n_k = fl32(||c_k||^2), C = max_k ||c_k||. A float32 sum
    of ``dim`` terms errs by at most gamma = dim u / (1 - dim u) times the sum of |terms| (any
    order, with or without FMA): <= gamma ||c||^2 for n_k, <= gamma ||x|| ||c|| for the dot
    (Cauchy-Schwarz); the difference adds u (1 + gamma) (C^2 + ||x|| C). Doubled as a margin
    for the float32 comparison against the limit."""
    u = 2.0**-24
    gamma = dim * u / (1 - dim * u)
    return 2.0 * (gamma + u * (1 + gamma))


class ResidualVQ(nn.Module):
    """Codebooks [Q, K, D] (a buffer: they are EMA-trained, not by gradient)."""

    def __init__(self, num_levels: int, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.num_levels, self.codebook_size, self.dim = num_levels, codebook_size, dim
        # A random start with shrinking scale per level; training replaces it by k-means.
        scale = 0.5 * 0.95 ** torch.arange(num_levels, dtype=torch.float32)
        self.register_buffer(
            "codebooks", torch.randn(num_levels, codebook_size, dim) * scale[:, None, None]
        )
        self._tables_key: tuple = ()
        self._tables = SearchTables([], [], [])

    def search_tables(self) -> SearchTables:
        """Per-level tables for :func:`nearest_code` and the gathers, cached until the codebooks
        change (in place, moved or replaced). The norms are computed level by level, as the
        search always did, so distances are bit-identical.
        """
        cbs = self.codebooks
        key = (cbs.data_ptr(), tensor_version(cbs), cbs.dtype, cbs.device, tuple(cbs.shape))
        key += (HALF_CPU_RANKING,)
        if key != self._tables_key:
            with torch.no_grad():
                cbf = cbs.float()
                tab = SearchTables(
                    norms=[(cb * cb).sum(1) for cb in cbf],
                    rows=list(cbf.contiguous().unbind(0)),
                    stored=list(cbs.detach().unbind(0)),
                )
                if cbs.device.type == "cpu":
                    tab.exact = ExactTables.build(tab.rows, tab.norms)
                self._tables = tab
            self._tables_key = key
        return self._tables

    def _levels(self, levels: int | None) -> int:
        n = self.num_levels if levels is None else int(levels)
        if not 1 <= n <= self.num_levels:
            raise ValueError(f"levels must be in 1..{self.num_levels}, got {n}")
        return n

    @torch.no_grad()
    def encode(self, emb: torch.Tensor, levels: int | None = None, first_pass=None) -> torch.Tensor:
        """emb [B, D, N] -> codes [B, L, N] (int64). ``first_pass``: a compiled first pass of
        the exact CPU search for one frame (``step.compiled_search``), used when N B = 1."""
        return self._search(emb, levels, dequantize=False, first_pass=first_pass)[0]

    def quantize(
        self, emb: torch.Tensor, levels: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """emb [B, D, N] -> (codes [B, L, N], dequantized [B, D, N])."""
        codes, total = self._search(emb, levels, dequantize=True)
        b, d, t = emb.shape
        return codes, total.reshape(b, t, d).transpose(1, 2).to(emb.dtype)

    def _search(
        self, emb: torch.Tensor, levels: int | None, dequantize: bool, first_pass=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Greedy residual search -> (codes [B, L, N], sum of the chosen codewords [B N, D]).

        Five ops per level (a 40 ms step runs 64 levels): the residual is kept doubled, exactly
        (scaling by 2 is exact), which is the term the distance needs.
        """
        n = self._levels(levels)
        b, d, t = emb.shape
        twice = 2.0 * emb.detach().float().transpose(1, 2).reshape(b * t, d)
        tab = self.search_tables()
        if EXACT_CPU_SEARCH and tab.exact is not None and emb.device.type == "cpu":
            codes_np, total_np = exact_search(twice.numpy(), tab.exact, n, dequantize, first_pass)
            codes_t = torch.from_numpy(codes_np).reshape(b, t, n).permute(0, 2, 1)
            return codes_t, None if total_np is None else torch.from_numpy(total_np)
        total = torch.zeros_like(twice) if dequantize else None
        codes = []
        for level in range(n):
            idx = nearest_code(twice, tab.transposed()[level], tab.norms[level], doubled=True)
            chosen = torch.index_select(tab.rows[level], 0, idx)
            twice = torch.sub(twice, chosen, alpha=2)
            if total is not None:
                total = total + chosen
            codes.append(idx)
        return torch.stack(codes, 1).reshape(b, t, n).permute(0, 2, 1), total

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, L, N] -> [B, D, N]."""
        b, n, t = codes.shape
        if n > self.num_levels:
            raise ValueError(f"{n} levels given, the model has {self.num_levels}")
        if codes.numel():
            lo, hi = torch.aminmax(codes)
            if int(lo) < 0 or int(hi) >= self.codebook_size:
                raise ValueError(f"codes must be in 0..{self.codebook_size - 1}")
        tab = self.search_tables()
        per_level = codes.transpose(0, 1).reshape(n, b * t)
        if (
            tab.exact is not None
            and self.codebooks.dtype == torch.float32
            and codes.device.type == "cpu"
        ):
            # numpy: the same float32 additions in the same order (a third of torch's call cost)
            out_np = np.zeros((b * t, self.dim), np.float32)
            for level, idx in enumerate(per_level.numpy()):
                out_np += tab.exact.rows[level][idx]
            out = torch.from_numpy(out_np)
        else:
            out = self.codebooks.new_zeros(b * t, self.dim)
            for level, idx in enumerate(per_level.unbind(0)):
                out = out + torch.index_select(tab.stored[level], 0, idx)
        return out.reshape(b, t, self.dim).transpose(1, 2)


def exact_search(
    twice: np.ndarray, tab: ExactTables, levels: int, dequantize: bool, first_pass=None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Greedy residual search, exact per level (module docstring). twice [M, D] float32 =
    2 x the embeddings -> (codes [M, levels] int64, sum of the chosen codewords [M, D] or None).

    numpy rather than torch: a 40 ms step is 64 sequential [1, D+1] x [D+1, K] products that
    read 64 MB of codebooks (memory-bound); numpy's BLAS streamed them faster here, and its
    per-call cost is lower (docs/benchmarks.md). One frame (a stream step) takes
    ``_search_frame``, with ``first_pass`` if given (a compiled first pass); all give the same
    codes (the float64-nearest).
    """
    m, d = twice.shape
    aug = np.ones((m, d + 1), np.float32)  # [2 x residual, 1]: one product gives the ranking
    aug[:, :d] = twice
    if m == 1:
        return _search_frame(aug[0], tab, levels, dequantize, first_pass)
    codes = np.empty((m, levels), np.int64)
    total = np.zeros((m, d), np.float32) if dequantize else None
    frames, x = np.arange(m), aug[:, :d]
    for level in range(levels):
        # the float16 product wants a contiguous [M, D]; the float32 one reads aug
        xt = None if tab.half is None else torch.from_numpy(np.ascontiguousarray(x))
        approx = tab.rank(level, aug, xt)  # [M, K]
        best = approx.argmin(1)
        x_norm = np.sqrt(np.einsum("md,md->m", x, x, dtype=np.float64))
        top = approx[frames, best].astype(np.float64)
        limit = top + tab.window(level, x_norm, best)
        close = approx <= limit[:, None].astype(np.float32)
        out = tab.outliers[level]
        if out.size:
            own = top[:, None] + tab.window(level, x_norm[:, None], best[:, None], out)
            close[:, out] = approx[:, out] <= own.astype(np.float32)
        for j in np.flatnonzero(np.count_nonzero(close, 1) > 1):
            best[j] = _rerank(x[j], tab.rows[level], np.flatnonzero(close[j]))
        codes[:, level] = best
        chosen = tab.rows[level][best]
        x -= 2.0 * chosen  # exact doubling, one rounding: as the torch search
        if total is not None:
            total += chosen
    return codes, total


def _search_frame(
    aug: np.ndarray, tab: ExactTables, levels: int, dequantize: bool, first_pass=None
) -> tuple[np.ndarray, np.ndarray | None]:
    """exact_search for one frame (a stream step), aug [D+1] = [2 x embedding, 1]. Each level
    first takes its ranking's argmin, the residual updated in place (the float32 operations of
    ``exact_search``), by ``_argmin_levels`` or ``first_pass`` (the same pass compiled for
    ``first_pass.levels`` levels: ``step.CompiledSearch``). Then all levels are checked at
    once, as arrays, for another codeword within the window of the best (``_unproven``). Those
    that fail are decided in order as ``exact_search`` decides (``_decide``), and where that
    changes a code, the levels after it are searched again. Same codes, a few numpy calls per
    level instead of a dozen."""
    d = aug.shape[0] - 1
    x = aug[:d]
    if first_pass is not None and first_pass.levels == levels:
        best, approx, resid = first_pass(x)
    else:
        resid = np.empty((levels, d), np.float32)  # each level's input (2 x residual)
        approx = np.empty((levels, tab.bias.shape[1]), np.float32)
        best = np.empty(levels, np.int64)
        _argmin_levels(tab, aug, 0, resid, approx, best)
    pending = _unproven(tab, 0, resid, approx, best)
    while pending:
        level = pending.pop(0)
        code = _decide(tab, level, approx[level], resid[level], int(best[level]))
        if code != best[level] and level + 1 < levels:
            best[level] = code
            np.subtract(resid[level], 2.0 * tab.rows[level][code], out=x)
            _argmin_levels(tab, aug, level + 1, resid, approx, best)
            pending = _unproven(tab, level + 1, resid, approx, best)
        best[level] = code
    total = None
    if dequantize:
        total = np.zeros((1, d), np.float32)
        for level, code in enumerate(best):
            total += tab.rows[level][code]
    return best[None], total


def _argmin_levels(
    tab: ExactTables,
    aug: np.ndarray,
    start: int,
    resid: np.ndarray,
    approx: np.ndarray,
    best: np.ndarray,
) -> None:
    """Levels ``start``.. of one frame by argmin alone: fills their inputs ``resid``, scores
    ``approx`` and codes ``best``; aug[:D] (the input of level ``start``) is updated in place."""
    x = aug[: resid.shape[1]]
    xt = torch.from_numpy(x)[None]  # the same memory: sees the in-place updates
    for level in range(start, best.shape[0]):
        resid[level] = x
        approx[level] = tab.rank(level, aug, xt)
        code = best[level] = approx[level].argmin()
        x -= 2.0 * tab.rows[level][code]  # exact doubling, one rounding: as exact_search


def _unproven(
    tab: ExactTables, start: int, resid: np.ndarray, approx: np.ndarray, best: np.ndarray
) -> list[int]:
    """The levels from ``start`` whose argmin ``best`` is not proven the float64-nearest:
    another codeword's score lies within the window of the best (the test of ``_decide``, on
    all levels at once), ascending."""
    levels = np.arange(start, best.shape[0])
    at = np.arange(levels.shape[0])
    scores, codes = approx[start:], best[start:]
    x_norm = np.sqrt(np.einsum("ld,ld->l", resid[start:], resid[start:], dtype=np.float64))
    top = scores[at, codes].astype(np.float64)
    limit = (top + tab.window(levels, x_norm, codes)).astype(np.float32)
    scores[at, codes] = np.inf  # the runner-up decides whether any other codeword is close
    try:
        close = scores.min(1) <= limit
        near = ~tab.outliers_far(levels, x_norm, codes, top) & ~close
        for i in np.flatnonzero(near):
            args = (int(levels[i]), scores[i], float(top[i]), float(x_norm[i]), int(codes[i]))
            close[i] = _outliers_close(tab, *args).size > 0
    finally:
        scores[at, codes] = top
    return levels[close].tolist()


def _decide(tab: ExactTables, level: int, approx: np.ndarray, x: np.ndarray, best: int) -> int:
    """One level's code: the argmin ``best`` of the float32 scores ``approx`` [K] (input x [D]
    = 2 x residual), unless another codeword lies within the window of its score; then the
    float64-nearest of those (``_rerank``). ``approx`` is left as it was."""
    top = approx[best]
    # float32 dot for ||x||: its relative error (< 1e-4) is inside the window's margin
    x_norm = math.sqrt(float(x @ x))
    limit = np.float32(float(top) + tab.window(level, x_norm, best))
    approx[best] = np.inf  # the runner-up decides whether any other codeword is close
    try:
        close = _outliers_close(tab, level, approx, float(top), x_norm, best)
        if approx.min() > limit and not close.size:
            return best
        approx[best] = top  # best is among them: top <= limit
        return _rerank(x, tab.rows[level], np.union1d(np.flatnonzero(approx <= limit), close))
    finally:
        approx[best] = top


def _outliers_close(
    tab: ExactTables, level: int, approx: np.ndarray, top: float, x_norm: float, best: int
) -> np.ndarray:
    """The outlier codewords of ``level`` (not ``best``) whose scores lie within their own
    window of the best; ``approx`` [K] has inf at ``best``."""
    out = tab.outliers[level]
    if not out.size or tab.outliers_far(level, x_norm, best, top):
        return out[:0]
    own = (top + tab.window(level, x_norm, best, out)).astype(np.float32)
    return out[approx[out] <= own]


def _rerank(twice: np.ndarray, rows: np.ndarray, candidates: np.ndarray) -> int:
    """The candidate (ascending indices) with the smallest float64 ||r - c||^2, r = twice / 2;
    the first one on a tie. Each row's sum runs in the same order whatever the candidates."""
    diff = rows[candidates].astype(np.float64) - 0.5 * twice.astype(np.float64)
    return int(candidates[np.argmin((diff * diff).sum(1))])
