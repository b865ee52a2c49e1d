"""Residual vector quantizer: greedy search by squared L2, dequantization by summing codewords."""

from __future__ import annotations

import torch
from torch import nn


class ResidualVQ(nn.Module):
    """Codebooks [Q, K, D] (a buffer: they are EMA-trained, not by gradient)."""

    def __init__(self, num_quantizers: int, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.num_quantizers, self.codebook_size, self.dim = num_quantizers, codebook_size, dim
        # A random start with shrinking scale per level; training replaces it by k-means.
        scale = 0.5 * 0.95 ** torch.arange(num_quantizers, dtype=torch.float32)
        self.register_buffer(
            "codebooks", torch.randn(num_quantizers, codebook_size, dim) * scale[:, None, None]
        )
        self._norms_key: tuple = ()
        self._norms: list[torch.Tensor] = []

    def _codebook_norms(self) -> list[torch.Tensor]:
        """||c||^2 per level [K], cached until the codebooks change (in place, moved or replaced).

        Computed level by level exactly as before caching, so distances are bit-identical.
        """
        cbs = self.codebooks
        key = (cbs.data_ptr(), cbs._version, cbs.dtype, cbs.device, tuple(cbs.shape))
        if key != self._norms_key:
            with torch.no_grad():
                self._norms = [(cb * cb).sum(1) for cb in cbs.float()]
            self._norms_key = key
        return self._norms

    def _levels(self, n_levels: int | None) -> int:
        n = self.num_quantizers if n_levels is None else int(n_levels)
        if not 1 <= n <= self.num_quantizers:
            raise ValueError(f"levels must be in 1..{self.num_quantizers}, got {n}")
        return n

    @torch.no_grad()
    def encode(self, emb: torch.Tensor, n_levels: int | None = None) -> torch.Tensor:
        """emb [B, D, N] -> codes [B, L, N] (int64)."""
        return self.quantize(emb, n_levels)[0]

    def quantize(
        self, emb: torch.Tensor, n_levels: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """emb [B, D, N] -> (codes [B, L, N], dequantized [B, D, N])."""
        n = self._levels(n_levels)
        b, d, t = emb.shape
        residual = emb.detach().float().transpose(1, 2).reshape(b * t, d)
        total = torch.zeros_like(residual)
        codes = []
        norms = self._codebook_norms()
        for level in range(n):
            cb = self.codebooks[level].float()
            dist = norms[level] - 2.0 * residual @ cb.t()  # ||r||^2 is common to all codes
            idx = dist.argmin(dim=1)
            chosen = cb[idx]
            residual = residual - chosen
            total = total + chosen
            codes.append(idx)
        codes_t = torch.stack(codes, 1).reshape(b, t, n).permute(0, 2, 1)
        return codes_t, total.reshape(b, t, d).transpose(1, 2).to(emb.dtype)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, L, N] -> [B, D, N]."""
        b, n, t = codes.shape
        if n > self.num_quantizers:
            raise ValueError(f"{n} levels given, the model has {self.num_quantizers}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must be in 0..{self.codebook_size - 1}")
        out = self.codebooks.new_zeros(b, t, self.dim)
        for level in range(n):
            out = out + self.codebooks[level][codes[:, level]]
        return out.transpose(1, 2)
