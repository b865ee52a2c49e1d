"""int8 inference on the CPU: static int8 convolutions with calibrated activation ranges.

Every ``CausalConv2d`` and ``CausalConvTranspose2d`` except the first conv (spectrum in) and
the last (spectrum out), and except the layers a calibration keeps float32, runs as a oneDNN
int8 convolution (``torch.ops.onednn.qconv_pointwise``, the kernel PyTorch's x86 inductor
backend uses; VNNI where the CPU has it): per-output-channel symmetric int8 weights, a
per-tensor asymmetric uint8 input (scale and zero point from a calibrated range [lo, hi]),
float32 output straight from the int32 accumulator (no output requantization). A transposed
conv becomes one ordinary conv whose output channels are its stride phases, then an interleave
(:func:`_phase_conv`; exact in float32). The streaming state, residual adds, ELU, STFT/iSTFT
and the RVQ stay float32. Codes differ from float32: int8 is judged by quality
(docs/benchmarks.md), not parity.

On CPUs without VNNI the uint8 x int8 products are summed pairwise in int16 (``vpmaddubsw``)
and can saturate; there the weights get 7-bit codes (-63..63), so a pair sums to at most
2 x 255 x 63 = 32130 < 32767 and cannot. (7-bit inputs would also be safe, but cost the shipped
model 8-10 dB of SNR against float32 where 7-bit weights cost nothing measurable:
docs/benchmarks.md, "int8 without VNNI".)

:func:`calibrate` runs the float32 model over real music, picks each layer's input range and
the layers too sensitive for int8 (a per-layer sensitivity search); the result is a small JSON
file (:class:`Int8Calibration`) keyed by the model id, which ``load(int8=True)`` reads.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError
from .layers import CausalConv2d, CausalConvTranspose2d

CALIBRATION_FORMAT = "spectrostream-int8-calibration"
CALIBRATION_VERSION = 1
# Never int8: the convs that read the spectrum and write it (the rule).
ALWAYS_FP32 = ("encoder.base_conv_first", "decoder.output_layer.base_conv_last")
# Inputs observed per layer and call for the range search (a strided subsample).
_SAMPLE_PER_CALL = 1 << 16


# ---- what this machine can do -------------------------------------------------------------
# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA, older name DNNL_MAX_CPU_ISA) under which its
# int8 kernels lack VNNI and sum u8 x s8 pairs in int16 (``vpmaddubsw``), as on an AVX2-only CPU.
_ISAS_WITHOUT_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_MIC", "AVX512_MIC_4OPS"}


def cpu_has_vnni() -> bool:
    """True where oneDNN's int8 convolutions will use VNNI: /proc/cpuinfo lists AVX-512 VNNI,
    AVX-VNNI or AMX-INT8 (Linux x86), and no ONEDNN_MAX_CPU_ISA cap below VNNI is set (such a
    cap makes oneDNN run its AVX2 kernels, whose int16 pair sums can saturate with 8-bit
    weights, as on an AVX2-only CPU)."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if os.environ.get(var, "").strip().upper() in _ISAS_WITHOUT_VNNI:
            return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.lru_cache(maxsize=1)
def int16_pairs_saturate() -> bool:
    """True where this process's oneDNN int8 convolution saturates on 8-bit weights: a probe
    conv (32 -> 16 channels, 3x3, a shape like the model's) whose every product is 255 x 127,
    so an int16 pair sum (2 x 32385 > 32767) clips and the output falls to about half of the
    exact 288. Run once per process; a kernel that cannot run at all counts as saturating."""
    conv = nn.Conv2d(32, 16, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    try:
        with torch.inference_mode():
            y = Int8Conv2d(conv, (0.0, 1.0), weight_bits=8)(torch.ones(1, 32, 6, 6))
    except (RuntimeError, AttributeError):
        return True
    return not torch.allclose(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 288.0))


def default_weight_bits() -> int:
    """8-bit weights (-127..127) where the CPU has VNNI and the int8 kernel does not saturate
    (:func:`int16_pairs_saturate`), 7-bit (-63..63) otherwise: no int16 saturation."""
    return 8 if cpu_has_vnni() and not int16_pairs_saturate() else 7


