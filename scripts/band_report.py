"""Per-band diagnosis of what a model gets right: level, phase and instantaneous frequency.

    OMP_NUM_THREADS=1 python scripts/band_report.py MODEL [MODEL ...] \
        [--data ../shared/eval] [--clips guitar,contrabassoon,...] [--seconds 6] [--kbps 16]

For each model and clip (first channel pair, first ``--seconds``), coded at ``--kbps``, on the
codec's own STFT (960 / 480, Hann), per band (edges in Hz below), weighted by the input's bin
magnitudes:
  level  output / input band energy in dB (0 is right);
  phase  mean cos(angle Y - angle X): 1 = the waveform matches, 0 = unrelated phases;
  IF     mean cos of the difference in phase advance per hop (instantaneous frequency): 1 =
         partials at the right frequencies even where the absolute phase is off;
and the harmonic fine-structure correlation (``spectrostream.metrics.harmonic_correlation``).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from spectrostream import audio_io, load
from spectrostream.config import N_FFT, SAMPLE_RATE
from spectrostream.metrics import harmonic_correlation
from spectrostream.train.losses import codec_stft

EDGES_HZ = (0, 250, 500, 1000, 2000, 4000, 8000, 16000, 24000)  # the top band shows a low-pass
CLIPS = "guitar,contrabassoon,harpsichord,moonlight,sopr,vibe_ace"


def band_rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float, float]]:
    """(level dB, phase cos, IF cos) per band of EDGES_HZ."""
    zx, zy = codec_stft(x[None]), codec_stft(y[None])  # [C, 481, frames]
    hz = SAMPLE_RATE / N_FFT
    rows = []
    for lo, hi in itertools.pairwise(EDGES_HZ):
        bx, by = zx[:, round(lo / hz) : round(hi / hz)], zy[:, round(lo / hz) : round(hi / hz)]
        w = bx.abs()
        level = 10 * torch.log10(by.abs().square().sum() / bx.abs().square().sum())
        phase = (torch.cos(by.angle() - bx.angle()) * w).sum() / w.sum()
        adv_x = (bx[..., 1:] * bx[..., :-1].conj()).angle()
        adv_y = (by[..., 1:] * by[..., :-1].conj()).angle()
        inst = (torch.cos(adv_y - adv_x) * w[..., 1:]).sum() / w[..., 1:].sum()
        rows.append((float(level), float(phase), float(inst)))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--data", type=Path, default=Path("../shared/eval"))
    p.add_argument("--clips", default=CLIPS, help="comma-separated clip stems")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--kbps", type=float, default=16.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    bands = " ".join(f"{lo}-{hi}" for lo, hi in itertools.pairwise(EDGES_HZ))
    for name in args.models:
        codec = load(name)
        print(f"## {name} ({codec.model_id}), {args.kbps} kbps; bands (Hz): {bands}")
        print("clip | harmonic | level dB / phase cos / IF cos per band")
        for stem in args.clips.split(","):
            audio, _ = audio_io.read_audio(args.data / f"{stem}.flac", sample_rate=SAMPLE_RATE)
            x = torch.from_numpy(np.ascontiguousarray(audio[:2, : int(args.seconds * SAMPLE_RATE)]))
            y = codec.decode(codec.encode(x, SAMPLE_RATE, kbps=args.kbps), length=x.shape[-1])
            y = y.reshape(x.shape).float()
            harm = float(harmonic_correlation(x, y).mean())
            cells = "  ".join(f"{lv:+5.1f}/{ph:+.2f}/{fi:+.2f}" for lv, ph, fi in band_rows(x, y))
            print(f"{stem} | {harm:+.3f} | {cells}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
