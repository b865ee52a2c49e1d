"""Experimental int8 convolutions: the right layers are replaced, streaming still equals offline,
and on real music the int8 round trip stays close to float32 (judged by SNR, not parity)."""

import copy
from pathlib import Path

import pytest
import torch

from spectrostream import audio_io, load
from spectrostream.int8 import Int8Conv2d, int8_convs, quantize_int8
from spectrostream.model import StreamingDecoder, StreamingEncoder

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
pytestmark = pytest.mark.skipif(
    "x86" not in torch.backends.quantized.supported_engines, reason="no x86 quantized engine"
)


def clip(name: str, seconds: float) -> torch.Tensor:
    audio, _ = audio_io.read_audio(EVAL / name, sample_rate=48000)
    return torch.from_numpy(audio[:, : int(48000 * seconds)])[None].float()


@pytest.fixture(scope="module")
def models():
    fp = load().model.eval()
    q = quantize_int8(copy.deepcopy(fp), clip("hungarian_dance_5.flac", 3))
    return fp, q


def test_layers_replaced(models):
    _, q = models
    convs = int8_convs(q)
    assert convs and all(isinstance(m.conv, Int8Conv2d) for m in convs.values())
    assert not isinstance(q.encoder.base_conv_first.conv, Int8Conv2d)
    assert not isinstance(q.decoder.output_layer.base_conv_last.conv, Int8Conv2d)


def test_int8_round_trip_close_to_float32(models):
    fp, q = models
    x = clip("moonlight.flac", 3)
    with torch.inference_mode():
        y32, y8 = fp(x), q(x)
    snr = 10 * torch.log10((y32**2).sum() / ((y8 - y32) ** 2).sum())
    assert snr > 10  # measured 17 dB on 6 s of this clip (docs/benchmarks.md)


def test_int8_streaming_equals_offline(models):
    _, q = models
    x = clip("guitar.flac", 1)
    with torch.inference_mode():
        ref = q.encode(x)
        with StreamingEncoder(q) as enc, StreamingDecoder(q) as dec:
            parts = [enc.push(x[..., i : i + 1920]) for i in range(0, x.shape[-1], 1920)]
            codes = torch.cat([*parts, enc.flush()], -1)
            audio = dec.push(codes)
        ref_audio = q.decode(ref)
    assert torch.equal(codes, ref)
    assert (audio - ref_audio).abs().max() < 1e-4
