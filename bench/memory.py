"""Peak memory of encoding (and decoding) a long stereo file with the CLI, in a subprocess.

    python bench/memory.py --minutes 60 --config official

Writes a synthetic stereo FLAC (tones + noise, 44.1 kHz so the resampler is exercised), saves a
randomly initialised model of the chosen config (random weights: the cost is the same as trained
ones; never shipped), runs `spectrostream encode` and `decode` under /usr/bin/time -v-like
accounting (resource.getrusage of the child, plus a trace of its RSS every 10 s written to
WORKDIR/encode_trace.json) and prints peak RSS and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]


def write_long_file(path: Path, minutes: float, sr: int = 44100) -> None:
    rng = np.random.default_rng(0)
    block = sr * 10
    total = int(minutes * 60 * sr)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=2, format="FLAC") as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / sr
            left = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(n)
            right = 0.2 * np.sin(2 * np.pi * 330 * t) + 0.02 * rng.standard_normal(n)
            f.write(np.stack([left, right], 1).astype(np.float32))


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run(cmd: list[str], trace_file: Path | None = None, sample_s: float = 10.0) -> dict:
    """Run a child, sampling its RSS (and peak) every ``sample_s`` seconds into a trace."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.time()
    child = subprocess.Popen(cmd, env=env)
    trace = []
    while child.poll() is None:
        time.sleep(sample_s)
        rss, hwm = _status_kib(child.pid, "VmRSS"), _status_kib(child.pid, "VmHWM")
        if rss is not None:
            trace.append(
                {"t_s": round(time.time() - t0, 1), "rss_mib": rss / 1024, "peak_mib": hwm / 1024}
            )
            if trace_file is not None:
                trace_file.write_text(json.dumps(trace))
    if child.returncode != 0:
        raise SystemExit(f"{cmd} failed with {child.returncode}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "wall_s": time.time() - t0,
        "peak_rss_mib": peak_kib / 1024,
        "samples": len(trace),
        "trace_file": str(trace_file) if trace_file else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--config", default="official", choices=["official", "small", "tiny"])
    ap.add_argument("--levels", type=int, default=32)
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import spectrostream as ss

    cfg = {"official": ss.official_config, "small": ss.small_config, "tiny": ss.tiny_config}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ss-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    audio = work / "long.flac"
    if not audio.exists():
        write_long_file(audio, args.minutes)
    model = work / f"{args.config}.safetensors"
    torch.manual_seed(0)
    ss.Codec(ss.SpectroStream(cfg[args.config]())).save(model)
    exe = [sys.executable, "-m", "spectrostream"]
    result = {
        "config": args.config,
        "minutes": args.minutes,
        "levels": args.levels,
        "load_avg": os.getloadavg(),
    }
    result["encode"] = run(
        [
            *exe,
            "encode",
            str(audio),
            str(work / "long.ssc"),
            "--levels",
            str(args.levels),
            "--model",
            str(model),
        ],
        trace_file=work / "encode_trace.json",
    )
    if not args.skip_decode:
        # ru_maxrss of children is the max over all children so far: decode runs after encode,
        # so report it only if it exceeds the encode peak.
        result["decode"] = run(
            [*exe, "decode", str(work / "long.ssc"), str(work / "out.flac"), "--model", str(model)],
            trace_file=work / "decode_trace.json",
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
