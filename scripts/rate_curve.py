"""Where a model's quality stops rising with the bit rate: SI-SDR and latent SNR per level count.

    python scripts/rate_curve.py [--model M] [--data ../shared/eval] [--seconds 6] [--json F]

For each clip (the first ``--seconds`` of every audio file in ``--data``): the encoder's
embedding, its codes at all levels, then the decoded audio from the first L levels for
L = 1, 2, 4, ... up to all, and from the unquantized embedding. Prints SI-SDR in dB (mean of
the channels, as ``spectrostream eval``) per clip and L, and the latent SNR
10 log10(|emb|^2 / |emb - q_L|^2) averaged over the clips. A model whose scores stop rising
at some L before all levels has reached its autoencoder's ceiling there: more bits describe
the latent better, but the decoder cannot turn that into a better waveform.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from spectrostream import audio_io, load
from spectrostream.config import SAMPLE_RATE
from spectrostream.metrics import si_sdr

UNQUANTIZED = "unquantized"  # the row decoded from the embedding itself


def level_counts(num_levels: int) -> list[int]:
    """1, 2, 4, ... and ``num_levels`` itself."""
    counts, n = [], 1
    while n < num_levels:
        counts.append(n)
        n *= 2
    return [*counts, num_levels]


def clip_curve(model, audio: torch.Tensor, counts: list[int]) -> tuple[dict, dict]:
    """(SI-SDR dB by level count and "unquantized", latent SNR dB by level count) of one clip."""
    emb = model.encode_embeddings(audio)
    codes = model.quantizer.encode(emb)
    sdr, snr = {}, {}
    for key in [*counts, UNQUANTIZED]:
        q = emb if key == UNQUANTIZED else model.quantizer.decode(codes[:, :key])
        out = model.decode_embeddings(q)
        n = min(out.shape[-1], audio.shape[-1])
        sdr[key] = float(si_sdr(audio[0, :, :n], out[0, :, :n]).mean())
        if key != UNQUANTIZED:
            snr[key] = float(10 * torch.log10(emb.square().sum() / (emb - q).square().sum()))
    return sdr, snr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="a .safetensors file or a model name")
    ap.add_argument("--data", type=Path, default=Path("../shared/eval"))
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    files = sorted(p for p in args.data.glob("*") if p.suffix.lower() in (".flac", ".wav"))
    if not files:
        print(f"error: no .flac or .wav files in {args.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    model = load(args.model).model.eval()
    counts = level_counts(model.quantizer.num_levels)
    kbps = model.config.kbps_per_level
    print("| clip | " + " | ".join(f"{n} ({n * kbps:g} kbps)" for n in counts) + " | unquantized |")
    print("|---|" + "---:|" * (len(counts) + 1))
    rows, snrs = {}, {n: [] for n in counts}
    for path in files:
        audio, _ = audio_io.read_audio(path, sample_rate=SAMPLE_RATE)
        clip = torch.from_numpy(audio)[None].float()[..., : int(args.seconds * SAMPLE_RATE)]
        with torch.inference_mode():
            sdr, snr = clip_curve(model, clip, counts)
        rows[path.stem] = sdr
        for n in counts:
            snrs[n].append(snr[n])
        print(f"| {path.stem} | " + " | ".join(f"{v:.1f}" for v in sdr.values()) + " |")
    mean_sdr = {k: sum(r[k] for r in rows.values()) / len(rows) for k in [*counts, UNQUANTIZED]}
    mean_snr = {n: sum(v) / len(v) for n, v in snrs.items()}
    print("| mean SI-SDR | " + " | ".join(f"{v:.1f}" for v in mean_sdr.values()) + " |")
    print("| latent SNR | " + " | ".join(f"{v:.1f}" for v in mean_snr.values()) + " | |")
    if args.json:
        out = {"model": str(args.model), "seconds": args.seconds, "si_sdr_db": rows}
        out |= {"mean_si_sdr_db": mean_sdr, "mean_latent_snr_db": mean_snr}
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
