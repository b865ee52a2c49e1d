"""One stream of the shipped default alone in its process: int8 + compiled steps, 40 ms each.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/stream_alone.py [--steps 400] [--fp32] [--model M]
Prints the p50 and mean step time (encoder push + decoder push, all 64 levels) over ``--steps``
steps after 10 warm-up steps, as a user's stream runs (no other model in the process, its own
weights in the caches). ``bench/speed.py`` gives the side-by-side numbers.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
from speed import cpu_info  # bench/speed.py, beside this file

from spectrostream import load
from spectrostream.codec import int8_calibration_path, read_int8_calibration
from spectrostream.config import SAMPLES_PER_CODE
from spectrostream.int8 import quantize_int8
from spectrostream.model import StreamingDecoder, StreamingEncoder
from spectrostream.weights import MODELS_DIR


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--fp32", action="store_true", help="float32 convolutions instead of int8")
    p.add_argument(
        "--model",
        type=Path,
        default=MODELS_DIR / "default.safetensors",
        help="a .safetensors file with its int8 calibration beside it (default: the shipped one)",
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model = load(args.model).model.eval()
    if not args.fp32:
        quantize_int8(model, read_int8_calibration(int8_calibration_path(args.model)))
    n, warm = SAMPLES_PER_CODE, 10
    audio = 0.1 * torch.randn(
        1, 2, (args.steps + warm) * n, generator=torch.Generator().manual_seed(1)
    )
    times = []
    with (
        torch.inference_mode(),
        StreamingEncoder(model, compiled=True) as enc,
        StreamingDecoder(model, compiled=True) as dec,
    ):
        for i in range(args.steps + warm):
            t = time.perf_counter()
            dec.push(enc.push(audio[..., i * n : (i + 1) * n]))
            if i >= warm:
                times.append(time.perf_counter() - t)
    times.sort()
    p50, mean = times[len(times) // 2], sum(times) / len(times)
    kind = "fp32" if args.fp32 else "int8"
    print(
        f"{kind}, compiled, 1 thread: step p50 {1e3 * p50:.2f} ms, mean {1e3 * mean:.2f} ms, "
        f"stream RTF {0.04 / mean:.2f}x on {cpu_info()['cpu']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
