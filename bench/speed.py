"""CPU inference speed: real-time factor of offline and streaming coding, per-step latency.

Measures, for one model config with random weights (speed does not depend on the values):
  * offline encode (audio -> codes, all levels) and offline decode (codes -> audio) of
    ``--seconds`` of stereo audio, as the real-time factor RTF = audio seconds / wall seconds
    (> 1 is faster than real time);
  * streaming: one 40 ms step = push 1920 samples into the streaming encoder, push the code
    frame it returns into the streaming decoder (the codec's 40 ms step mode); per-step latency
    p50/p90/p99 and RTF = 40 ms / mean step time;
  * achieved GFLOP/s (conv and matmul FLOPs counted once with torch's FlopCounterMode) next to
    a 2048 x 2048 fp32 matmul measured in the same process just before and after, which says
    how much of the CPU this process actually got (other jobs may share the machine);
  * the 1-minute load average before and after.

    python bench/speed.py --config official --threads 1
    python bench/speed.py --config small --threads 2 --no-prepack   # stock PyTorch conv path
Prints a JSON object and a markdown table row; writes the JSON to ``--out`` (default
bench/results/speed_<config>_t<threads>[_<options>].json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from spectrostream import layers
from spectrostream.config import SAMPLES_PER_CODE, official_config, small_config
from spectrostream.model import SpectroStream, StreamingDecoder, StreamingEncoder

STEP_S = SAMPLES_PER_CODE / 48000  # 40 ms
CONFIGS = {"official": official_config, "small": small_config}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def matmul_gflops(n: int = 2048, reps: int = 3) -> float:
    """Best-of fp32 GEMM throughput in this process right now (contention-aware reference)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def count_flops(model: SpectroStream, seconds: float = 2.0) -> tuple[float, float]:
    """(encoder, decoder) FLOPs per second of stereo audio (convs and matmuls; grad mode on so
    the stock aten ops are the ones counted)."""
    audio = torch.randn(1, model.config.audio_channels, int(48000 * seconds)) * 0.1
    with torch.enable_grad(), FlopCounterMode(display=False) as fc:
        emb = model.encode_embeddings(audio)
        model.quantizer.encode(emb.detach())
    enc = fc.get_total_flops()
    codes = model.quantizer.encode(emb.detach())
    with torch.enable_grad(), FlopCounterMode(display=False) as fc:
        model.decode(codes)
    return enc / seconds, fc.get_total_flops() / seconds


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def bench_offline(model: SpectroStream, audio: torch.Tensor, repeats: int) -> dict[str, list]:
    enc_t, dec_t = [], []
    codes = model.encode(audio)  # warm-up (also packs weights for this shape)
    model.decode(codes)
    for _ in range(repeats):
        t = time.perf_counter()
        codes = model.encode(audio)
        enc_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        model.decode(codes)
        dec_t.append(time.perf_counter() - t)
    return {"encode_s": enc_t, "decode_s": dec_t}


def bench_stream(model: SpectroStream, audio: torch.Tensor, warmup: int) -> dict[str, list]:
    steps = audio.shape[-1] // SAMPLES_PER_CODE
    enc_t, dec_t = [], []
    with StreamingEncoder(model) as enc, StreamingDecoder(model) as dec:
        for i in range(steps):
            block = audio[..., i * SAMPLES_PER_CODE : (i + 1) * SAMPLES_PER_CODE]
            t0 = time.perf_counter()
            codes = enc.push(block)
            t1 = time.perf_counter()
            dec.push(codes)
            t2 = time.perf_counter()
            enc_t.append(t1 - t0)
            dec_t.append(t2 - t1)
    return {"encode_s": enc_t[warmup:], "decode_s": dec_t[warmup:]}


