"""Residual vector quantizer: greedy search by squared L2, dequantization by summing codewords."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class SearchTables:
    """Per-level views for the search: codebooks transposed [D, K] (contiguous, float32),
    ||c||^2 [K], codebook rows [K, D] in float32 and as stored (for decoding)."""

    transposed: list[torch.Tensor]
    norms: list[torch.Tensor]
    rows: list[torch.Tensor]
    stored: list[torch.Tensor]


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
        self._tables = SearchTables([], [], [], [])

    def search_tables(self) -> SearchTables:
        """Per-level tables for :func:`nearest_code` and the gathers, cached until the codebooks
        change (in place, moved or replaced). The norms are computed level by level, as the
        search always did, so distances are bit-identical.
        """
        cbs = self.codebooks
        key = (cbs.data_ptr(), tensor_version(cbs), cbs.dtype, cbs.device, tuple(cbs.shape))
        if key != self._tables_key:
            with torch.no_grad():
                cbf = cbs.float()
                self._tables = SearchTables(
                    transposed=list(cbf.transpose(1, 2).contiguous().unbind(0)),
                    norms=[(cb * cb).sum(1) for cb in cbf],
                    rows=list(cbf.unbind(0)),
                    stored=list(cbs.detach().unbind(0)),
                )
            self._tables_key = key
        return self._tables

    def _levels(self, levels: int | None) -> int:
        n = self.num_levels if levels is None else int(levels)
        if not 1 <= n <= self.num_levels:
            raise ValueError(f"levels must be in 1..{self.num_levels}, got {n}")
        return n

    @torch.no_grad()
    def encode(self, emb: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """emb [B, D, N] -> codes [B, L, N] (int64)."""
        return self._search(emb, levels, dequantize=False)[0]

    def quantize(
        self, emb: torch.Tensor, levels: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """emb [B, D, N] -> (codes [B, L, N], dequantized [B, D, N])."""
        codes, total = self._search(emb, levels, dequantize=True)
        b, d, t = emb.shape
        return codes, total.reshape(b, t, d).transpose(1, 2).to(emb.dtype)

    def _search(
        self, emb: torch.Tensor, levels: int | None, dequantize: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Greedy residual search -> (codes [B, L, N], sum of the chosen codewords [B N, D]).

        Five ops per level (a 40 ms step runs 64 levels): the residual is kept doubled, exactly
        (scaling by 2 is exact), which is the term the distance needs.
        """
        n = self._levels(levels)
        b, d, t = emb.shape
        twice = 2.0 * emb.detach().float().transpose(1, 2).reshape(b * t, d)
        total = torch.zeros_like(twice) if dequantize else None
        codes = []
        tab = self.search_tables()
        for level in range(n):
            idx = nearest_code(twice, tab.transposed[level], tab.norms[level], doubled=True)
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
        rows = self.search_tables().stored
        out = self.codebooks.new_zeros(b * t, self.dim)
        for level, idx in enumerate(codes.transpose(0, 1).reshape(n, b * t).unbind(0)):
            out = out + torch.index_select(rows[level], 0, idx)
        return out.reshape(b, t, self.dim).transpose(1, 2)
