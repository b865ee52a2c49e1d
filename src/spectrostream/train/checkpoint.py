"""One-file training checkpoints, written atomically, loaded with ``weights_only=True``.

A checkpoint ``RUN_DIR/checkpoints/step_XXXXXXXX.pt`` is a dict:
    format "spectrostream-train", version, step,
    train_config / model_config (JSON strings),
    generator, discriminator, quantizer_ema (state dicts of the unwrapped modules),
    opt_g, opt_d (optimizer state dicts),
    rng {torch, cuda, numpy, python} as tensors, data {step} (the sampler position).
It is written to a temporary file in the same folder, fsynced, then renamed over the final
name (``os.replace``), so a process killed mid-write leaves only a stray ``.tmp`` file and the
previous checkpoints intact. The newest ``keep`` checkpoints are kept.

Each checkpoint has a sidecar ``step_XXXXXXXX.pt.sha256`` (``sha256sum`` format, written before
the checkpoint is renamed into place) that loading verifies, so a flipped byte in the tensor
data is an error instead of silently corrupted weights; resuming falls back to the newest
intact checkpoint with a warning (:func:`load_latest_intact`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "spectrostream-train"
VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (never temporary files), oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to ``path.tmp<pid>``, fsync, write the sha256 sidecar, rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        with atomic_path(checksum_path(path)) as side:
            Path(side).write_text(f"{_sha256(tmp)}  {path.name}\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    # Make the rename itself durable.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (with step) as the newest checkpoint, then prune all but ``keep``."""
    state = {"format": FORMAT, "version": VERSION, **state}
    path = checkpoint_path(run_dir, int(state["step"]))
    for stale in checkpoint_dir(run_dir).glob("step_*.pt.tmp*") if path.parent.is_dir() else ():
        stale.unlink()  # left by a killed writer; never a complete checkpoint
    save_atomic(state, path)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()
        checksum_path(old).unlink(missing_ok=True)
    return path


def verify_checkpoint(path: Path) -> None:
    """Compare a checkpoint with its sha256 sidecar (a warning if it has none: older runs)."""
    side = checksum_path(path)
    if not side.is_file():
        if path.is_file():
            log.warning("%s has no checksum file (%s); loading it unverified", path, side.name)
        return
    fields = side.read_text().split()
    want = fields[0] if fields else ""
    got = _sha256(path)
    if got != want:
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is corrupted (sha256 {got[:16]}..., "
            f"{side.name} says {want[:16]}...)"
        )


def _check_zip_magic(path: Path) -> None:
    """A checkpoint is a torch zip archive; anything else (audio, ``.ssc``) is refused up front."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _ZIP_MAGIC:
        raise CheckpointError(f"{path} is not a spectrostream training checkpoint (not a zip file)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A verified checkpoint (see :func:`verify_checkpoint`), loaded with weights_only=True."""
    p = Path(path)
    if p.is_file():
        _check_zip_magic(p)
        verify_checkpoint(p)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint not found: {p}") from e
    except pickle.UnpicklingError as e:  # torch's advice (weights_only=False) is not ours
        raise CheckpointError(
            f"cannot read checkpoint {p}: it holds objects other than tensors and plain data, "
            "which are never unpickled"
        ) from e
    except Exception as e:  # torch's messages run to many lines: keep the first
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"cannot read checkpoint {p} ({type(e).__name__}: {first}); remove it to fall back "
            "to an earlier one"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a spectrostream training checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{p}: checkpoint version {state.get('version')} != {VERSION}")
    return state


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def load_latest_intact(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that verifies and loads; a warning for each newer one skipped."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoints in {checkpoint_dir(run_dir)}")
    for _, path in reversed(found):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s; falling back to an older one", path.name, e)
    raise CheckpointError(f"no intact checkpoint in {checkpoint_dir(run_dir)} (all failed checks)")


def describe_latest(run_dir: str | Path) -> str:
    """A true sentence about the newest checkpoint, for messages when a run stops."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return "No checkpoint was written before this."
    return f"The newest checkpoint, {latest}, was written before this and is unaffected."


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (-> its newest checkpoint)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"no checkpoints in {checkpoint_dir(p)}")
        return latest
    raise CheckpointError(f"no such run folder or checkpoint: {p}")


# ---- RNG state as tensors (weights_only-loadable) --------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, current CUDA device, numpy, python)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.zeros(0),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_version),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # RNG states must be CPU byte tensors, whatever map_location the checkpoint was read with.
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"].numel():
        if not torch.cuda.is_available():
            raise CheckpointError("checkpoint has CUDA RNG state but CUDA is not available")
        torch.cuda.set_rng_state(state["cuda"].cpu())
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    random.setstate(
        (
            state["python_version"],
            tuple(int(v) for v in state["python_internal"].tolist()),
            state["python_gauss"],
        )
    )
