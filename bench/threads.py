"""Thread defaults side by side: is spectrostream's default ever slower than one thread?

Each variant runs in its own process (the OpenMP wait policy is read when torch loads OpenMP),
and the variants alternate round by round so that they see the same machine load:
  * ``omp1``: OMP_NUM_THREADS=1 (the reference);
  * ``default``: nothing set: ``import spectrostream`` sets OMP_WAIT_POLICY=PASSIVE and
    ``runtime.set_threads()`` (what ``load()`` and the CLI call) picks the count;
  * ``t2-passive``: ``--threads 2`` with the package's passive wait policy;
  * ``t2-spin``: two threads with libgomp's default (spinning) wait, i.e. torch's default
    before this change (OMP_WAIT_POLICY set empty, so the package does not override it).
Workload per process: offline encode + decode of ``--seconds`` and 25 streaming 40 ms steps.

    python bench/threads.py --config small --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import spectrostream, torch
from spectrostream import load, runtime
from spectrostream.config import official_config, small_config
from spectrostream.model import SpectroStream, StreamingDecoder, StreamingEncoder
config, seconds, threads = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if config == "default":
    model = load().model.eval()  # load() applies the default (or the explicit choice)
else:
    torch.manual_seed(0)
    model = SpectroStream(official_config() if config == "official" else small_config()).eval()
runtime.set_threads(None if threads == "auto" else int(threads))
x = 0.1 * torch.randn(1, 2, int(48000 * seconds))
with torch.inference_mode():
    model.decode(model.encode(x[..., :9600]))
    t = time.perf_counter()
    model.decode(model.encode(x))
    off = time.perf_counter() - t
    steps = []
    with StreamingEncoder(model) as enc, StreamingDecoder(model) as dec:
        for i in range(29):
            t = time.perf_counter()
            dec.push(enc.push(x[..., i * 1920 : (i + 1) * 1920]))
            steps.append(time.perf_counter() - t)
print(json.dumps({"threads": torch.get_num_threads(), "offline_s": off, "steps_s": steps[4:]}))
"""

VARIANTS = {
    "omp1": ({"OMP_NUM_THREADS": "1"}, "auto"),
    "default": ({}, "auto"),
    "t2-passive": ({}, "2"),
    "t2-spin": ({"OMP_WAIT_POLICY": ""}, "2"),
}


def run(name: str, config: str, seconds: float) -> dict:
    extra, threads = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env |= extra | {"PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, config, str(seconds), threads],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=("official", "small", "default"), default="default")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    res: dict[str, list[dict]] = {n: [] for n in VARIANTS}
    loads = [os.getloadavg()[0]]
    names = list(VARIANTS)
    for r in range(args.rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            res[n].append(run(n, args.config, args.seconds))
            loads.append(os.getloadavg()[0])
    summary = {}
    for n, runs in res.items():
        steps = [s for r in runs for s in r["steps_s"]]
        summary[n] = {
            "threads": runs[0]["threads"],
            "offline_rtf_median": args.seconds / statistics.median(r["offline_s"] for r in runs),
            "stream_step_ms_median": 1e3 * statistics.median(steps),
            "stream_rtf_mean": 0.04 / statistics.fmean(steps),
        }
    result = {
        "config": args.config,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_avg_1m": [min(loads), max(loads)],
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "variants": summary,
    }
    out = args.out or ROOT / "bench" / "results" / f"threads_{args.config}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    for n, s in summary.items():
        print(
            f"| {args.config} | {n} | {s['threads']} | {s['offline_rtf_median']:.2f} "
            f"| {s['stream_step_ms_median']:.1f} | {s['stream_rtf_mean']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