def summarize(r: dict, audio_s: float, flops: tuple[float, float]) -> dict:
    fe, fd = flops
    off_e, off_d = r["offline"]["encode_s"], r["offline"]["decode_s"]
    se, sd = r["stream"]["encode_s"], r["stream"]["decode_s"]
    step = [a + b for a, b in zip(se, sd, strict=True)]
    mean_step = statistics.fmean(step)
    return {
        "offline_encode_rtf_best": audio_s / min(off_e),
        "offline_encode_rtf_median": audio_s / statistics.median(off_e),
        "offline_decode_rtf_best": audio_s / min(off_d),
        "offline_decode_rtf_median": audio_s / statistics.median(off_d),
        "offline_encode_gflops": fe * audio_s / min(off_e) / 1e9,
        "offline_decode_gflops": fd * audio_s / min(off_d) / 1e9,
        "stream_step_ms_p50": 1e3 * pct(step, 0.5),
        "stream_step_ms_p90": 1e3 * pct(step, 0.9),
        "stream_step_ms_p99": 1e3 * pct(step, 0.99),
        "stream_step_ms_min": 1e3 * min(step),
        "stream_encode_ms_p50": 1e3 * pct(se, 0.5),
        "stream_decode_ms_p50": 1e3 * pct(sd, 0.5),
        "stream_rtf_mean": STEP_S / mean_step,
        "stream_rtf_p50": STEP_S / pct(step, 0.5),
        "stream_gflops_p50": (fe + fd) * STEP_S / pct(step, 0.5) / 1e9,
        "stream_real_time_p99": pct(step, 0.99) < STEP_S,
        "stream_steps_measured": len(step),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="official")
    p.add_argument("--seconds", type=float, default=10.0, help="audio length (default 10)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=3, help="offline repetitions (default 3)")
    p.add_argument("--warmup-steps", type=int, default=5, help="streaming steps not timed")
    p.add_argument(
        "--no-prepack",
        action="store_true",
        help="stock conv path (oneDNN reorders weights on every call)",
    )
    p.add_argument("--no-inference-mode", action="store_true", help="torch.no_grad instead")
    p.add_argument("--no-mkldnn", action="store_true", help="disable oneDNN (native convs)")
    p.add_argument("--skip-offline", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seconds < 1 or args.threads < 1:
        print("--seconds must be >= 1 and --threads >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    layers.PREPACK_CPU = not args.no_prepack
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    torch.manual_seed(0)
    model = SpectroStream(CONFIGS[args.config]()).eval()
    flops = count_flops(model)

    steps = max(int(args.seconds / STEP_S), args.warmup_steps + 10)
    audio = 0.1 * torch.randn(1, model.config.audio_channels, steps * SAMPLES_PER_CODE)
    audio_s = audio.shape[-1] / 48000
    load0, ref0 = os.getloadavg(), matmul_gflops()
    ctx = torch.no_grad() if args.no_inference_mode else torch.inference_mode()
    raw: dict = {}
    with ctx:
        if not args.skip_offline:
            raw["offline"] = bench_offline(model, audio, args.repeats)
        raw["stream"] = bench_stream(model, audio, args.warmup_steps)
    ref1, load1 = matmul_gflops(), os.getloadavg()
    if args.skip_offline:
        raw["offline"] = {"encode_s": [float("nan")], "decode_s": [float("nan")]}

    opts = [
        o
        for o, on in (
            ("noprepack", args.no_prepack),
            ("nograd", args.no_inference_mode),
            ("nomkldnn", args.no_mkldnn),
        )
        if on
    ]
    result = {
        "config": args.config,
        "threads": args.threads,
        "options": opts,
        "audio_seconds": audio_s,
        "machine": {
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            "flags": cpu_flags(),
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "load_avg_1m": [round(load0[0], 2), round(load1[0], 2)],
        "matmul2048_gflops": [round(ref0, 1), round(ref1, 1)],
        "model_gflop_per_audio_s": {"encoder": flops[0] / 1e9, "decoder": flops[1] / 1e9},
        **summarize(raw, audio_s, flops),
    }
    out = args.out or Path(__file__).parent / "results" / (
        f"speed_{args.config}_t{args.threads}" + "".join(f"_{o}" for o in opts) + ".json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps(result, indent=1, default=float))
    r = result
    print(
        f"| {args.config} | {args.threads} | {', '.join(opts) or 'default'} "
        f"| {r['offline_encode_rtf_best']:.2f} | {r['offline_decode_rtf_best']:.2f} "
        f"| {r['stream_step_ms_p50']:.0f} / {r['stream_step_ms_p90']:.0f} / "
        f"{r['stream_step_ms_p99']:.0f} | {r['stream_rtf_mean']:.2f} "
        f"| {r['stream_gflops_p50']:.0f} | {r['matmul2048_gflops'][0]:.0f}-"
        f"{r['matmul2048_gflops'][1]:.0f} | {r['load_avg_1m'][0]:.1f}-{r['load_avg_1m'][1]:.1f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
