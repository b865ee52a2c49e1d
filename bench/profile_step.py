"""Where the time of one 40 ms streaming step goes (encoder push + decoder push), by operator.

    python bench/profile_step.py --config official --threads 1 --steps 6 [--compiled] [--int8]
Prints the wall time of each stage (STFT, networks, RVQ search/decode, iSTFT), then, under the
profiler, a breakdown by category (convolutions, transposed convolutions, RVQ search, buffer
copies, ELU, the rest) in ms per step, and the slowest operator/shape pairs. The exact RVQ
search on the CPU runs in numpy: it shows in the stage times, not in the operator tables.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import ExitStack

import torch
from torch.profiler import ProfilerActivity, profile

from spectrostream import layers, load
from spectrostream.codec import int8_calibration_path, read_int8_calibration
from spectrostream.config import SAMPLES_PER_CODE, official_config, small_config, tiny_config
from spectrostream.int8 import quantize_int8
from spectrostream.model import SpectroStream, StreamingDecoder, StreamingEncoder
from spectrostream.step import compiled_search, compiled_step
from spectrostream.streaming import streaming
from spectrostream.weights import MODELS_DIR

DEFAULT_MODEL_PATH = MODELS_DIR / "default.safetensors"
CATEGORIES = (
    ("int8 conv", ("qconv",)),
    ("conv2d", ("convolution_pointwise", "mkldnn_convolution", "slow_conv2d", "thnn_conv2d")),
    ("conv_transpose2d", ("convolution_transpose", "slow_conv_transpose2d", "_convolution")),
    ("RVQ search (mm/argmin)", ("aten::mm", "aten::argmin")),
    ("state concat (cat)", ("aten::cat",)),
    ("copies (contiguous/pad)", ("aten::copy_", "constant_pad_nd")),
    ("ELU", ("aten::elu",)),
    ("allocation (empty/zeros)", ("aten::empty", "aten::zeros", "aten::new_")),
    ("FFT", ("fft",)),
)


def category(name: str) -> str:
    for label, keys in CATEGORIES:
        if any(k in name for k in keys):
            return label
    return "other"


def print_stages(model: SpectroStream, audio: torch.Tensor, steps: int, compiled: bool) -> None:
    """Wall time per stage of a 40 ms step (no profiler): STFT, encoder network, RVQ search,
    RVQ decode, decoder network, trim + iSTFT; medians over ``steps`` after 4 warm-up steps.
    ``compiled``: the networks run as :class:`spectrostream.step.CompiledStep`, the RVQ search's
    first pass as :class:`spectrostream.step.CompiledSearch`."""
    n, stages = SAMPLES_PER_CODE, defaultdict(list)
    names = ("STFT", "encoder network", "RVQ search", "RVQ decode", "decoder network", "iSTFT")
    parts = (model.stft, model.encoder, model.decoder, model.trim, model.istft)
    encoder, decoder, first_pass = model.encoder, model.decoder, None
    if compiled:
        encoder, decoder = compiled_step(model, "encoder"), compiled_step(model, "decoder")
        first_pass = compiled_search(model.quantizer, model.config.num_levels)
    with torch.inference_mode(), ExitStack() as stack:
        for m in parts:
            stack.enter_context(streaming(m))
        for i in range(4 + steps):
            lo = 0 if i == 0 else 480 + i * n  # whole code frames: 2400 samples, then 1920
            t = [time.perf_counter()]
            spec = model.stft(audio[..., lo : 480 + (i + 1) * n])
            t.append(time.perf_counter())
            emb = encoder(spec)
            t.append(time.perf_counter())
            codes = model.quantizer.encode(emb, first_pass=first_pass)
            t.append(time.perf_counter())
            deq = model.quantizer.decode(codes)
            t.append(time.perf_counter())
            out = decoder(deq)
            t.append(time.perf_counter())
            model.istft(model.trim(out))
            t.append(time.perf_counter())
            if i >= 4:
                for k, name in enumerate(names):
                    stages[name].append(t[k + 1] - t[k])
    print("| stage | ms / step (median) |\n|---|---:|")
    for name in names:
        print(f"| {name} | {1e3 * statistics.median(stages[name]):.1f} |")
    print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=("official", "small", "default", "tiny"), default="official")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=6, help="profiled steps (after 4 warm-up steps)")
    p.add_argument("--no-prepack", action="store_true")
    p.add_argument("--top", type=int, default=15)
    p.add_argument(
        "--compiled",
        action="store_true",
        help="compiled steps (StreamingEncoder(..., compiled=True))",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="int8 convolutions with the shipped model's calibration (as bench/speed.py --int8)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    layers.PREPACK_CPU = not args.no_prepack
    torch.manual_seed(0)
    if args.config == "default":
        model = load().model.eval()
    elif args.config == "tiny":
        model = SpectroStream(tiny_config(num_levels=64, codebook_size=1024))
    else:
        model = SpectroStream(official_config() if args.config == "official" else small_config())
    model.eval()
    if args.int8:
        quantize_int8(model, read_int8_calibration(int8_calibration_path(DEFAULT_MODEL_PATH)))
    cfg = model.config
    n = SAMPLES_PER_CODE
    audio = 0.1 * torch.randn(1, cfg.audio_channels, (args.steps + 5) * n)
    c = args.compiled
    with (
        torch.inference_mode(),
        StreamingEncoder(model, compiled=c) as enc,
        StreamingDecoder(model, compiled=c) as dec,
    ):
        for i in range(4):
            dec.push(enc.push(audio[..., i * n : (i + 1) * n]))
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for i in range(4, 4 + args.steps):
                dec.push(enc.push(audio[..., i * n : (i + 1) * n]))
    print_stages(model, audio, args.steps, args.compiled)
    events = prof.key_averages(group_by_input_shape=True)
    per_cat: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in events:
        per_cat[category(e.key)] += e.self_cpu_time_total
        total += e.self_cpu_time_total
    print(
        f"{args.config}, {args.threads} thread(s), prepack={not args.no_prepack}: "
        f"{total / 1e3 / args.steps:.1f} ms per step (profiler overhead included)"
    )
    print("| category | ms / step | share |\n|---|---:|---:|")
    for label, us in sorted(per_cat.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {us / 1e3 / args.steps:.1f} | {100 * us / total:.0f}% |")
    print("\n| operator | input shapes | ms / step |\n|---|---|---:|")
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
    for e in top:
        shapes = ", ".join(str(s) for s in e.input_shapes[:2] if s)
        print(f"| {e.key} | {shapes} | {e.self_cpu_time_total / 1e3 / args.steps:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
