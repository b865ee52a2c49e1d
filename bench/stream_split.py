"""One stream, one thread against ``split_towers=True`` (a tower per thread), alternating.

    PYTHONPATH=src python bench/stream_split.py [--config official] [--steps 60] [--rounds 3] \
        [--int8 CALIBRATION.json]
Each round runs ``--steps`` 40 ms steps (encoder push + decoder push, all 64 levels, after 5
warm-up steps) of a fresh stream without, then with, the split; each run is a new process
(``--one VARIANT``), so neither inherits the other's threads or caches. Random weights for
``official`` and ``small`` (speed does not depend on them); ``default`` is the shipped model.
Prints step p50 per run and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings

import torch

VARIANTS = ("one thread", "split towers")


def run_one(config: str, steps: int, split: bool, int8: str | None) -> float:
    from spectrostream import load
    from spectrostream.codec import read_int8_calibration
    from spectrostream.config import SAMPLES_PER_CODE, official_config, small_config
    from spectrostream.int8 import quantize_int8
    from spectrostream.model import SpectroStream, StreamingDecoder, StreamingEncoder

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if config == "default":
        model = load().model.eval()
    else:
        cfg = official_config() if config == "official" else small_config()
        model = SpectroStream(cfg).eval()
    if int8:  # the layers a calibration names (speed does not depend on its ranges)
        quantize_int8(model, read_int8_calibration(int8))
    n, warm = SAMPLES_PER_CODE, 5
    audio = 0.1 * torch.randn(1, 2, (steps + warm) * n, generator=torch.Generator().manual_seed(1))
    times = []
    with (
        torch.inference_mode(),
        StreamingEncoder(model, split_towers=split) as enc,
        StreamingDecoder(model, split_towers=split) as dec,
    ):
        for i in range(steps + warm):
            t = time.perf_counter()
            dec.push(enc.push(audio[..., i * n : (i + 1) * n]))
            if i >= warm:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="official", choices=["official", "small", "default"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--int8", help="an int8 calibration file: int8 convolutions as it says")
    p.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(run_one(args.config, args.steps, args.one == VARIANTS[1], args.int8))
        return 0
    got: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps)]
            cmd += ["--int8", args.int8] if args.int8 else []
            out = subprocess.run([*cmd, "--one", v], capture_output=True, text=True, check=True)
            got[v].append(float(out.stdout.split()[-1]))
            print(f"round {r + 1}, {v}: step p50 {1e3 * got[v][-1]:.1f} ms", flush=True)
    for v in VARIANTS:
        med = statistics.median(got[v])
        print(f"{args.config}, {v}: median step {1e3 * med:.1f} ms, stream {0.04 / med:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