def _qconv_op():
    onednn = getattr(torch.ops, "onednn", None)
    for name in ("qconv_pointwise", "qconv2d_pointwise"):
        try:
            return getattr(onednn, name)
        except (AttributeError, RuntimeError):
            continue
    return None


def check_int8_support(device: torch.device | str = "cpu") -> None:
    """Raise ModelError (one line) where int8 cannot run: a non-CPU device, or a torch build
    without oneDNN's quantized convolutions."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}") from None
    if dev.type != "cpu":
        raise ModelError(f"int8 runs on the CPU only, not on {dev}; use --device cpu")
    if not torch.backends.mkldnn.is_available():
        raise ModelError(f"int8 needs oneDNN, which this torch build ({torch.__version__}) lacks")
    if _qconv_op() is None or not hasattr(torch.ops.onednn, "qconv_prepack"):
        raise ModelError(
            f"int8 needs oneDNN's quantized convolutions (torch.ops.onednn.qconv_pointwise), "
            f"which this torch build ({torch.__version__}) lacks"
        )


# ---- the int8 layer -----------------------------------------------------------------------
def _affine(lo: float, hi: float, qmax: int) -> tuple[float, int]:
    """uint8 (scale, zero point) mapping [lo, hi] (widened to hold 0) onto 0..qmax."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / qmax
    return scale, min(qmax, max(0, round(-lo / scale)))


