"""Feasibility probe for int8 (not a codec path): one conv of streaming shape, fp32 vs int8.

fp32 = this package's prepacked oneDNN conv; int8 = quantize the input (per tensor), PyTorch's
x86 quantized conv (per-channel int8 weights; VNNI where the CPU has it), dequantize. The
output scale is a fixed guess, not calibrated, so the error column is only indicative.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/int8_probe.py
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.ao.nn.quantized as nnq

from spectrostream.layers import Conv2d

# ([B, Cin, frames, bins], Cout): shapes of a 40 ms step (4 new frames + 2 of state).
CASES = (
    ((1, 1024, 6, 5), 1024),
    ((2, 32, 6, 480), 32),
    ((2, 256, 6, 40), 256),
    ((2, 128, 6, 120), 128),
)


def best_ms(f, n: int = 60) -> float:
    for _ in range(5):
        f()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n // 3):
            f()
        best = min(best, (time.perf_counter() - t) / (n // 3))
    return 1e3 * best


def probe(shape: tuple[int, ...], cout: int) -> tuple[float, float, float]:
    """-> (fp32 ms, int8 ms, max error relative to the output's max)."""
    cin = shape[1]
    x = torch.randn(shape)
    conv = Conv2d(cin, cout, 3, padding=(0, 1)).eval()
    w = conv.weight.detach()
    q = nnq.Conv2d(cin, cout, 3, padding=(0, 1))
    scales = w.abs().amax((1, 2, 3)) / 127
    zeros = torch.zeros(cout, dtype=torch.long)
    q.set_weight_bias(torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8), conv.bias)
    q.scale, q.zero_point = 0.05, 128
    s = float(x.abs().max() / 127)

    def int8() -> torch.Tensor:
        return q(torch.quantize_per_tensor(x, s, 128, torch.quint8)).dequantize()

    with torch.inference_mode():
        ref = conv(x)
        err = float((int8() - ref).abs().max() / ref.abs().max())
        return best_ms(lambda: conv(x)), best_ms(int8), err


def main() -> int:
    warnings.simplefilter("ignore")  # quantized tensors are deprecated (still in 2.11-2.13)
    torch.backends.quantized.engine = "x86"
    torch.manual_seed(0)
    print("| input | Cout | fp32 ms | int8 ms | speed-up | rel. error |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape, cout in CASES:
        fp, i8, err = probe(shape, cout)
        print(f"| {list(shape)} | {cout} | {fp:.2f} | {i8:.2f} | {fp / i8:.1f}x | {err:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
