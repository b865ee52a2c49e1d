"""Training throughput: audio-seconds per second and model FLOP utilization (MFU).

Runs full training steps (D step + G step, EMA quantizer, all losses) of a training config on
synthetic audio already on the device, so the data pipeline is not measured. FLOPs of one step
are counted with torch.utils.flop_counter.FlopCounterMode (convs, matmuls and their backward;
FFTs and elementwise work are not counted, so MFU is a slight underestimate). MFU is measured
against the device's dense bf16 peak (table below, or --peak-tflops).

    python bench/train_speed.py                      # official config, batch 16/32/64
    python bench/train_speed.py --batch 1 --steps 2  # CPU smoke test
    OMP_NUM_THREADS=1 python bench/train_speed.py --config configs/cpu_default.toml --batch 4 \
        --fp32 --start-step 20000 [--compile]      # the CPU recipe's steps, RVQ stage
Prints one JSON object per batch size and markdown rows at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from spectrostream.train.config import TrainConfig
from spectrostream.train.loop import DistInfo, StepRunner, build_nets

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.2,
}


def device_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key.lower() in name.lower():
            if key == "H100" and "pcie" in name.lower():
                return name, PEAK_BF16_TFLOPS["H100 PCIe"]
            return name, peak
    return name, None


@dataclass
class Result:
    config: str
    device: str
    batch: int
    crop_seconds: float
    bf16: bool
    channels_last: bool
    compile: bool
    steps: int
    seconds: float
    steps_per_s: float
    audio_s_per_s: float
    tflop_per_step: float
    achieved_tflops: float
    peak_tflops: float | None
    mfu: float | None
    max_memory_gib: float | None
    error: str | None = None


def synthetic_audio(batch: int, channels: int, samples: int, device: torch.device) -> torch.Tensor:
    """Brown-ish noise at about -20 dBFS: a spectrum tilted like music's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, samples, generator=g).cumsum(-1)
    x = x - x.mean(-1, keepdim=True)
    x = 0.1 * x / x.std(-1, keepdim=True)
    return x.to(device)


def run_one(
    cfg: TrainConfig,
    name: str,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    peak: float | None,
    dev_name: str,
    start: int = 0,
) -> Result:
    cfg = cfg.with_(data={"batch_size": batch})
    torch.manual_seed(0)
    nets = build_nets(cfg, DistInfo(0, 1, 0, device))
    runner = StepRunner(cfg, nets, device)
    model_cfg = nets.model.config
    x = synthetic_audio(batch, model_cfg.audio_channels, cfg.crop_samples, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):  # includes k-means init on the first step
        runner.step(x, start + i)
    sync()
    counter = FlopCounterMode(display=False)
    with counter:
        runner.step(x, start + warmup)
    flops = counter.get_total_flops()
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        runner.step(x, start + warmup + 1 + i)
    sync()
    dt = time.perf_counter() - t0
    runner.read_stats()
    if bool(runner.nonfinite):
        raise RuntimeError(f"non-finite loss by step {start + warmup + 1 + steps}")
    sps = steps / dt
    achieved = flops * sps / 1e12
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Result(
        name,
        dev_name,
        batch,
        cfg.data.crop_seconds,
        cfg.run.bf16 and device.type == "cuda",
        cfg.run.channels_last,
        cfg.run.compile,
        steps,
        dt,
        sps,
        sps * batch * cfg.data.crop_seconds,
        flops / 1e12,
        achieved,
        peak,
        achieved / peak if peak else None,
        mem,
    )


def markdown(rows: list[Result]) -> str:
    out = [
        (
            "| config | device | batch | bf16 | channels_last | compile | audio-s/s | steps/s "
            "| TFLOP/step | TFLOP/s | MFU | peak mem GiB |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.error:
            out.append(
                f"| {r.config} | {r.device} | {r.batch} | | | | error: {r.error} | | | | | |"
            )
            continue
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "n/a"
        mem = f"{r.max_memory_gib:.1f}" if r.max_memory_gib is not None else "n/a"
        out.append(
            f"| {r.config} | {r.device} | {r.batch} | {r.bf16} | {r.channels_last} "
            f"| {r.compile} | {r.audio_s_per_s:.1f} | {r.steps_per_s:.3f} "
            f"| {r.tflop_per_step:.2f} | {r.achieved_tflops:.1f} | {mfu} | {mem} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/official.toml")
    p.add_argument("--batch", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--steps", type=int, default=10, help="timed steps per batch size")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--start-step",
        type=int,
        default=0,
        help="training step the timed steps start from (after quantizer.ae_steps: the RVQ "
        "stage, with k-means on the first step's batch)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--channels-last",
        choices=["config", "on", "off"],
        default="config",
        help="memory format of the convs (default: the config's run.channels_last)",
    )
    p.add_argument("--fp32", action="store_true", help="disable bf16 autocast")
    p.add_argument("--peak-tflops", type=float, help="override the device's peak (TFLOP/s)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    cfg = TrainConfig.from_toml(args.config)
    cl = cfg.run.channels_last if args.channels_last == "config" else args.channels_last == "on"
    cfg = cfg.with_(
        run={"compile": args.compile, "channels_last": cl, "bf16": not args.fp32, "progress": False}
    )
    use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    dev_name, peak = device_peak(device)
    peak = args.peak_tflops or peak
    name = args.config.rsplit("/", 1)[-1].removesuffix(".toml")
    rows = []
    for b in args.batch:
        try:
            r = run_one(
                cfg, name, b, args.steps, args.warmup, device, peak, dev_name, args.start_step
            )
        except torch.OutOfMemoryError as e:
            r = Result(
                name,
                dev_name,
                b,
                cfg.data.crop_seconds,
                False,
                False,
                False,
                0,
                0,
                0,
                0,
                0,
                0,
                peak,
                None,
                None,
                error=f"out of memory ({str(e)[:60]})",
            )
        finally:
            if use_cuda:
                torch.cuda.empty_cache()
        rows.append(r)
        print(json.dumps(asdict(r)), flush=True)
    print(
        f"\npeak used for MFU: {peak} TFLOP/s dense bf16 ({dev_name})"
        if peak
        else f"\nno peak known for {dev_name}: MFU not reported (use --peak-tflops)"
    )
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
