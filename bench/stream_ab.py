"""The shipping speed gate: two models' streams, alternated, each alone in its own process.

    PYTHONPATH=src python bench/stream_ab.py CANDIDATE.safetensors [--base MODEL] [--rounds 5]

Runs ``bench/stream_alone.py`` (int8 + compiled steps, one thread, a calibration file beside
each model) for the base model (default: the shipped one) and the candidate in turn,
``--rounds`` times, and prints each run's real-time factor and both medians. Exit status 1 when
the candidate's median is more than ``--max-slowdown`` (default 5%) below the base's: a model
can be slower than its architecture says (default v3's long outlier codewords once made its
stream 3x slower; docs/benchmarks.md). Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from speed import cpu_info  # bench/speed.py, beside this file

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parent / "src" / "spectrostream" / "models" / "default.safetensors"


def one_run(model: Path, steps: int) -> float:
    """Real-time factor of one ``stream_alone.py`` run of ``model``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HERE / "stream_alone.py"), "--steps", str(steps), "--model"]
    out = subprocess.run(
        [*cmd, str(model)], env=env, capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"stream RTF ([0-9.]+)x", out)
    if found is None:
        raise RuntimeError(f"no RTF in the output of {model}: {out[-300:]}")
    return float(found.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("candidate", type=Path)
    p.add_argument("--base", type=Path, default=DEFAULT)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--max-slowdown", type=float, default=0.05)
    args = p.parse_args()
    runs: dict[str, list[float]] = {"base": [], "candidate": []}
    for r in range(args.rounds):
        for name, model in (("base", args.base), ("candidate", args.candidate)):
            runs[name].append(one_run(model, args.steps))
            print(f"round {r + 1} {name}: {runs[name][-1]:.2f}x", flush=True)
    base, cand = (statistics.median(runs[k]) for k in ("base", "candidate"))
    print(f"on {cpu_info()['cpu']} (the host matters: docs/benchmarks.md, round 5)")
    ok = cand >= (1.0 - args.max_slowdown) * base
    print(f"median: base {base:.2f}x, candidate {cand:.2f}x -> {'pass' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
