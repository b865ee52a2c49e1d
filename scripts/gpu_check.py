"""The codec's GPU path against its CPU path, on real music, as JSON (run by gpu_round.sh).

    python scripts/gpu_check.py MODEL AUDIO_DIR [--files N] [--seconds S]

For up to N files below AUDIO_DIR (their first S seconds, at every level of the model): codes from
``load(MODEL, device="cuda")`` in fp32 and bf16 against the CPU's (the share of equal codes, at
level 0 and over all levels: the GPU's convolutions and RVQ search round differently, so a
near tie can take the other codeword and change the levels after it), the SNR of the GPU's
decoded audio against the CPU's decoding of the same codes, and the GPU's encode and decode
speed in audio-seconds per second (after one warm-up call). Without CUDA it says so and exits 0.
``--device cpu`` runs the same comparison CPU against CPU (a test of this script).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from spectrostream.audio_io import find_audio
from spectrostream.codec import load


def snr_db(ref: np.ndarray, test: np.ndarray) -> float | None:
    """SNR of ``test`` against ``ref`` in dB; None where they are identical."""
    noise = float(np.sum((ref - test) ** 2))
    return None if noise == 0 else round(10 * np.log10(float(np.sum(ref**2)) / noise), 2)


def timed(fn, sync: bool) -> tuple[object, float]:
    fn()  # warm-up (cuDNN picks its kernels for this shape)
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def check_file(path: Path, seconds: float, cpu, gpus: dict, sync: bool) -> dict:
    audio, sr = sf.read(path, dtype="float32", frames=int(seconds * 48000), always_2d=True)
    audio = audio.T.copy()
    dur = audio.shape[1] / sr
    ref_codes = cpu.encode(audio, sr)
    row: dict = {"file": path.name, "seconds": round(dur, 2)}
    for name, gpu in gpus.items():
        codes, enc_s = timed(lambda g=gpu: g.encode(audio, sr).cpu(), sync=sync)
        out, dec_s = timed(lambda g=gpu, c=codes: g.decode(c).float().cpu(), sync=sync)
        ref_out = cpu.decode(codes)
        row[name] = {
            "codes_equal": round(float((codes == ref_codes).float().mean()), 4),
            "level0_equal": round(float((codes[:, 0] == ref_codes[:, 0]).float().mean()), 4),
            "decode_snr_db": snr_db(ref_out.numpy(), out.numpy()),
            "encode_audio_s_per_s": round(dur / enc_s, 1),
            "decode_audio_s_per_s": round(dur / dec_s, 1),
        }
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("audio_dir")
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    result: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if cuda and not torch.cuda.is_available():
        print(json.dumps(result | {"skipped": "no CUDA device"}))
        return 0
    result["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    files = find_audio(args.audio_dir)
    cpu = load(args.model, device="cpu")
    gpus = {dt: load(args.model, device=args.device, dtype=dt) for dt in ("fp32", "bf16")}
    result["files"] = [check_file(f, args.seconds, cpu, gpus, cuda) for f in files[: args.files]]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
