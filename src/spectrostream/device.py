"""Where and in which precision the codec runs: device and dtype names, exact fp32 for the RVQ.

``--device auto|cpu|cuda|mps`` and ``--dtype fp32|bf16|fp16`` resolve here; asking for a device
this machine lacks is a ``ModelError`` (exit status 2 on the command line), never an assertion.

The nearest-code search always runs in IEEE float32: TensorFloat-32 (CUDA) and reduced-precision
oneDNN matmuls would move near-ties between codes. ``exact_fp32`` turns them off for the enclosed
calls and restores the caller's settings afterwards; in fp32 mode the convolutions get the same
treatment, so fp32 codes do not depend on global precision switches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import ModelError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda[:N]"``, ``"mps"`` -> a device.

    Raises ModelError when the device is not available here.
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible CUDA device"
            raise ModelError(
                f"device {device!r} asked for, but CUDA is not available (torch "
                f"{torch.__version__}: {build}); use --device cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif dev.type == "mps" and not _mps_available():
        raise ModelError(f"device {device!r} asked for, but MPS (Apple GPU) is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unsupported device {device!r}; use one of {', '.join(DEVICES)}")
    return dev


def rank_device(device: str) -> str:
    """Under torchrun (LOCAL_RANK set) with CUDA, ``auto``/``cuda`` name this rank's own GPU."""
    local = os.environ.get("LOCAL_RANK")
    if local is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(local)}"
    return device


def resolve_dtype(dtype: str | torch.dtype | None = "fp32") -> torch.dtype:
    """``"fp32"``/``"bf16"``/``"fp16"`` (or the torch dtype) -> the convolutions' compute dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif str(dtype) in DTYPES:
        return DTYPES[str(dtype)]
    raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def _precision_knobs(device: torch.device, convs: bool) -> list[object]:
    """The backend objects whose ``fp32_precision`` decides how fp32 matmuls/convs compute
    (torch >= 2.9; absent ones are skipped)."""
    b = torch.backends
    names = {"cuda": (b.cuda, b.cudnn), "cpu": (b.mkldnn, b.mkldnn)}.get(device.type)
    if names is None:
        return []
    knobs = [getattr(names[0], "matmul", None)] + (
        [getattr(names[1], "conv", None)] if convs else []
    )
    return [k for k in knobs if k is not None and hasattr(k, "fp32_precision")]


@contextmanager
def exact_fp32(device: torch.device, convs: bool) -> Iterator[None]:
    """IEEE float32 matmuls (and convs if ``convs``) on ``device`` inside the block.

    Settings not already IEEE are set (cuDNN convs default to TF32; "none" inherits a parent
    setting, which may be TF32) and put back on exit, through the ``fp32_precision`` API only.
    """
    changed = []
    for knob in _precision_knobs(device, convs):
        old = knob.fp32_precision
        if old != "ieee":
            knob.fp32_precision = "ieee"
            changed.append((knob, old))
    try:
        yield
    finally:
        for knob, old in reversed(changed):
            knob.fp32_precision = old
