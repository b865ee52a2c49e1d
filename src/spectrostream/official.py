"""Import Google's released SpectroStream weights (Magenta RealTime, CC-BY-4.0).

Official names are Flax paths, e.g. ``encoder/encoder_0/conv2d_3x3/conv/kernel``; our modules are
named after them, so ``a/b/conv/kernel`` maps to ``a.b.conv.weight``. Released files prefix the
subtrees: ``params/encoder/...`` (encoder.safetensors), ``params/soundstream/decoder/...`` and
``params/soundstream/quantizer/embedding`` (checkpoints/mrt2_*.safetensors). The names inside
``resources/spectrostream/{encoder,decoder,quantizer}.safetensors`` are not documented, so every
plausible prefix is accepted (``params/``, ``params/soundstream/``, ``soundstream/``, none), and in
a file that holds one part, names that start below the part (``decoder_0/...``, ``embedding``).
Conv kernels are HWIO ``[k_time, k_freq, C_in, C_out]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig, official_config
from .errors import ModelError

PARTS = ("encoder", "quantizer", "decoder")
_PREFIXES = ("params/soundstream/", "params/", "soundstream/")
_CHECKPOINT_PREFIXES = ("params/soundstream/", "soundstream/")
LICENSE = "CC-BY-4.0"
ATTRIBUTION = (
    "SpectroStream weights: Magenta RealTime by Google, licensed CC-BY-4.0 "
    "(https://creativecommons.org/licenses/by/4.0/), from "
    "https://huggingface.co/google/magenta-realtime-2; converted to the spectrostream layout"
)
# Model ids of codecs made from Google's weights start with this (``mrt-<hash>``), so an .ssc
# file tells where its weights came from (``spectrostream info`` shows the attribution).
MODEL_ID_PREFIX = "mrt-"


def strip_prefix(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def official_name(raw: str, part: str | None = None) -> str:
    """A released tensor name -> ``part/...``; ``part`` names the one part a file holds."""
    name = strip_prefix(raw)
    if part is not None and name.split("/", 1)[0] not in PARTS:
        name = f"{part}/{name}"
    return name


def checkpoint_name(raw: str) -> str | None:
    """The official name of a SpectroStream tensor in a Magenta RT checkpoint, else None
    (the language model's own ``params/decoder/...`` must not pass for the codec's)."""
    for p in _CHECKPOINT_PREFIXES:
        if raw.startswith(p):
            return raw[len(p) :]
    return None


def official_to_torch_name(name: str) -> str:
    """``encoder/x/conv/kernel`` -> ``encoder.x.conv.weight``; the codebook -> ``quantizer.codebooks``."""
    if name == "quantizer/embedding":
        return "quantizer.codebooks"
    path, leaf = name.rsplit("/", 1)
    if leaf not in ("kernel", "bias"):
        raise ModelError(f"unexpected official parameter {name!r}")
    return path.replace("/", ".") + (".weight" if leaf == "kernel" else ".bias")


def torch_to_official_name(key: str) -> str:
    if key == "quantizer.codebooks":
        return "quantizer/embedding"
    path, leaf = key.rsplit(".", 1)
    return path.replace(".", "/") + ("/kernel" if leaf == "weight" else "/bias")


def kernel_to_torch(name: str, kernel: torch.Tensor) -> torch.Tensor:
    """HWIO -> Conv2d [out, in, kt, kf]; transposed convs -> ConvTranspose2d [in, out, kt, kf], flipped."""
    if "conv2dtranspose" in name:
        return kernel.permute(2, 3, 0, 1).flip(2, 3).contiguous()
    return kernel.permute(3, 2, 0, 1).contiguous()


def _as_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Floating tensors keep fp16/bf16/fp32 (lossless); anything else becomes float32."""
    t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        t = t.float()
    return t


def convert_params(params: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-name arrays (prefixes allowed) -> our state-dict entries (source precision)."""
    out: dict[str, torch.Tensor] = {}
    for raw, value in params.items():
        name = strip_prefix(raw)
        if name.split("/", 1)[0] not in PARTS:
            continue  # other Magenta RT subtrees (the language model) are not ours
        t = _as_tensor(value)
        if name.endswith("/kernel"):
            if t.ndim != 4:
                raise ModelError(f"{raw}: expected a 4-D HWIO kernel, got shape {tuple(t.shape)}")
            t = kernel_to_torch(name, t)
        key = official_to_torch_name(name)
        if key in out:
            raise ModelError(f"parameter {name!r} given twice")
        out[key] = t
    return out


def parts_present(state: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(p for p in PARTS if any(k.split(".", 1)[0] == p for k in state))


def not_a_file(path: Path) -> str:
    """Why ``path`` (not a regular file) cannot be read as one, for a message."""
    if path.is_dir():
        return "is a directory"
    return "not a regular file" if path.exists() else "no such file"


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (any dtype, bf16 included)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: {not_a_file(path)}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for a bad file
        raise ModelError(f"{path}: not a readable safetensors file ({e})") from e


# A released file: a path, or (label for messages, tensors already read, e.g. byte ranges).
Source = str | Path | tuple[str, Mapping[str, torch.Tensor]]


def _read(src: Source) -> tuple[str, Mapping[str, torch.Tensor]]:
    if isinstance(src, tuple):
        return src
    return str(src), read_safetensors(src)


def expected_shapes(config: ModelConfig, parts: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Our state-dict names and shapes for ``parts`` (built on the meta device: no memory)."""
    from .model import SpectroStream

    with torch.device("meta"):
        model = SpectroStream(config)
    parts = tuple(parts)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k.split(".", 1)[0] in parts}


