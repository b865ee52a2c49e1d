"""``spectrostream export-onnx MODEL -o DIR``: the encoder and decoder step graphs as ONNX.

Writes ``encoder_step.onnx`` and/or ``decoder_step.onnx`` (the halves the model holds) and
``steps.json``, which lists each graph's inputs and outputs with their shapes. Inputs are
``x`` then ``state_0 .. state_{n-1}``; outputs ``y`` then ``new_state_0 ..``: feed the new
states back at the next step, zeros at the first (see spectrostream.step for the shapes and what
stays outside the graphs: STFT, iSTFT, look-ahead trim and the RVQ search).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .atomic import atomic_path
from .errors import OutputError
from .step import NetworkStep, decoder_step, encoder_step

if TYPE_CHECKING:
    from .codec import Codec

OPSET = 17


def export_step(step: NetworkStep, path: Path) -> dict:
    """Writes ``step`` to ``path`` (atomically); returns its input/output description."""
    n = len(step.state_shapes)
    inputs = ["x", *(f"state_{i}" for i in range(n))]
    outputs = ["y", *(f"new_state_{i}" for i in range(n))]
    args = (torch.zeros(step.example_shape), *step.initial_state())
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            step,
            args,
            tmp,
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            opset_version=OPSET,
        )
    with torch.no_grad():
        y = step(*args)[0]
    return {
        "file": path.name,
        "inputs": {"x": list(step.example_shape)}
        | {f"state_{i}": list(s) for i, s in enumerate(step.state_shapes)},
        "outputs": {"y": list(y.shape)}
        | {f"new_state_{i}": list(s) for i, s in enumerate(step.state_shapes)},
        "state_layers": step.state_names,
    }


def export_onnx(codec: Codec, out_dir: str | Path) -> list[Path]:
    """Exports the step graphs of the halves ``codec`` holds into ``out_dir`` (created)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"{out}: exists and is not a directory; -o names a directory for the graphs"
        )
    out.mkdir(parents=True, exist_ok=True)
    model = codec.model.eval()
    meta: dict = {"opset": OPSET, "config": codec.config.to_dict(), "model_id": codec.model_id}
    written = []
    for part, make in (("encoder", encoder_step), ("decoder", decoder_step)):
        if part in codec.parts:
            meta[part] = export_step(make(model), out / f"{part}_step.onnx")
            written.append(out / f"{part}_step.onnx")
    with atomic_path(out / "steps.json") as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))
    return [*written, out / "steps.json"]


def run(args: argparse.Namespace) -> int:
    from .codec import load

    for path in export_onnx(load(args.model), args.output):
        print(path)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="encoder/decoder step graphs as ONNX (fixed shapes)")
    p.add_argument("model", help="model .safetensors or a built-in name (default)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.set_defaults(func=run)
