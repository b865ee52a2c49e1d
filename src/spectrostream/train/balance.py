"""Gradient shares of the losses on the decoded audio, and an optional loss balancer.

Every loss L_i that reads the decoded audio y is differentiated with respect to y alone
(cheap: only the loss graph, not the network). Then either

- plain weights: g = sum_i w_i dL_i/dy, or
- balanced (EnCodec's idea): g = sum_i (w_i / sum_j w_j) dL_i/dy / ||dL_i/dy||, so that w_i is
  the share of the gradient direction each loss gets, whatever its scale;

and g is pushed through the network in one backward pass (together with losses that do not
read y, such as the commitment loss). The share of loss i is ||w_i' dL_i/dy|| / sum_j ||...||
with w_i' the factor it was finally given; it is what the logs call ``share/<loss>``; the raw
norms ||dL_i/dy|| are logged as ``grad_y/<loss>``.
"""

from __future__ import annotations

import torch


def output_gradient(
    losses: dict[str, torch.Tensor],
    y: torch.Tensor,
    weights: dict[str, float],
    balance: bool,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """losses (each a scalar that depends on y) -> (dTotal/dy, shares, raw norms ||dL_i/dy||)."""
    names = list(losses)
    grads = []
    for k in names:
        (g,) = torch.autograd.grad(losses[k], [y], retain_graph=True, allow_unused=True)
        grads.append(g if g is not None else torch.zeros_like(y))
    norms = [g.float().norm() for g in grads]
    if balance:
        total_w = sum(weights[k] for k in names)
        factors = [weights[k] / total_w / (n + eps) for k, n in zip(names, norms, strict=True)]
    else:
        factors = [torch.as_tensor(weights[k], device=y.device) for k in names]
    scaled = [f * n for f, n in zip(factors, norms, strict=True)]
    denom = torch.stack(scaled).sum() + eps
    shares = {k: s / denom for k, s in zip(names, scaled, strict=True)}
    combined = sum(f * g for f, g in zip(factors, grads, strict=True))
    raw = {k: n.detach() for k, n in zip(names, norms, strict=True)}
    return combined.detach(), {k: v.detach() for k, v in shares.items()}, raw