def abbreviate(names: Iterable[str], limit: int = 6) -> str:
    """A short listing of tensor names: all of them, or counts per common path prefix."""
    names = sorted(names)
    if len(names) <= limit:
        return ", ".join(names) if names else "none"
    for depth in range(4, 0, -1):
        groups = Counter("/".join(n.split("/")[:depth]) for n in names)
        if len(groups) <= limit:
            break
    single = {"/".join(n.split("/")[:depth]): n for n in names}
    shown = [f"{g}/* ({n})" if n > 1 else single[g] for g, n in groups.items()]
    extra = f", +{len(shown) - limit} more groups" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + extra


def first_few(names: Iterable[str], limit: int = 3) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return (", ".join(names[:limit]) or "none") + more


class OfficialTensors:
    """Official tensors gathered from released files: ``params`` by official name
    (``decoder/...``) and ``found``, each one's name in its file, for messages."""

    def __init__(self) -> None:
        self.params: dict[str, torch.Tensor] = {}
        self.found: dict[str, str] = {}
        self.sources: list[str] = []

    def add(self, src: Source, part: str | None, want: Iterable[str]) -> None:
        """Tensors of the parts in ``want``. ``part``: the file is that part's own file, so
        names below the part are accepted and nothing in it is skipped as foreign; None: a
        Magenta RT checkpoint, where only the ``soundstream`` subtree counts."""
        label, tensors = _read(src)
        want = tuple(want)
        taken = 0
        for raw, value in tensors.items():
            name = official_name(raw, part) if part is not None else checkpoint_name(raw)
            if name is None:
                continue
            owner = name.split("/", 1)[0]
            if owner not in want and (part is None or owner in PARTS):
                continue  # another model's subtree, or a part that has its own file
            if name in self.params:
                raise ModelError(f"{label}: tensor {name!r} given twice (as {raw!r})")
            self.params[name] = value
            self.found[name] = raw
            taken += 1
        if not taken:
            raise ModelError(
                f"{label}: holds no SpectroStream {'/'.join(want)} tensors "
                f"(found {abbreviate(tensors)})"
            )
        self.sources.append(label)

    def to_state(self, config: ModelConfig) -> dict[str, torch.Tensor]:
        """Checked against the model (names, then shapes) and converted to our layout."""
        parts = tuple(p for p in PARTS if any(n.split("/", 1)[0] == p for n in self.params))
        check_names(self.found, parts, config, " + ".join(self.sources))
        state = convert_params(self.params)
        own = expected_shapes(config, parts)
        for k, v in state.items():
            if tuple(v.shape) != own[k]:
                raise ModelError(f"{k}: shape {tuple(v.shape)} != model's {own[k]}")
        return state


def check_names(
    found: Mapping[str, str], parts: Iterable[str], config: ModelConfig, source: str
) -> None:
    """Every official tensor of ``parts`` present and nothing else, else a message with what
    was expected and what was found (``found`` maps official names to names in the files)."""
    parts = tuple(parts)
    expected = {torch_to_official_name(k) for k in expected_shapes(config, parts)}
    missing, unexpected = sorted(expected - set(found)), sorted(set(found) - expected)
    if missing or unexpected:
        raise ModelError(
            f"{source}: expected the {len(expected)} tensors of {'+'.join(parts)} "
            f"({abbreviate(expected)}); found {len(found)} ({abbreviate(found.values())}); "
            f"missing {len(missing)}: {first_few(missing)}; "
            f"unexpected {len(unexpected)}: {first_few(found[n] for n in unexpected)}"
        )


def read_official(
    encoder: Source | None = None,
    checkpoint: Source | None = None,
    decoder: Source | None = None,
    quantizer: Source | None = None,
) -> OfficialTensors:
    """Released files -> official tensors: a file per part, and a Magenta RT checkpoint for
    the decoder and quantizer when their own files are not given."""
    files = {"encoder": encoder, "quantizer": quantizer, "decoder": decoder}
    own = [p for p, f in files.items() if f is not None]
    out = OfficialTensors()
    for part in own:
        # An encoder file may carry the codebooks too (unless they have their own file).
        extra = ("quantizer",) if part == "encoder" and quantizer is None else ()
        out.add(files[part], part, (part, *extra))
    if checkpoint is not None:
        out.add(checkpoint, None, [p for p in ("quantizer", "decoder") if p not in own])
    return out


def import_official(
    encoder: str | Path | None = None,
    checkpoint: str | Path | None = None,
    config: ModelConfig | None = None,
    decoder: str | Path | None = None,
    quantizer: str | Path | None = None,
):
    """Build a model from the released files; a subset gives a partial model.

    Returns ``(model, parts)`` where parts names the halves that were loaded.
    """
    from .model import SpectroStream

    if all(f is None for f in (encoder, checkpoint, decoder, quantizer)):
        raise ModelError("give --encoder, --decoder, --quantizer and/or --checkpoint")
    config = official_config() if config is None else config
    state = read_official(encoder, checkpoint, decoder, quantizer).to_state(config)
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
