"""Tokenization and decode throughput (audio-seconds per second) on a GPU, or on the CPU as a smoke test.

For each combination of batch size, eager vs ``torch.compile``, fp32 vs bf16 and NCHW vs
channels_last, through the public Codec path that ``spectrostream tokenize`` uses:
  * tokenize: ``codec.encode_clips`` of ``batch`` clips of ``--seconds`` each (all 64 levels),
    including the host <-> device copies of audio and codes;
  * decode: ``codec.decode`` of the same codes;
both as audio-seconds per wall second (best of ``--repeats`` after one warm-up), with the
fraction of codes equal to the eager fp32 codes of the same batch (exactly 1 means identical).
Random weights (speed does not depend on their values) unless ``--model``.

``--agreement DIR`` instead measures how often codes from reduced-precision convolutions differ
from fp32 codes, per RVQ level, on the audio files below DIR (real music: ../shared/eval).

    python bench/gpu_speed.py --smoke                                  # CPU, seconds
    python bench/gpu_speed.py --device cuda --config official          # the GPU table
    python bench/gpu_speed.py --agreement ../shared/eval --model default --dtypes bf16,fp16

Prints a markdown table and writes JSON (``--out``, default bench/results/gpu_speed_<device>.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spectrostream import codec as codec_mod
from spectrostream.codec import Codec, load
from spectrostream.config import official_config, small_config, tiny_config
from spectrostream.device import resolve_device
from spectrostream.files import read_for_model
from spectrostream.model import SpectroStream
from spectrostream.tokenize import list_audio

CONFIGS = {"official": official_config, "small": small_config, "tiny": tiny_config}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_codec(args: argparse.Namespace, dtype: str, channels_last: bool, compiled: bool) -> Codec:
    if args.model:
        codec = load(args.model, device=args.device, dtype=dtype)
    else:
        torch.manual_seed(0)
        codec = Codec(SpectroStream(CONFIGS[args.config]())).to(args.device, dtype)
    for net in (codec.model.encoder, codec.model.decoder):
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if compiled:
            # The streaming layers' state handling splits the graph per layer, and layers of one
            # class see several shapes: allow more recompiles than the default 8.
            torch._dynamo.config.recompile_limit = 64
            net.compile()
    return codec


def timed(fn, device: torch.device, repeats: int, warmup: int) -> tuple[float, float, object]:
    """(first call's wall time, best of ``repeats`` calls after ``warmup`` calls, last result)."""
    t = time.perf_counter()
    out = fn()
    sync(device)
    first = time.perf_counter() - t
    for _ in range(warmup - 1):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return first, best, out


def clips_for(batch: int, seconds: float, channels: int) -> list[np.ndarray]:
    rng = np.random.default_rng(batch)
    n = int(seconds * 48000)
    t = np.arange(n) / 48000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    return [
        (tone + 0.05 * rng.standard_normal((channels, n))).astype(np.float32) for _ in range(batch)
    ]


def run_case(args, dtype: str, channels_last: bool, compiled: bool, reference: dict) -> list[dict]:
    device = resolve_device(args.device)
    codec = make_codec(args, dtype, channels_last, compiled)
    levels = codec.num_levels
    rows = []
    for batch in args.batches:
        clips = clips_for(batch, args.seconds, codec.channels)
        audio_s = batch * args.seconds
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            # torch.compile compiles during the first calls (several shapes per streaming run).
            warm = 3 if compiled else 1
            enc_first, enc_s, codes = timed(
                lambda c=clips, b=batch: codec.encode_clips(c, levels, b),
                device,
                args.repeats,
                warm,
            )
            stacked = torch.stack(codes)
            dec_first, dec_s, _ = timed(
                lambda s=stacked: codec.decode(s), device, args.repeats, warm
            )
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "dtype": dtype, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        key = batch
        if dtype == "fp32" and not compiled and not channels_last:
            reference[key] = stacked
        ref = reference.get(key)
        rows.append(
            {
                "batch": batch,
                "mode": "compile" if compiled else "eager",
                "dtype": dtype,
                "channels_last": channels_last,
                "first_call_s": {"tokenize": enc_first, "decode": dec_first},
                "tokenize_audio_s_per_s": audio_s / enc_s,
                "decode_audio_s_per_s": audio_s / dec_s,
                "codes_equal_to_eager_fp32": None
                if ref is None
                else float((ref == stacked).float().mean()),
                "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30
                if device.type == "cuda"
                else None,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def machine(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_1m": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def speed(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    cases = itertools.product(args.modes, args.dtypes, args.layouts)
    # The eager fp32 NCHW case first: the others are compared with its codes.
    cases = sorted(cases, key=lambda c: (c != ("eager", "fp32", "nchw"), c))
    reference: dict = {}
    rows = []
    for mode, dtype, layout in cases:
        rows += run_case(args, dtype, layout == "channels_last", mode == "compile", reference)
    return {"machine": machine(device), "config": args.model or args.config, "rows": rows}


def latents(codec: Codec, clips: list[np.ndarray]) -> list[torch.Tensor]:
    """The encoder's output for each clip, as ``encode`` quantizes it ([1, D, frames])."""
    pad = codec_mod.SAMPLES_PER_CODE
    with torch.inference_mode():
        return [
            codec.model.encode_embeddings(
                torch.nn.functional.pad(torch.as_tensor(x)[None].to(codec.device), (0, pad))
            ).float()
            for x in clips
        ]


def rvq_error(codec: Codec, codes: list[np.ndarray], target: list[torch.Tensor]) -> list[float]:
    """||target - embed(codes[:l])|| / ||target|| over all clips, for l = 1..levels."""
    err = np.zeros(codec.num_levels)
    cb = codec.codebooks
    for c, z in zip(codes, target, strict=True):
        residual = z[0].clone()  # [D, frames]
        for lv in range(codec.num_levels):
            residual -= cb[lv][torch.as_tensor(c[lv]).to(cb.device)].T
            err[lv] += float(residual.square().sum())
    total = sum(float(z.square().sum()) for z in target)
    return np.sqrt(err / total).tolist()


def agreement(args: argparse.Namespace) -> dict:
    """Per RVQ level: fraction of code frames equal to fp32's over all files below the folder, and
    how well each set of codes approximates the fp32 latent."""
    ref = load(args.model or "default", device=args.device)
    names = list_audio(args.agreement)
    clips = [read_for_model(Path(args.agreement) / n, ref.channels)[0] for n in names]
    want = ref.encode_clips(clips, ref.num_levels, batch_size=1)
    z32 = latents(ref, clips)
    out = {"machine": machine(ref.device), "model": ref.model_id, "files": names}
    out["fp32"] = {"rvq_error": rvq_error(ref, want, z32)}
    frames = sum(w.shape[1] for w in want)
    for dtype in args.dtypes:
        if dtype == "fp32":
            continue
        codec = load(args.model or "default", device=args.device, dtype=dtype)
        t = time.perf_counter()
        got = codec.encode_clips(clips, codec.num_levels, batch_size=1)
        elapsed = time.perf_counter() - t
        same = torch.cat([g == w for g, w in zip(got, want, strict=True)], 1).numpy()
        prefix = np.cumprod(same, axis=0)  # frame agrees on levels 1..l
        zd = latents(codec, clips)
        diff = sum(float((a - b).square().sum()) for a, b in zip(zd, z32, strict=True))
        out[dtype] = {
            "frames": frames,
            "level_equal": same.mean(axis=1).tolist(),
            "prefix_equal": prefix.mean(axis=1).tolist(),
            "latent_rel_diff": (diff / sum(float(z.square().sum()) for z in z32)) ** 0.5,
            "rvq_error": rvq_error(ref, got, z32),
            "encode_s": elapsed,
        }
    return out


def table(result: dict) -> str:
    lines = [
        (
            "| batch | mode | dtype | channels_last | tokenize audio-s/s | decode audio-s/s | "
            "codes = eager fp32 | peak GiB |"
        ),
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['batch']} | | {r['dtype']} | | {r['error']} | | | |")
            continue
        eq = r["codes_equal_to_eager_fp32"]
        peak = r["peak_gib"]
        lines.append(
            f"| {r['batch']} | {r['mode']} | {r['dtype']} | {r['channels_last']} | "
            f"{r['tokenize_audio_s_per_s']:.1f} | {r['decode_audio_s_per_s']:.1f} | "
            f"{'-' if eq is None else f'{eq:.4f}'} | {'-' if peak is None else f'{peak:.1f}'} |"
        )
    return "\n".join(lines)


def agreement_table(result: dict) -> str:
    """Per level l: codes equal to fp32's at level l, on all of levels 1..l, and the relative
    error of the fp32 latent approximated by levels 1..l of each set of codes."""
    dtypes = [d for d in result if isinstance(result[d], dict) and "level_equal" in result[d]]
    head = "| level | fp32 codes: latent error | " + " | ".join(
        f"{d}: equal at l | {d}: equal on 1..l | {d} codes: latent error" for d in dtypes
    )
    lines = [head + " |", "|---:|---:|" + "---:|---:|---:|" * len(dtypes)]
    for lv in [1, 2, 4, 8, 12, 16, 32, 48, 64]:
        if lv > len(result["fp32"]["rvq_error"]):
            continue
        cells = [f"{result['fp32']['rvq_error'][lv - 1]:.4f}"] + [
            f"{result[d]['level_equal'][lv - 1]:.4f} | {result[d]['prefix_equal'][lv - 1]:.4f} | "
            f"{result[d]['rvq_error'][lv - 1]:.4f}"
            for d in dtypes
        ]
        lines.append(f"| {lv} | " + " | ".join(cells) + " |")
    diffs = ", ".join(f"{d} {result[d]['latent_rel_diff']:.4f}" for d in dtypes)
    return "\n".join(lines) + f"\n\nlatent relative difference from fp32: {diffs}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--config", choices=sorted(CONFIGS), default="official")
    p.add_argument("--model", help="a model file or name instead of random weights")
    p.add_argument("--seconds", type=float, help="length of each clip (default 10)")
    p.add_argument("--batches", help="batch sizes, comma-separated (default 1,8,32,64)")
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument("--repeats", type=int, help="timed calls, best taken (default 2)")
    p.add_argument("--chunk-seconds", type=float, help="audio per streaming step (default 2)")
    p.add_argument("--smoke", action="store_true", help="tiny config, small sizes (CPU test)")
    p.add_argument("--agreement", metavar="DIR", help="measure bf16/fp16 vs fp32 codes instead")
    p.add_argument("--out", help="JSON output path")
    args = p.parse_args(argv)
    # --smoke: the tiny config and small sizes, unless given explicitly.
    defaults = {"seconds": 10.0, "batches": "1,8,32,64", "repeats": 2}
    if args.smoke:
        args.config, defaults = "tiny", {"seconds": 1.0, "batches": "1,4", "repeats": 1}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.modes, args.dtypes = args.modes.split(","), args.dtypes.split(",")
    args.layouts = args.layouts.split(",")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.chunk_seconds:
        codec_mod.CHUNK_SAMPLES = int(args.chunk_seconds * 48000)
    device = resolve_device(args.device).type
    if args.agreement:
        result = agreement(args)
        print(agreement_table(result))
        default_out = f"bench/results/gpu_code_agreement_{device}.json"
    else:
        result = speed(args)
        print(table(result))
        default_out = f"bench/results/gpu_speed_{device}{'_smoke' if args.smoke else ''}.json"
    out = Path(args.out or default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