class Int8Conv2d(nn.Module):
    """A float ``Conv2d``'s int8 twin: float32 in, float32 out, int8 x uint8 inside.

    Weights: per output channel, symmetric, scale max|w| / wmax with wmax 127 (8-bit) or 63
    (7-bit, for CPUs without VNNI). Input: [lo, hi] onto 0..255.
    """

    def __init__(
        self, conv: nn.Conv2d, in_range: tuple[float, float], weight_bits: int = 8
    ) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("int8: only plain convolutions (groups 1, zero padding)")
        if weight_bits not in (7, 8):
            raise ValueError(f"int8: weight bits must be 7 or 8, got {weight_bits}")
        self.lo, self.hi = float(min(in_range[0], 0.0)), float(max(in_range[1], 0.0))
        self.scale, self.zero = _affine(self.lo, self.hi, 255)
        self.wmax = (1 << (weight_bits - 1)) - 1
        w = conv.weight.detach().float()
        w_scale = (w.abs().amax((1, 2, 3)) / self.wmax).clamp_min(1e-12)
        # Plain attributes, not buffers: an int8 model is not saved (its float weights are gone).
        self.w_scale, self.w_zero = w_scale, torch.zeros(w.shape[0], dtype=torch.long)
        qw = torch.round(w / w_scale[:, None, None, None]).clamp(-self.wmax, self.wmax)
        qw = qw.to(torch.int8)
        self.bias = None if conv.bias is None else conv.bias.detach().float().clone()
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation = list(conv.dilation)
        self.out_channels = conv.out_channels
        self._op = _qconv_op()
        self.packed = torch.ops.onednn.qconv_prepack(
            qw, w_scale, self.scale, self.zero, self.stride, self.padding, self.dilation, 1, None
        )

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """float32 [B, C, T, F] -> uint8: round(x / scale) + zero, saturated to 0..255, the
        values ``torch.quantize_per_tensor`` gives (deprecated upstream), in plain ops that
        ``torch.compile`` traces and fuses into the layer before (compiled int8 steps)."""
        q = torch.round(x * (1.0 / self.scale)) + self.zero
        return q.clamp(0, 255).to(torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._op(
            self.quantize_input(x),
            self.scale,
            self.zero,
            self.packed,
            self.w_scale,
            self.w_zero,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            1,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )


def _phase_conv(conv: nn.ConvTranspose2d) -> tuple[nn.Conv2d, tuple[int, int], tuple[int, int]]:
    """A transposed conv as an ordinary conv over its input plus a phase interleave.

    Per axis (kernel K, stride s, padding p), output ``q = s m + r`` (before the crop by p) is
    ``sum_j x[m - j] W[s j + r]``: for each phase r an ordinary correlation with J = ceil(K / s)
    taps (flipped; zero where s j + r >= K). All phases become output channels
    ``(r_t, r_f, c_out)`` of one conv with padding P; its output m' is phase-frame
    ``m = m' + J - 1 - P``. Returns (conv, P per axis, J per axis).
    """
    w = conv.weight.detach().float()  # [Cin, Cout, kt, kf]
    cin, cout, kt, kf = w.shape
    (st, sf), (pt, pf) = conv.stride, conv.padding
    jt, jf = -(-kt // st), -(-kf // sf)
    wc = w.new_zeros(st, sf, cout, cin, jt, jf)
    for rt in range(st):
        for rf in range(sf):
            for ut in range(jt):
                for uf in range(jf):
                    kt_i, kf_i = st * (jt - 1 - ut) + rt, sf * (jf - 1 - uf) + rf
                    if kt_i < kt and kf_i < kf:
                        wc[rt, rf, :, :, ut, uf] = w[:, :, kt_i, kf_i].T
    pad = tuple(
        max(0, j - 1 - p // s, -(-(k - s - p) // s))
        for j, k, s, p in ((jt, kt, st, pt), (jf, kf, sf, pf))
    )
    eq = nn.Conv2d(cin, st * sf * cout, (jt, jf), padding=pad, bias=conv.bias is not None)
    with torch.no_grad():
        eq.weight.copy_(wc.reshape(st * sf * cout, cin, jt, jf))
        if conv.bias is not None:
            eq.bias.copy_(conv.bias.detach().float().repeat(st * sf))
    return eq, pad, (jt, jf)


class Int8ConvTranspose2d(nn.Module):
    """A float ``ConvTranspose2d``'s int8 twin: the equivalent ordinary conv (:func:`_phase_conv`)
    in int8, then the phases interleaved into time and frequency and the padding cropped. Same
    output as the transposed conv (oneDNN's int8 transposed convolution is not used)."""

    def __init__(
        self, conv: nn.ConvTranspose2d, in_range: tuple[float, float], weight_bits: int = 8
    ) -> None:
        super().__init__()
        eq, pad, taps = _phase_conv(conv)
        self.inner = Int8Conv2d(eq, in_range, weight_bits)
        self.stride, self.cout = tuple(conv.stride), conv.out_channels
        k, p = conv.kernel_size, conv.padding
        # Offset of output 0 in the interleaved phases: s (J - 1 - P) before index p.
        self.start = tuple(p[a] - self.stride[a] * (taps[a] - 1 - pad[a]) for a in (0, 1))
        self.kernel, self.pad = tuple(k), tuple(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, Cin, T, F] -> [B, Cout, (T - 1) s_t - 2 p_t + k_t, (F - 1) s_f - 2 p_f + k_f]."""
        z = self.inner(x)
        b, _, mt, mf = z.shape
        (st, sf), c = self.stride, self.cout
        y = z.view(b, st, sf, c, mt, mf).permute(0, 3, 4, 1, 5, 2).reshape(b, c, mt * st, mf * sf)
        t_out = (x.shape[2] - 1) * st - 2 * self.pad[0] + self.kernel[0]
        f_out = (x.shape[3] - 1) * sf - 2 * self.pad[1] + self.kernel[1]
        t0, f0 = self.start
        return y[:, :, t0 : t0 + t_out, f0 : f0 + f_out]


def int8_candidates(model: nn.Module) -> dict[str, CausalConv2d | CausalConvTranspose2d]:
    """The causal convs and transposed convs that may run int8: all but the first and last."""
    kinds = (CausalConv2d, CausalConvTranspose2d)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds) and n not in ALWAYS_FP32}


def _int8_twin(conv: nn.Module, in_range: tuple[float, float], weight_bits: int) -> nn.Module:
    if isinstance(conv, nn.ConvTranspose2d):
        return Int8ConvTranspose2d(conv, in_range, weight_bits)
    return Int8Conv2d(conv, in_range, weight_bits)


# ---- calibration ----------------------------------------------------------------------------
@dataclass
class _Observed:
    """Inputs one conv saw: exact min/max and a subsample for the range search."""

    lo: float = 0.0
    hi: float = 0.0
    samples: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor) -> None:
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        flat = x.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLE_PER_CALL)
        self.samples.append(flat[::step].float().clone())


def _quant_error(x: torch.Tensor, lo: float, hi: float, qmax: int) -> float:
    scale, zero = _affine(lo, hi, qmax)
    q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    return float(((q - zero) * scale - x).square().mean())


def best_range(obs: _Observed, qmax: int, method: str = "mse") -> tuple[float, float]:
    """The input range of one layer: observed min/max (``minmax``) or, for ``mse``, the range
    ``alpha * [lo, hi]`` (alpha in 0.1..1) with the least squared quantization error."""
    if method == "minmax" or not obs.samples:
        return obs.lo, obs.hi
    x = torch.cat(obs.samples)
    alphas = torch.linspace(0.1, 1.0, 46).tolist()
    errors = [_quant_error(x, a * obs.lo, a * obs.hi, qmax) for a in alphas]
    a = alphas[min(range(len(alphas)), key=errors.__getitem__)]
    return a * obs.lo, a * obs.hi


@torch.no_grad()
def observe_inputs(
    model: nn.Module, clips: Iterable[torch.Tensor], levels: Iterable[int | None] = (None,)
) -> dict[str, _Observed]:
    """Run the float32 model offline over ``clips`` ([B, C, T] at 48 kHz), once per entry of
    ``levels``, and record every int8 candidate's conv input."""
    observed: dict[str, _Observed] = {}
    hooks = []
    for name, m in int8_candidates(model).items():
        obs = observed.setdefault(name, _Observed())
        hooks.append(m.conv.register_forward_pre_hook(lambda _m, args, o=obs: o.add(args[0])))
    try:
        levels = list(levels)
        for clip in clips:
            for n in levels:
                model(clip, n)
    finally:
        for h in hooks:
            h.remove()
    return observed


# ---- calibration file -----------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Calibration:
    """Per-layer input ranges for one model (its ``model_id``), and the layers kept float32."""

    model_id: str
    ranges: Mapping[str, tuple[float, float]]
    fp32_layers: tuple[str, ...] = ()
    source: str = ""
    sensitivity: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": CALIBRATION_FORMAT,
                "version": CALIBRATION_VERSION,
                "model_id": self.model_id,
                "source": self.source,
                "fp32_layers": list(self.fp32_layers),
                "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()},
                "sensitivity_db": {k: round(float(v), 2) for k, v in self.sensitivity.items()},
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, where: str = "int8 calibration") -> Int8Calibration:
        try:
            d = json.loads(text)
            if d.get("format") != CALIBRATION_FORMAT or d.get("version") != CALIBRATION_VERSION:
                raise ValueError(f"not a version-{CALIBRATION_VERSION} {CALIBRATION_FORMAT} file")
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in d["ranges"].items()}
            sens = {str(k): float(v) for k, v in d.get("sensitivity_db", {}).items()}
            fp32 = tuple(str(n) for n in d["fp32_layers"])
            return cls(str(d["model_id"]), ranges, fp32, str(d["source"]), sens)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise ModelError(f"{where}: unreadable ({e})") from None


def _snr_db(ref: list[torch.Tensor], est: list[torch.Tensor]) -> float:
    signal = sum(float(r.double().square().sum()) for r in ref)
    noise = sum(float((e.double() - r.double()).square().sum()) for r, e in zip(ref, est))
    return float("inf") if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


class _PartRunner:
    """Runs the part of the model a layer belongs to: the encoder (audio -> embeddings) or
    the decoder (the float32 model's dequantized embeddings -> audio), on fixed clips."""

    def __init__(self, model: nn.Module, clips: list[torch.Tensor]) -> None:
        self.model, self.clips = model, clips
        with torch.no_grad():
            self.emb = [model.encode_embeddings(c) for c in clips]
            self.deq = [model.quantizer.quantize(e)[1] for e in self.emb]
            self.audio = [model.decode_embeddings(d) for d in self.deq]

    @torch.no_grad()
    def snr_db(self, part: str) -> float:
        if part == "encoder":
            return _snr_db(self.emb, [self.model.encode_embeddings(c) for c in self.clips])
        return _snr_db(self.audio, [self.model.decode_embeddings(d) for d in self.deq])


def _part(name: str) -> str:
    return name.split(".", 1)[0]


def layer_sensitivity(
    model: nn.Module, clips: list[torch.Tensor], ranges: Mapping[str, tuple[float, float]]
) -> dict[str, float]:
    """SNR (dB) of each layer's part output (embeddings or audio) against float32 when that
    layer alone runs int8 with its range; ``model`` is left float32."""
    runner = _PartRunner(model, clips)
    layers = int8_candidates(model)
    out, weight_bits = {}, default_weight_bits()
    for name, (lo, hi) in ranges.items():
        m = layers[name]
        conv = m.conv
        m.conv = _int8_twin(conv, (lo, hi), weight_bits)
        try:
            out[name] = runner.snr_db(_part(name))
        finally:
            m.conv = conv
    return out


def choose_fp32_layers(sensitivity: Mapping[str, float], budget_db: float) -> tuple[str, ...]:
    """The fewest layers to keep float32 so that, per part, the int8 layers' noise powers
    (taken as additive: sum of 10^(-SNR/10)) stay under 10^(-budget_db/10)."""
    keep: list[str] = []
    for part in ("encoder", "decoder"):
        layers = sorted((s, n) for n, s in sensitivity.items() if _part(n) == part)
        noise = [10 ** (-s / 10) for s, _ in layers]
        i = 0
        while i < len(layers) and sum(noise[i:]) > 10 ** (-budget_db / 10):
            keep.append(layers[i][1])
            i += 1
    return tuple(keep)


def calibrate(
    model: nn.Module,
    model_id: str,
    clips: Iterable[torch.Tensor],
    *,
    sensitivity_clips: int = 4,
    budget_db: float = 30.0,
    source: str = "",
) -> Int8Calibration:
    """Calibrate ``model`` (float32, left unchanged) on ``clips`` ([B, C, T] at 48 kHz).

    1. Input ranges: the float32 model runs over every clip (all levels); per layer, the
       observed min/max and the MSE-optimal clipped range are both candidates.
    2. Sensitivity: on the first ``sensitivity_clips`` clips, each layer alone is made int8
       with each candidate range and its part's output (embeddings, or audio from the float32
       codes) compared with float32; each layer keeps its better range.
    3. The most sensitive layers stay float32 until the rest's summed noise is ``budget_db``
       below the signal, per part (:func:`choose_fp32_layers`).
    """
    clips = list(clips)
    observed = observe_inputs(model, clips)
    probe = clips[:sensitivity_clips]
    by_method = {
        method: {n: best_range(o, 255, method) for n, o in observed.items()}
        for method in ("minmax", "mse")
    }
    scores = {method: layer_sensitivity(model, probe, r) for method, r in by_method.items()}
    ranges, sensitivity = {}, {}
    for name in observed:
        method = max(scores, key=lambda m: scores[m][name])
        ranges[name], sensitivity[name] = by_method[method][name], scores[method][name]
    fp32 = choose_fp32_layers(sensitivity, budget_db)
    return Int8Calibration(model_id, ranges, fp32, source, sensitivity)


def quantize_int8(
    model: nn.Module, calibration: Int8Calibration, weight_bits: int | None = None
) -> int:
    """Replace the convs of ``model`` (in place) by int8 twins; returns how many.

    ``weight_bits``: 8 (-127..127) or 7 (-63..63; no int16 saturation without VNNI); default
    :func:`default_weight_bits`. Inputs are always 8-bit.
    """
    check_int8_support(next(model.parameters()).device)
    weight_bits = default_weight_bits() if weight_bits is None else weight_bits
    if weight_bits not in (7, 8):
        raise ValueError(f"int8: weight bits must be 7 or 8, got {weight_bits}")
    layers = int8_candidates(model)
    missing = sorted(set(layers) - set(calibration.ranges) - set(calibration.fp32_layers))
    if missing:
        raise ModelError(f"int8 calibration has no range for {missing[:3]} (another model?)")
    count = 0
    for name, m in layers.items():
        if name in calibration.fp32_layers or isinstance(m.conv, Int8Conv2d | Int8ConvTranspose2d):
            continue
        m.conv = _int8_twin(m.conv, calibration.ranges[name], weight_bits)
        count += 1
    return count
