"""What does ViSQOL hear in a model's output: magnitude or phase, envelope or fine structure?

    OMP_NUM_THREADS=1 python scripts/visqol_oracle.py [MODEL] [--data ../shared/eval] \
        [--seconds 6] [--kbps 16]

For each clip (first ``--seconds``), the model's decoded audio Y and the original X are taken
apart in an STFT (periodic Hann 1024, hop 256) and recombined; every variant is scored with
ViSQOL speech (lattice) against the original, per channel, and the means over clips printed:

  codec                      Y itself
  X mag + Y phase            |X| e^(i angle Y)
  Y mag + X phase            |Y| e^(i angle X)
  X mag + random phase       |X| e^(i U), U uniform
  X envelope + X phase       |X| smoothed over 9 bins (power), original phase: no partials
  Y + static EQ              Y times the per-clip mean third-octave gain |X| / |Y| (oracle)
  X + Y band energies        X times Y's third-octave band gains, frame by frame
  Y + X band energies        Y times X's third-octave band gains, frame by frame (oracle)
  Y + X bands at 50 ms       the same, gains smoothed over 9 frames
  Y + X 1/6-octave bands     Y times X's band gains in sixth-octave bands, frame by frame
  Y + X 1/12-octave bands    the same in twelfth-octave bands

docs/training.md ("Round 5") has the table for default v2 and what it means.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from spectrostream import audio_io, load
from spectrostream.config import SAMPLE_RATE
from spectrostream.evaluation.metrics import VisqolScorer
from spectrostream.metrics import octave_bands

N, HOP = 1024, 256
WINDOW = np.hanning(N + 1)[:-1]


def stft(x: np.ndarray) -> np.ndarray:
    """[T] -> [frames, N / 2 + 1], the signal padded by N on both sides."""
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (N, N)), N)[::HOP]
    return np.fft.rfft(frames * WINDOW, axis=-1)


def istft(spec: np.ndarray, length: int) -> np.ndarray:
    """Weighted overlap-add inverse of :func:`stft`, trimmed to ``length``."""
    frames = np.fft.irfft(spec, n=N, axis=-1) * WINDOW
    out = np.zeros((spec.shape[0] - 1) * HOP + N)
    norm = np.zeros_like(out)
    for i, frame in enumerate(frames):
        out[i * HOP : i * HOP + N] += frame
        norm[i * HOP : i * HOP + N] += WINDOW**2
    return (out / np.maximum(norm, 1e-8))[N : N + length]


def band_gains(num: np.ndarray, den: np.ndarray, per_octave: int = 3) -> np.ndarray:
    """Per frame and 1 / per_octave octave band sqrt(E_num / E_den), over the band's bins."""
    bands = octave_bands(N, per_octave=per_octave).numpy()  # [bins, bands]
    e_num = (np.abs(num) ** 2) @ bands + 1e-12
    e_den = (np.abs(den) ** 2) @ bands + 1e-12
    return np.sqrt(e_num / e_den) @ bands.T + (bands.sum(1) == 0)  # DC bin: gain 1


def smooth(a: np.ndarray, width: int, axis: int) -> np.ndarray:
    kernel = np.ones(width) / width
    return np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), axis, a)


def variants(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One channel's recombinations (module docstring), each [T]."""
    sx, sy, n = stft(x), stft(y), x.shape[0]
    phase_x, phase_y = np.exp(1j * np.angle(sx)), np.exp(1j * np.angle(sy))
    g = band_gains(sx, sy)
    log_g = np.log(g)
    return {
        "codec": y,
        "X mag + Y phase": istft(np.abs(sx) * phase_y, n),
        "Y mag + X phase": istft(np.abs(sy) * phase_x, n),
        "X mag + random phase": istft(np.abs(sx) * np.exp(2j * np.pi * rng.random(sx.shape)), n),
        "X envelope + X phase": istft(np.sqrt(smooth(np.abs(sx) ** 2, 9, 1)) * phase_x, n),
        "Y + static EQ": istft(sy * np.exp(log_g.mean(0, keepdims=True)), n),
        "X + Y band energies": istft(sx / g, n),
        "Y + X band energies": istft(sy * g, n),
        "Y + X bands at 50 ms": istft(sy * np.exp(smooth(log_g, 9, 0)), n),
        "Y + X 1/6-octave bands": istft(sy * band_gains(sx, sy, 6), n),
        "Y + X 1/12-octave bands": istft(sy * band_gains(sx, sy, 12), n),
    }


def score_clip(
    path: Path,
    codec: object,
    args: argparse.Namespace,
    scorer: VisqolScorer,
    rng: np.random.Generator,
) -> dict[str, float]:
    x, _ = audio_io.read_audio(path, sample_rate=SAMPLE_RATE)
    x = x[:, : int(args.seconds * SAMPLE_RATE)]
    codes = codec.encode(x.astype(np.float32), SAMPLE_RATE, kbps=args.kbps)
    y = codec.decode(codes, length=x.shape[1])[0].double().numpy()
    per_channel: dict[str, list[float]] = {}
    for xc, yc in zip(x.astype(np.float64), y, strict=True):
        for name, e in variants(xc, yc, rng).items():
            s = scorer.speech(xc[None], e[None], SAMPLE_RATE)[0]
            per_channel.setdefault(name, []).append(s)
    return {name: float(np.mean(v)) for name, v in per_channel.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--data", type=Path, default=Path("../shared/eval"))
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--kbps", type=float, default=16.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    codec, scorer, rng = load(args.model), VisqolScorer(), np.random.default_rng(0)
    clips = sorted(q for q in args.data.iterdir() if q.suffix.lower() in (".flac", ".wav"))
    table: dict[str, list[float]] = {}
    for clip in clips:
        row = score_clip(clip, codec, args, scorer, rng)
        print(clip.name, " ".join(f"{k}={v:.3f}" for k, v in row.items()), flush=True)
        for name, value in row.items():
            table.setdefault(name, []).append(value)
    print(
        f"\nViSQOL speech, mean over {len(clips)} clips ({args.seconds:g} s, {args.kbps:g} kbps):"
    )
    for name, values in table.items():
        print(f"  {name:<24} {np.mean(values):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
