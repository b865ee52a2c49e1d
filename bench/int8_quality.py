"""int8 quality against float32: ViSQOL (speech mode, lattice model) and SNR, per rate.

For every clip of ``--data`` (first ``--max-seconds`` of each) the model codes the clip once in
float32 and once with ``load(int8=True)`` (all levels; a lower rate keeps a prefix of the
levels, as the bitstream does) and decodes each at 4, 8 and 16 kbps. Reported per rate:
  * ViSQOL of each against the original clip (the shipped model: "within 0.05 of float32");
  * ViSQOL of int8 against the float32 output as the reference, with the float32 output
    against itself (the ceiling) beside it: the view for the official architecture on the
    parity fixture's random weights, whose output is not music;
  * SNR (dB) of the int8 decoded audio against the float32 decoded audio (all clips pooled).
``--decoder-only`` decodes the float32 encoder's codes with the int8 decoder: the decoder's
error alone, without code changes (on random weights a changed code is a different random
vector, so whole-codec output is not comparable there).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/int8_quality.py --model default
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/int8_quality.py --model official.safetensors \\
        --max-seconds 5 --no-original

Writes JSON (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from spectrostream import audio_io, load
from spectrostream.evaluation.metrics import VisqolScorer

ROOT = Path(__file__).resolve().parents[1]
RATES_KBPS = (4, 8, 16)


def clips(data: Path, max_seconds: float | None) -> list[tuple[str, torch.Tensor]]:
    out = []
    for f in sorted(p for p in data.iterdir() if audio_io.is_audio_file_name(p)):
        audio, _ = audio_io.read_audio(f, sample_rate=48000)
        if max_seconds:
            audio = audio[:, : int(48000 * max_seconds)]
        out.append((f.stem, torch.from_numpy(audio).float()))
    return out


def decode_at_rates(
    codec, audio: torch.Tensor, codes: torch.Tensor | None = None
) -> dict[int, torch.Tensor]:
    """[C, T] -> {kbps: decoded [C, T]}: encoded once at all levels (unless ``codes`` are
    given), decoded per rate."""
    codes = codec.encode(audio, 48000) if codes is None else codes  # [1, L, N]
    out = {}
    for kbps in RATES_KBPS:
        n = codec.levels_for(kbps)
        out[kbps] = codec.decode(codes[:, :n], length=audio.shape[-1])[0]
    return out


def mean_visqol(scorer: VisqolScorer, ref: torch.Tensor, est: torch.Tensor) -> float:
    return statistics.fmean(scorer.speech(ref.numpy(), est.numpy(), 48000))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "eval")
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--no-original", action="store_true", help="skip ViSQOL against the clip")
    p.add_argument(
        "--decoder-only",
        action="store_true",
        help="int8 decodes the float32 encoder's codes (the decoder's error alone)",
    )
    p.add_argument(
        "--int8-calibration",
        action="append",
        help="calibration file(s) to compare, repeatable (default: the one beside the model)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    fp = load(args.model, device="cpu")
    qs = {str(c): load(args.model, device="cpu", int8=c) for c in args.int8_calibration or [True]}
    scorer = VisqolScorer()
    rows = {c: {k: {} for k in RATES_KBPS} for c in qs}
    signal = {c: dict.fromkeys(RATES_KBPS, 0.0) for c in qs}
    noise = {c: dict.fromkeys(RATES_KBPS, 0.0) for c in qs}
    t0, load0 = time.time(), os.getloadavg()[0]
    for name, audio in clips(args.data, args.max_seconds):
        codes = fp.encode(audio, 48000)
        y32 = decode_at_rates(fp, audio, codes)
        ceiling = {k: mean_visqol(scorer, y32[k], y32[k]) for k in RATES_KBPS}
        fp_clip = {}
        if not args.no_original:
            fp_clip = {k: mean_visqol(scorer, audio, y32[k]) for k in RATES_KBPS}
        for c, q in qs.items():
            y8 = decode_at_rates(q, audio, codes if args.decoder_only else None)
            for k in RATES_KBPS:
                r = rows[c][k]
                signal[c][k] += float(y32[k].double().square().sum())
                noise[c][k] += float((y8[k].double() - y32[k].double()).square().sum())
                r.setdefault("int8_vs_fp32_ref", []).append(mean_visqol(scorer, y32[k], y8[k]))
                r.setdefault("fp32_vs_fp32_ref", []).append(ceiling[k])
                if fp_clip:
                    r.setdefault("fp32_vs_clip", []).append(fp_clip[k])
                    r.setdefault("int8_vs_clip", []).append(mean_visqol(scorer, audio, y8[k]))
        print(f"{name}: done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    result = {
        "model": args.model,
        "model_id": fp.model_id,
        "clips": len(rows[next(iter(qs))][RATES_KBPS[0]]["int8_vs_fp32_ref"]),
        "max_seconds": args.max_seconds,
        "decoder_only": args.decoder_only,
        "visqol": "speech mode, lattice model, per channel, mean over channels and clips",
        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.time() - t0, 1),
        "calibrations": {c: summarize(rows[c], signal[c], noise[c]) for c in qs},
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    print_table(result["calibrations"])
    return 0


def summarize(rows: dict, signal: dict, noise: dict) -> dict:
    """Per rate: the mean of each ViSQOL column and the pooled SNR (dB) of int8 vs fp32."""
    return {
        k: {
            **{m: round(statistics.fmean(v), 4) for m, v in rows[k].items()},
            "snr_db_int8_vs_fp32": round(10 * math.log10(signal[k] / max(noise[k], 1e-30)), 2),
        }
        for k in RATES_KBPS
    }


def print_table(calibrations: dict) -> None:
    print(
        "| int8 calibration | kbps | ViSQOL fp32 | ViSQOL int8 | diff "
        "| int8 vs fp32 output | fp32 vs itself | SNR dB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c, rates in calibrations.items():
        for k, r in rates.items():
            a, b = r.get("fp32_vs_clip"), r.get("int8_vs_clip")
            diff = f"{b - a:+.3f}" if a is not None else "-"
            fa, fb = (f"{a:.3f}", f"{b:.3f}") if a is not None else ("-", "-")
            print(
                f"| {c} | {k} | {fa} | {fb} | {diff} | {r['int8_vs_fp32_ref']:.3f} "
                f"| {r['fp32_vs_fp32_ref']:.3f} | {r['snr_db_int8_vs_fp32']:.1f} |"
            )


if __name__ == "__main__":
    raise SystemExit(main())
