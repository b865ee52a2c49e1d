"""Model files: our safetensors layout, model ids, and models by name.

A model file is safetensors with our state-dict names and, in its metadata, ``format``,
``format_version``, the config JSON, the ``model_id`` and the ``parts`` it holds; models made from
Google's weights add ``name``, ``source``, ``revision``, ``license`` and ``attribution``.

Names: ``default`` is shipped inside the package; ``magenta-rt`` is fetched from the Hugging Face
Hub once (see ``hub``), converted, and kept in ``$HF_HOME/spectrostream/`` so that later loads are
offline and make no request. (Beside, not inside, ``$HF_HUB_CACHE``: that folder holds only
repositories in the Hub's layout, and its tools report anything else as corrupt.)
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_path
from .config import ModelConfig, official_config
from .official import ATTRIBUTION, LICENSE, MODEL_ID_PREFIX, PARTS, ModelError, not_a_file

FORMAT_NAME = "spectrostream"
FORMAT_VERSION = "1"
DEFAULT_MODEL = "default"
MODELS_DIR = Path(__file__).parent / "models"


@dataclass(frozen=True)
class NamedModel:
    name: str
    description: str
    license: str


NAMED_MODELS = {
    "magenta-rt": NamedModel(
        "magenta-rt",
        "Google's SpectroStream (Magenta RealTime), downloaded from the Hugging Face Hub",
        LICENSE,
    ),
    DEFAULT_MODEL: NamedModel(
        DEFAULT_MODEL,
        "placeholder: quarter width, trained 41,589 steps (5,626 of them on a GPU); far below Opus (shipped)",
        "Apache-2.0",
    ),
}
HUB_MODELS = ("magenta-rt",)


def state_model_id(
    state: Mapping[str, torch.Tensor], config: ModelConfig, prefix: str = "ss-"
) -> str:
    """``<prefix><16 hex>``: a hash of the config and the weights rounded to fp16."""
    h = hashlib.sha256(config.to_json().encode())
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to(torch.float16).cpu().numpy().tobytes())
    return f"{prefix}{h.hexdigest()[:16]}"


def official_model_id(state: Mapping[str, torch.Tensor], config: ModelConfig) -> str:
    """Model id of a codec made from Google's weights (the same by every import route)."""
    return state_model_id(state, config, MODEL_ID_PREFIX)


def write_model(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    config: ModelConfig,
    model_id: str,
    parts: tuple[str, ...],
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write a model file atomically (a unique temporary file in the target folder, renamed)."""
    from safetensors.torch import save_file

    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "model_id": model_id,
        "parts": ",".join(parts),
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata=meta)


def cache_dir() -> Path:
    """Where converted hub models live: ``$HF_HOME/spectrostream`` (read when called)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "spectrostream"


def cached_path(name: str, revision: str | None = None) -> Path:
    """The converted file of a hub model at a revision (as asked: a branch, tag or sha)."""
    rev = re.sub(r"[^A-Za-z0-9._-]", "_", revision or "main")
    return cache_dir() / f"{name}@{rev}.safetensors"


def fetch_hub_model(name: str, revision: str | None = None) -> Path:
    """Download, convert and cache a hub model; prints the attribution once, when fetched."""
    from . import hub

    if name not in HUB_MODELS:
        raise ModelError(f"{name!r} is not a hub model ({', '.join(HUB_MODELS)})")
    fetched = hub.fetch_official(revision)
    config = official_config()
    state = fetched.tensors.to_state(config)
    parts = tuple(p for p in PARTS if any(k.split(".", 1)[0] == p for k in state))
    extra = {
        "name": name,
        "source": f"https://huggingface.co/{hub.REPO_ID}",
        "source_files": "; ".join(fetched.files),
        "revision": fetched.commit,
        "license": LICENSE,
        "attribution": ATTRIBUTION,
    }
    target = cached_path(name, revision)
    write_model(target, state, config, official_model_id(state, config), parts, extra)
    print(ATTRIBUTION, file=sys.stderr)
    return target


def resolve_model(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A model file path, or a name: ``default`` (shipped) or ``magenta-rt`` (fetched once from
    the Hub at ``revision``, default ``main``, then read from the cache with no request)."""
    p = Path(name_or_path)
    name = str(name_or_path)
    if revision is not None and name not in HUB_MODELS:
        raise ModelError(f"a revision applies to hub models ({', '.join(HUB_MODELS)}), not {name}")
    if p.is_file():
        return p
    if name in HUB_MODELS:
        cached = cached_path(name, revision)
        return cached if cached.is_file() else fetch_hub_model(name, revision)
    builtin = MODELS_DIR / f"{name}.safetensors"
    if builtin.is_file():
        return builtin
    if name == DEFAULT_MODEL:
        raise ModelError(
            "no default model is installed with this package; pass --model magenta-rt or "
            "--model PATH (a .safetensors from `spectrostream export` or `convert-official`)"
        )
    if p.exists():  # a folder or a device (/dev/null); checked after the names, which win
        raise ModelError(f"{name_or_path}: {not_a_file(p)}; --model takes a model file or name")
    if p.suffix or "/" in name:
        raise ModelError(f"{name_or_path}: no such model file")
    raise ModelError(f"unknown model {name!r}; named models: {', '.join(NAMED_MODELS)}")


def model_attribution(model_id: str) -> str | None:
    """The attribution a codec's output carries, known from its model id alone."""
    return ATTRIBUTION if model_id.startswith(MODEL_ID_PREFIX) else None


@dataclass(frozen=True)
class ModelListing:
    name: str
    description: str
    license: str
    path: Path | None  # None: not on this machine yet
    size_bytes: int | None
    revision: str | None


def list_models() -> list[ModelListing]:
    """The named models and every copy of them on this machine (no network)."""
    out = []
    for m in NAMED_MODELS.values():
        if m.name in HUB_MODELS:
            paths = sorted(cache_dir().glob(f"{m.name}@*.safetensors"))
        else:
            paths = [p for p in [MODELS_DIR / f"{m.name}.safetensors"] if p.is_file()]
        for path in paths or [None]:
            revision = read_metadata(path).get("revision") if path is not None else None
            size = path.stat().st_size if path is not None else None
            out.append(ModelListing(m.name, m.description, m.license, path, size, revision))
    return out


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (no tensors read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable safetensors model ({e})") from e
