"""Import Google's released SpectroStream weights (Magenta RealTime, CC-BY-4.0).

Official names are Flax paths, e.g. ``encoder/encoder_0/conv2d_3x3/conv/kernel``; our modules are
named after them, so ``a/b/conv/kernel`` maps to ``a.b.conv.weight``. Released files prefix the
subtrees: ``params/encoder/...`` (encoder.safetensors), ``params/soundstream/decoder/...`` and
``params/soundstream/quantizer/embedding`` (checkpoints/mrt2_*.safetensors).
Conv kernels are HWIO ``[k_time, k_freq, C_in, C_out]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig, official_config
from .errors import ModelError

PARTS = ("encoder", "quantizer", "decoder")
_PREFIXES = ("params/soundstream/", "params/", "soundstream/")


def strip_prefix(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def official_to_torch_name(name: str) -> str:
    """``encoder/x/conv/kernel`` -> ``encoder.x.conv.weight``; the codebook -> ``quantizer.codebooks``."""
    if name == "quantizer/embedding":
        return "quantizer.codebooks"
    path, leaf = name.rsplit("/", 1)
    if leaf not in ("kernel", "bias"):
        raise ModelError(f"unexpected official parameter {name!r}")
    return path.replace("/", ".") + (".weight" if leaf == "kernel" else ".bias")


def kernel_to_torch(name: str, kernel: np.ndarray) -> np.ndarray:
    """HWIO -> Conv2d [out, in, kt, kf]; transposed convs -> ConvTranspose2d [in, out, kt, kf], flipped."""
    if "conv2dtranspose" in name:
        return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1])
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def convert_params(params: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Official-name arrays (prefixes allowed) -> our state-dict entries (float32)."""
    out: dict[str, torch.Tensor] = {}
    for raw, value in params.items():
        name = strip_prefix(raw)
        if not name.split("/", 1)[0] in PARTS:
            continue  # other Magenta RT subtrees (the language model) are not ours
        arr = np.asarray(value, dtype=np.float32)
        if name.endswith("/kernel"):
            if arr.ndim != 4:
                raise ModelError(f"{raw}: expected a 4-D HWIO kernel, got shape {arr.shape}")
            arr = kernel_to_torch(name, arr)
        key = official_to_torch_name(name)
        if key in out:
            raise ModelError(f"parameter {name!r} given twice")
        out[key] = torch.from_numpy(arr.copy())
    return out


def parts_present(state: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    return tuple(p for p in PARTS if any(k.split(".", 1)[0] == p for k in state))


def read_safetensors_numpy(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for a bad file
        raise ModelError(f"{path}: not a readable safetensors file ({e})") from e


def import_official(
    encoder: str | Path | None = None,
    checkpoint: str | Path | None = None,
    config: ModelConfig | None = None,
):
    """Build a model from the released files; either alone gives a partial model.

    Returns ``(model, parts)`` where parts names the halves that were loaded.
    """
    from .model import SpectroStream

    if encoder is None and checkpoint is None:
        raise ModelError("give --encoder and/or --checkpoint")
    config = official_config() if config is None else config
    params: dict[str, np.ndarray] = {}
    if encoder is not None:
        enc = {
            k: v
            for k, v in read_safetensors_numpy(encoder).items()
            if strip_prefix(k).startswith(("encoder/", "quantizer/"))
        }
        if not enc:
            raise ModelError(f"{encoder}: holds no encoder parameters (params/encoder/...)")
        params.update(enc)
    if checkpoint is not None:
        ck = {
            k: v
            for k, v in read_safetensors_numpy(checkpoint).items()
            if strip_prefix(k).startswith(("decoder/", "quantizer/"))
        }
        if not ck:
            raise ModelError(
                f"{checkpoint}: holds no SpectroStream decoder (params/soundstream/decoder/...)"
            )
        params.update(ck)
    state = convert_params(params)
    model = SpectroStream(config)
    load_partial(model, state)
    return model, parts_present(state)


def load_partial(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Strict load of every part that ``state`` touches: each part is complete or absent."""
    own = model.state_dict()
    parts = parts_present(state)
    expected = {k for k in own if k.split(".", 1)[0] in parts}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(
            f"weights do not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
            f" unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelError(f"{k}: shape {tuple(v.shape)} != model's {tuple(own[k].shape)}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
