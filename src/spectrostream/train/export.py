"""Training checkpoint -> released model: fold weight norm, write safetensors via ``Codec.save``.

Several checkpoints export as one model whose network weights are their uniform average (a
weight average of runs from one start, or of one run's last checkpoints). The codebooks are the
first checkpoint's: each run's EMA updates and dead-code restarts move codewords independently,
so two runs' codebooks are not aligned and their average would be no codebook (two
continuations of default v4 differed by 119% in their codebooks, 3.5% in their networks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from ..files import check_plan
from ..model import SpectroStream, fold_weight_norm
from .checkpoint import load_checkpoint, resolve_checkpoint

CODEBOOKS = "quantizer.codebooks"
MAX_SPREAD = 0.5  # networks farther apart than this (relative L2) do not share a start


def export_model(
    run_or_checkpoint: str | Path,
    output: str | Path,
    fp16: bool = False,
    model_id: str | None = None,
) -> tuple[Path, int]:
    """Export the newest checkpoint of a run folder (or a checkpoint file).

    Returns (checkpoint used, its step). The written file loads with
    ``spectrostream.codec.load(output)``; the EMA statistics and discriminators are not exported.
    """
    ((path, step),) = export_average([run_or_checkpoint], output, fp16=fp16, model_id=model_id)
    return path, step


def export_average(
    sources: Sequence[str | Path],
    output: str | Path,
    fp16: bool = False,
    model_id: str | None = None,
) -> list[tuple[Path, int]]:
    """Export the average of several runs' newest checkpoints (or checkpoint files).

    Network weights (weight norm folded first) are averaged uniformly; the codebooks are the
    first source's. Refuses checkpoints of different model configs, and networks whose relative
    distance from the first exceeds ``MAX_SPREAD`` (unrelated runs: their average is no model).
    Returns (checkpoint, step) per source, in order.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise CheckpointError("export: no run or checkpoint given")
    paths = [resolve_checkpoint(s) for s in sources]
    for p in paths:  # never replace a checkpoint being exported
        check_plan([(str(p), str(output))])
    first, cfg, step = _folded(paths[0])
    used = [(paths[0], step)]
    states = [first]
    for p in paths[1:]:
        state, other, step = _folded(p)
        if other != cfg:
            raise CheckpointError(f"{p}: its model config differs from {paths[0]}'s")
        _check_spread(first, state, p)
        states.append(state)
        used.append((p, step))
    plain = SpectroStream(cfg)
    plain.load_state_dict(_average(states), strict=True)
    from ..codec import Codec

    Codec(plain.eval(), model_id=model_id).save(output, fp16=fp16)
    return used


def _folded(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig, int]:
    """A checkpoint's generator with weight norm folded: (state dict, plain config, step)."""
    state = load_checkpoint(path)
    cfg = ModelConfig.from_json(state["model_config"])
    trained = SpectroStream(cfg)
    trained.load_state_dict(state["generator"], strict=True)
    fold_weight_norm(trained)
    plain_cfg = cfg.with_(weight_norm=False)
    return trained.state_dict(), plain_cfg, int(state["step"])


def _check_spread(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], where: Path) -> None:
    keys = [k for k, v in a.items() if k != CODEBOOKS and v.is_floating_point()]
    diff = sum(float((a[k].double() - b[k].double()).square().sum()) for k in keys)
    norm = sum(float(a[k].double().square().sum()) for k in keys)
    spread = (diff / max(norm, 1e-30)) ** 0.5
    if spread > MAX_SPREAD:
        raise CheckpointError(
            f"{where}: its network differs from the first checkpoint's by {spread:.0%} "
            f"(relative L2, more than {MAX_SPREAD:.0%}): runs that did not start from one model "
            "cannot be averaged"
        )


def _average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform mean of float tensors (codebooks: the first state's); others must be equal."""
    out = {}
    for k, v in states[0].items():
        if k == CODEBOOKS or len(states) == 1:
            out[k] = v
        elif v.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        elif all(torch.equal(s[k], v) for s in states):
            out[k] = v
        else:
            raise CheckpointError(f"cannot average {k}: its values differ between checkpoints")
    return out
