"""Training checkpoint -> released model: fold weight norm, write safetensors via ``Codec.save``."""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..files import check_plan
from ..model import SpectroStream, fold_weight_norm
from .checkpoint import load_checkpoint, resolve_checkpoint


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
    from ..codec import Codec

    path = resolve_checkpoint(run_or_checkpoint)
    check_plan([(str(path), str(output))])  # never replace the checkpoint being exported
    state = load_checkpoint(path)
    cfg = ModelConfig.from_json(state["model_config"])
    trained = SpectroStream(cfg)
    trained.load_state_dict(state["generator"], strict=True)
    fold_weight_norm(trained)
    plain = SpectroStream(cfg.with_(weight_norm=False))
    plain.load_state_dict(trained.state_dict(), strict=True)
    Codec(plain.eval(), model_id=model_id).save(output, fp16=fp16)
    return path, int(state["step"])
