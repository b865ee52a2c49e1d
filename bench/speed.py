"""CPU inference speed, side by side in one process: real-time factors and per-step latency.

For one model (``--config official|small`` with random weights: speed does not depend on the
values; ``default`` = the shipped model) and one thread count, measured interleaved so that
every variant sees the same machine load:
  * offline (the plain functional forward over the whole clip, the compute-bound reference):
    ``model.encode`` / ``model.decode`` of ``--seconds`` of stereo, now and at the baseline
    revision;
  * streaming, one 40 ms step = push 1920 samples into the streaming encoder, push the code
    frame into the streaming decoder (all 64 levels): this code ("now"), the code at
    ``--baseline-rev`` ("baseline", imported from git as a separate package), and the ONNX
    Runtime step graphs (``spectrostream export-onnx``) with the same PyTorch STFT, RVQ and
    iSTFT around them ("onnxruntime"). Steps rotate through the variants (every step, or every
    ``--block-steps`` steps: a stream's steps back to back, as in use). Optional:
    ``--compiled`` (``compiled=True`` streams, inductor step graphs; with ``--int8`` also the
    int8 model compiled), ``--fp32-search`` (the
    float32 torch RVQ search instead of the exact CPU one), ``--overlap`` (encoder step of
    block j + 1 and decoder step of block j in two threads of one intra-op thread each, also
    with compiled steps if ``--compiled``), ``--tower-split`` (the two audio channels' tower
    layers in two threads); with ``--threads`` > 1 and either, also "now" on one thread;
  * a 2048 x 2048 fp32 matmul before and after (what this process could get of the CPU) and
    the 1-minute load average.

    python bench/speed.py --config official --threads 1
RTF = audio seconds / wall seconds (> 1 is faster than real time); streaming RTF = 40 ms / mean
step. Prints JSON and markdown rows; writes bench/results/speed_<config>_t<threads>.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# isort: off
import spectrostream  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
import torch

# isort: on
from torch.utils.flop_counter import FlopCounterMode

from spectrostream import load, quantizer
from spectrostream.config import SAMPLES_PER_CODE, official_config, small_config, tiny_config
from spectrostream.decoder import LookaheadTrim
from spectrostream.dsp import ISTFT, STFT
from spectrostream.model import SpectroStream, StreamingDecoder, StreamingEncoder
from spectrostream.streaming import set_streaming

STEP_S = SAMPLES_PER_CODE / 48000  # 40 ms
ROOT = Path(__file__).resolve().parents[1]


def build_model(name: str) -> SpectroStream:
    if name == "default":
        return load().model.eval()
    torch.manual_seed(0)
    if name == "tiny":  # the same op count per step with almost no compute: the overhead floor
        return SpectroStream(tiny_config(num_levels=64, codebook_size=1024)).eval()
    cfg = official_config() if name == "official" else small_config()
    return SpectroStream(cfg).eval()


def cpu_info() -> dict:
    name, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = sorted(
                    f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma"))
                )
    except OSError:
        pass
    return {"cpu": name, "logical_cpus": os.cpu_count(), "flags": flags}


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
    """(encoder, decoder) FLOPs per second of stereo audio (convs and matmuls)."""
    audio = torch.randn(1, model.config.audio_channels, int(48000 * seconds)) * 0.1
    with torch.enable_grad(), FlopCounterMode(display=False) as fc:
        emb = model.encode_embeddings(audio)
        model.quantizer.encode(emb.detach())
    enc = fc.get_total_flops()
    codes = model.quantizer.encode(emb.detach())
    with torch.enable_grad(), FlopCounterMode(display=False) as fc:
        model.decode(codes)
    return enc / seconds, fc.get_total_flops() / seconds


# ---- variants: each is an object with step(block) and offline(audio) ---------------------
class Now:
    name = "now"
    threads: int | None = None  # intra-op threads for this variant (None: --threads)
    compiled = False  # StreamingEncoder / StreamingDecoder(..., compiled=True)

    def __init__(self, model: SpectroStream) -> None:
        self.model = model
        self.enc, self.dec = self._open()

    def _open(self) -> tuple[StreamingEncoder, StreamingDecoder]:
        c = self.compiled
        return StreamingEncoder(self.model, compiled=c), StreamingDecoder(self.model, compiled=c)

    def step(self, block: torch.Tensor) -> None:
        self.dec.push(self.enc.push(block))

    def offline(self, audio: torch.Tensor) -> tuple[float, float]:
        self.enc.close(), self.dec.close()  # one stream per model: reopened below
        t0 = time.perf_counter()
        codes = self.model.encode(audio)
        t1 = time.perf_counter()
        self.model.decode(codes)
        t2 = time.perf_counter()
        self.enc, self.dec = self._open()
        return t1 - t0, t2 - t1


class Fp32Search(Now):
    """This code with the float32 torch RVQ search instead of the exact CPU search."""

    name = "now, fp32 torch RVQ"

    def step(self, block: torch.Tensor) -> None:
        quantizer.EXACT_CPU_SEARCH = False
        try:
            super().step(block)
        finally:
            quantizer.EXACT_CPU_SEARCH = True


class Compiled(Now):
    """StreamingEncoder / StreamingDecoder with ``compiled=True`` (inductor step graphs)."""

    name = "compiled"
    compiled = True


class Overlap(Now):
    """Two threads of one intra-op thread each: the decoder step of block j runs in a worker
    thread while the encoder step of block j + 1 runs here (torch ops release the GIL)."""

    name = "overlap 1+1"
    threads = 1

    def __init__(self, model: SpectroStream) -> None:
        super().__init__(model)
        self.pool = ThreadPoolExecutor(1, initializer=_worker_init)
        self.pending: torch.Tensor | None = None

    def _decode(self, codes: torch.Tensor) -> None:
        with torch.inference_mode():
            self.dec.push(codes)

    def step(self, block: torch.Tensor) -> None:
        job = None if self.pending is None else self.pool.submit(self._decode, self.pending)
        self.pending = self.enc.push(block)
        if job is not None:
            job.result()

    def offline(self, audio: torch.Tensor) -> tuple[float, float]:
        self.pending = None
        return super().offline(audio)


class TowerSplit(Now):
    """The two audio channels' towers (the per-channel encoder and decoder layers) in two
    threads of one intra-op thread each: channel 0 here, channel 1 in a worker on a replica of
    the tower layers (shared weights, its own streaming state); the joint layers, RVQ, STFT and
    iSTFT here. Batch 1, stereo."""

    name = "tower split 1+1"
    threads = 1

    def __init__(self, model: SpectroStream) -> None:
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        self.replica = copy.deepcopy(model, memo=shared)  # the same weight tensors
        self.pool = ThreadPoolExecutor(1, initializer=_worker_init)
        for name in ("encoder", "decoder"):
            part, twin = getattr(model, name), getattr(self.replica, name)
            part.towers = self._split(type(part).towers.__get__(part), twin.towers)
        super().__init__(model)

    def _split(self, own: Callable, twin: Callable) -> Callable:
        def towers(x: torch.Tensor) -> torch.Tensor:
            job = self.pool.submit(self._in_worker, twin, x[1:2])
            y0 = own(x[0:1])
            return torch.cat([y0, job.result()], 0)

        return towers

    @staticmethod
    def _in_worker(fn: Callable, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fn(x)

    def _open(self) -> tuple[StreamingEncoder, StreamingDecoder]:
        for part in (self.replica.encoder, self.replica.decoder):
            set_streaming(part, False)
            set_streaming(part, True)
        return super()._open()


class OverlapCompiled(Overlap):
    name = "overlap 1+1, compiled"
    compiled = True


def _worker_init() -> None:
    torch.set_num_threads(1)


class Int8(Now):
    """int8 convolutions (``spectrostream.int8``) with a calibration file: by default the
    shipped model's (its ranges and float32 layers; layer names are the same in every config
    and ranges do not change the speed, so ``default`` gets exactly what ``load(int8=True)``
    does). ``name`` tells variants with different calibrations apart."""

    def __init__(self, model: SpectroStream, calibration: Path | None = None, name: str = "int8"):
        from spectrostream.codec import int8_calibration_path, read_int8_calibration
        from spectrostream.int8 import quantize_int8
        from spectrostream.weights import MODELS_DIR

        path = calibration or int8_calibration_path(MODELS_DIR / "default.safetensors")
        q = copy.deepcopy(model)
        quantize_int8(q, read_int8_calibration(path))
        self.name = name
        super().__init__(q)


class Int8Compiled(Int8):
    """The int8 model with compiled steps (inductor fuses the input quantization)."""

    compiled = True

    def __init__(self, model: SpectroStream) -> None:
        super().__init__(model, name="int8, compiled")


def import_baseline(rev: str) -> tuple[object, object]:
    """The package at git revision ``rev`` as ``spectrostream_baseline`` (a temp copy):
    (its model module, its config module)."""
    tmp = Path(tempfile.mkdtemp(prefix="ss_baseline_"))
    tar = tmp / "src.tar"
    with tar.open("wb") as f:
        subprocess.run(["git", "archive", rev, "src/spectrostream"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(tmp, filter="data")
    (tmp / "src" / "spectrostream").rename(tmp / "spectrostream_baseline")
    sys.path.insert(0, str(tmp))
    return (
        importlib.import_module("spectrostream_baseline.model"),
        importlib.import_module("spectrostream_baseline.config"),
    )


def baseline_config(config: object, old_config: object) -> object:
    """This config as the baseline revision's ModelConfig (``num_levels`` was ``num_quantizers``
    before d248180)."""
    d = dataclasses.asdict(config)
    names = {f.name for f in dataclasses.fields(old_config.ModelConfig)}
    if "num_levels" not in names:
        d["num_quantizers"] = d.pop("num_levels")
    return old_config.ModelConfig(**{k: v for k, v in d.items() if k in names})


class Baseline(Now):
    name = "baseline"

    def __init__(self, model: SpectroStream, rev: str) -> None:
        old, old_config = import_baseline(rev)
        m = old.SpectroStream(baseline_config(model.config, old_config)).eval()
        m.load_state_dict(model.state_dict())
        self.old, self.model = old, m
        self.enc, self.dec = old.StreamingEncoder(m), old.StreamingDecoder(m)

    def offline(self, audio: torch.Tensor) -> tuple[float, float]:
        self.enc.close(), self.dec.close()
        t0 = time.perf_counter()
        codes = self.model.encode(audio)
        t1 = time.perf_counter()
        self.model.decode(codes)
        t2 = time.perf_counter()
        self.enc, self.dec = (
            self.old.StreamingEncoder(self.model),
            self.old.StreamingDecoder(self.model),
        )
        return t1 - t0, t2 - t1


class Onnx:
    """ONNX Runtime step graphs, with this package's STFT, RVQ and iSTFT around them."""

    name = "onnxruntime"

    def __init__(self, model: SpectroStream, threads: int) -> None:
        import onnxruntime as ort

        from spectrostream.codec import Codec
        from spectrostream.onnx_export import export_onnx

        d = Path(tempfile.mkdtemp(prefix="ss_onnx_"))
        export_onnx(Codec(model), d)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = [
            ort.InferenceSession(str(d / f"{p}_step.onnx"), opts) for p in ("encoder", "decoder")
        ]
        self.names = [[i.name for i in s.get_inputs()] for s in self.sess]
        self.state = [[torch.zeros(i.shape).numpy() for i in s.get_inputs()[1:]] for s in self.sess]
        self.q = model.quantizer
        self.stft, self.trim, self.istft = STFT(), LookaheadTrim(4), ISTFT()
        for m in (self.stft, self.trim, self.istft):
            set_streaming(m, True)
        self.pending: torch.Tensor | None = None

    def _run(self, k: int, x: torch.Tensor) -> torch.Tensor:
        out = self.sess[k].run(None, dict(zip(self.names[k], [x.numpy(), *self.state[k]])))
        self.state[k] = out[1:]
        return torch.from_numpy(out[0])

    def step(self, block: torch.Tensor) -> None:
        spec = self.stft(block)
        if self.pending is not None:
            spec = torch.cat([self.pending, spec], 3)
        self.pending = spec[..., 4:, :] if spec.shape[3] > 4 else None
        if spec.shape[3] < 4:
            self.pending = spec
            return
        emb = self._run(0, spec[..., :4, :].contiguous())
        deq = self.q.decode(self.q.encode(emb))
        self.istft(self.trim(self._run(1, deq.contiguous())))

    def offline(self, audio: torch.Tensor) -> tuple[float, float]:
        return float("nan"), float("nan")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def summarize(step: list[float], off: list[tuple[float, float]], audio_s: float, gf: float) -> dict:
    enc = [e for e, _ in off]
    dec = [d for _, d in off]
    mean = statistics.fmean(step)
    return {
        "offline_encode_rtf": audio_s / min(enc) if off else None,
        "offline_decode_rtf": audio_s / min(dec) if off else None,
        "offline_roundtrip_rtf": audio_s / min(e + d for e, d in off) if off else None,
        "stream_step_ms_p50": 1e3 * pct(step, 0.5),
        "stream_step_ms_p90": 1e3 * pct(step, 0.9),
        "stream_step_ms_p99": 1e3 * pct(step, 0.99),
        "stream_rtf_mean": STEP_S / mean,
        "stream_gflops_p50": gf * STEP_S / pct(step, 0.5) / 1e9,
        "steps": len(step),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=("official", "small", "default", "tiny"), default="official")
    p.add_argument("--seconds", type=float, default=6.0, help="audio length (default 6)")
    p.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads")
    p.add_argument("--repeats", type=int, default=2, help="offline repetitions (default 2)")
    p.add_argument("--warmup-steps", type=int, default=4, help="streaming steps not timed")
    p.add_argument(
        "--block-steps",
        type=int,
        default=1,
        help="consecutive steps of one variant before the next (1: rotate every step; 25: "
        "1 s of audio, as one stream runs, with its own weights in the caches)",
    )
    p.add_argument("--baseline-rev", default="d34264d", help="git revision; 'none' to skip")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--int8", action="store_true", help="add the int8 variant")
    p.add_argument("--compiled", action="store_true", help="add the compiled-step variant")
    p.add_argument("--fp32-search", action="store_true", help="add the float32 RVQ variant")
    p.add_argument(
        "--tower-split", action="store_true", help="add the two-thread stereo tower split variant"
    )
    p.add_argument(
        "--overlap",
        action="store_true",
        help="add the two-thread overlap variant (and, with --threads > 1, 'now' on 1 thread)",
    )
    p.add_argument(
        "--int8-calibration",
        type=Path,
        action="append",
        help="int8 variant(s) with these calibration files (repeatable; names int8:<stem>)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.block_steps < 1:
        p.error("--block-steps must be at least 1")
    return args


def build_variants(args: argparse.Namespace, model: SpectroStream) -> list:
    """The variants the flags ask for, "now" first."""
    ort = [] if args.no_onnx else [Onnx(model, args.threads)]  # built before streams open
    int8 = [Int8(model)] if args.int8 else []
    int8 += [Int8(model, c, f"int8:{c.name}") for c in args.int8_calibration or []]
    int8 += [Int8Compiled(model)] if args.int8 and args.compiled else []
    one_thread = args.threads > 1 and (args.overlap or args.tower_split)
    extra = args.compiled + args.fp32_search + args.tower_split
    extra += (1 + args.compiled) * args.overlap + one_thread
    copies = [copy.deepcopy(model) for _ in range(extra)]
    variants: list = [Now(model)]
    if args.baseline_rev != "none":
        variants.append(Baseline(model, args.baseline_rev))
    variants += ort + int8
    if args.compiled:
        variants.append(Compiled(copies.pop()))
    if args.fp32_search:
        variants.append(Fp32Search(copies.pop()))
    if args.tower_split:
        variants.append(TowerSplit(copies.pop()))
    if args.overlap:
        variants.append(Overlap(copies.pop()))
        if args.compiled:
            variants.append(OverlapCompiled(copies.pop()))
    if one_thread:
        one = Now(copies.pop())
        one.name, one.threads = "now, 1 thread", 1
        variants.append(one)
    return variants


def time_variants(
    args: argparse.Namespace, variants: list, audio: torch.Tensor, steps: int
) -> tuple[dict[str, list[float]], dict[str, list[tuple[float, float]]]]:
    """Offline rounds, then streaming steps, rotating through the variants (every
    ``--block-steps`` steps) -> (step seconds, offline (encode, decode) seconds) per variant."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    offline: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
    with torch.inference_mode():
        for r in range(args.repeats + 1):  # the first round is a warm-up
            for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
                torch.set_num_threads(getattr(v, "threads", None) or args.threads)
                t = v.offline(audio)
                if r and t[0] == t[0]:
                    offline[v.name].append(t)
        total, run = args.warmup_steps + steps, args.block_steps
        for start in range(0, total, run):
            k = (start // run) % len(variants)
            for v in variants[k:] + variants[:k]:
                torch.set_num_threads(getattr(v, "threads", None) or args.threads)
                for i in range(start, min(start + run, total)):
                    j = i % steps
                    block = audio[..., j * SAMPLES_PER_CODE : (j + 1) * SAMPLES_PER_CODE]
                    t = time.perf_counter()
                    v.step(block)
                    if i >= args.warmup_steps:
                        times[v.name].append(time.perf_counter() - t)
    torch.set_num_threads(args.threads)
    return times, offline


def print_rows(result: dict) -> None:
    """The markdown rows of docs/benchmarks.md."""
    ref0, ref1 = result["matmul2048_gflops"]
    load0, load1 = result["load_avg_1m"]
    for name, r in result["variants"].items():
        off = (
            f"{r['offline_encode_rtf']:.2f} | {r['offline_decode_rtf']:.2f}"
            if r["offline_encode_rtf"]
            else "- | -"
        )
        print(
            f"| {result['config']} | {result['threads']} | {name} | {off} "
            f"| {r['stream_step_ms_p50']:.1f} / {r['stream_step_ms_p90']:.1f} / "
            f"{r['stream_step_ms_p99']:.1f} | **{r['stream_rtf_mean']:.2f}** "
            f"| {r['stream_gflops_p50']:.0f} | {ref0:.0f}-{ref1:.0f} "
            f"| {load0:.1f}-{load1:.1f} |"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seconds < 1 or args.threads < 1:
        print("--seconds must be >= 1 and --threads >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    model = build_model(args.config)
    fe, fd = count_flops(model)
    variants = build_variants(args, model)
    steps = max(int(args.seconds / STEP_S), 10)
    g = torch.Generator().manual_seed(1)
    audio = 0.1 * torch.randn(1, model.config.audio_channels, steps * SAMPLES_PER_CODE, generator=g)
    audio_s = audio.shape[-1] / 48000
    load0, ref0 = os.getloadavg(), matmul_gflops()
    times, offline = time_variants(args, variants, audio, steps)
    ref1, load1 = matmul_gflops(), os.getloadavg()
    result = {
        "config": args.config,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "baseline_rev": args.baseline_rev,
        "block_steps": args.block_steps,
        "audio_seconds": audio_s,
        "machine": {**cpu_info(), "torch": torch.__version__},
        "load_avg_1m": [round(load0[0], 2), round(load1[0], 2)],
        "matmul2048_gflops": [round(ref0, 1), round(ref1, 1)],
        "model_gflop_per_audio_s": {"encoder": fe / 1e9, "decoder": fd / 1e9},
        "variants": {
            v.name: summarize(times[v.name], offline[v.name], audio_s, fe + fd) for v in variants
        },
    }
    out = args.out or ROOT / "bench" / "results" / f"speed_{args.config}_t{args.threads}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print_rows(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
