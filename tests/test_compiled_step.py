"""Compiled streaming steps (``compiled=True``): the same codes and (to rounding) the same audio
as the eager stream, never a recompile mid-stream, and snapshots that resume bit-exactly."""

import copy
import itertools

import pytest
import torch

from spectrostream import int8
from spectrostream.config import SAMPLES_PER_CODE, tiny_config
from spectrostream.errors import ModelError, UsageError
from spectrostream.model import SpectroStream, StreamingDecoder, StreamingEncoder
from spectrostream.step import compiled_search, compiled_step

N = SAMPLES_PER_CODE
pytestmark = pytest.mark.slow  # compiling the two tiny step graphs takes ~1 min (cold cache)
STEPS = 12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SpectroStream(tiny_config(num_levels=8, codebook_size=16)).eval()
    with torch.no_grad():  # codebooks on the embedding scale, so that every level is used
        scale = m.encode_embeddings(torch.randn(1, 2, 48000) * 0.3).std()
        m.quantizer.codebooks.normal_().mul_(scale)
    for part in ("encoder", "decoder"):
        if not compiled_step(m, part).compiled:
            pytest.skip("torch.compile is not available here")
    return m


def test_compiled_needs_a_float32_cpu_model():
    m = SpectroStream(tiny_config()).to(torch.bfloat16)
    with pytest.raises(UsageError, match="float32 CPU"):
        StreamingEncoder(m, compiled=True)
    with pytest.raises(UsageError, match="float32 CPU"):
        StreamingDecoder(m, compiled=True)


@pytest.fixture
def no_compiler(monkeypatch):
    """torch.compile fails, as where no C++ compiler is installed."""

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)


def test_failed_compile_warns_and_streams_with_the_layers(no_compiler):
    torch.manual_seed(1)
    m = SpectroStream(tiny_config(num_levels=4, codebook_size=16)).eval()
    with pytest.warns(UserWarning, match="no compiler here"):
        enc = StreamingEncoder(m, compiled=True)
    assert enc._step is None
    audio = _audio(4)
    with torch.inference_mode():
        codes = torch.cat([enc.push(audio[..., i * N : (i + 1) * N]) for i in range(4)], -1)
    enc.close()
    assert torch.equal(codes, m.encode(audio)[..., : codes.shape[-1]])


def _audio(steps: int = STEPS) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return 0.2 * torch.randn(1, 2, steps * N, generator=g)


def _run(model, audio, compiled, lo=0, hi=STEPS, enc=None, dec=None):
    enc = enc or StreamingEncoder(model, compiled=compiled)
    dec = dec or StreamingDecoder(model, compiled=compiled)
    codes, out = [], []
    with torch.inference_mode():
        for i in range(lo, hi):
            codes.append(enc.push(audio[..., i * N : (i + 1) * N]))
            out.append(dec.push(codes[-1]))
    return torch.cat(codes, -1), torch.cat(out, -1), enc, dec


def test_compiled_stream_matches_eager_and_offline(model):
    audio = _audio()
    with torch._dynamo.config.patch(error_on_recompile=True):
        codes, out, enc, dec = _run(model, audio, compiled=True)
    enc.close(), dec.close()
    ref_codes, ref_out, enc, dec = _run(model, audio, compiled=False)
    enc.close(), dec.close()
    assert torch.equal(codes, ref_codes)
    assert torch.equal(codes, model.encode(audio)[..., : codes.shape[-1]])
    assert (out - ref_out).abs().max() < 1e-5


def test_compiled_snapshot_resumes_bit_exactly(model):
    audio = _audio()
    _, _, enc, dec = _run(model, audio, compiled=True, hi=5)
    snap_e, snap_d = enc.get_state(), dec.get_state()
    tail_codes, tail_out, _, _ = _run(model, audio, True, 5, STEPS, enc, dec)
    enc.set_state(snap_e), dec.set_state(snap_d)
    again_codes, again_out, _, _ = _run(model, audio, True, 5, STEPS, enc, dec)
    enc.close(), dec.close()
    assert torch.equal(again_codes, tail_codes)
    assert torch.equal(again_out, tail_out)


def test_eager_and_compiled_pushes_mix(model):
    """Pushes the compiled step cannot take (two code frames at once) run the layers, on the
    same state: the stream stays equal to the eager one."""
    audio = _audio()
    ref_codes, ref_out, e, d = _run(model, audio, compiled=False)
    e.close(), d.close()
    enc, dec = StreamingEncoder(model, compiled=True), StreamingDecoder(model, compiled=True)
    with torch.inference_mode():
        codes = [enc.push(audio[..., : 3 * N]), enc.push(audio[..., 3 * N : STEPS * N])]
        codes = torch.cat(codes, -1)
        out = torch.cat([dec.push(codes[..., j : j + 1]) for j in range(codes.shape[-1])], -1)
    enc.close(), dec.close()
    assert torch.equal(codes, ref_codes)
    assert (out - ref_out).abs().max() < 1e-5


def test_compiled_steps_around_an_eager_push(model):
    """Compiled one-frame steps, then a two-frame push that runs the layers on the compiled
    step's state (replacing its buffers), then compiled steps again: equal to the eager
    stream. The compiled step must not reuse the state it handed over before."""
    audio = _audio()
    ref_codes, _, e, d = _run(model, audio, compiled=False)
    e.close(), d.close()
    enc = StreamingEncoder(model, compiled=True)
    bounds = [0, 1, 2, 3, 5, 6, 7, STEPS]  # one frame each, except 3 -> 5
    with torch.inference_mode():
        codes = [enc.push(audio[..., a * N : b * N]) for a, b in itertools.pairwise(bounds)]
    enc.close()
    assert torch.equal(torch.cat(codes, -1), ref_codes)


def test_compiled_int8_stream_matches_eager_int8(model):
    """int8 layers compile too (their input quantization is plain ops): the same codes and, to
    rounding, the same audio as the eager int8 stream."""
    try:
        int8.check_int8_support()
    except ModelError:
        pytest.skip("no oneDNN int8 convolutions in this torch build")
    audio = _audio()
    observed = int8.observe_inputs(model, [audio])
    ranges = {n: int8.best_range(o, 255, "minmax") for n, o in observed.items()}
    cal = int8.Int8Calibration("test", ranges, fp32_layers=int8.ALWAYS_FP32)
    q_eager, q_compiled = copy.deepcopy(model), copy.deepcopy(model)
    for m in (q_eager, q_compiled):
        int8.quantize_int8(m, cal)
    ref_codes, ref_out, e, d = _run(q_eager, audio, compiled=False)
    e.close(), d.close()
    with torch._dynamo.config.patch(error_on_recompile=True):
        codes, out, enc, dec = _run(q_compiled, audio, compiled=True)
    enc.close(), dec.close()
    assert enc._step is not None and dec._step is not None  # compiled, not the fallback
    assert torch.equal(codes, ref_codes)
    # A float rounding difference before an input quantization can move a value by one step.
    assert (out - ref_out).abs().max() < 1e-4


def test_compiled_stream_at_fewer_levels(model):
    """A stream at fewer levels than the model has compiles its search for those levels: the
    codes of the offline search at that many levels."""
    audio = _audio(6)
    enc = StreamingEncoder(model, levels=3, compiled=True)
    with torch.inference_mode():
        codes = torch.cat([enc.push(audio[..., i * N : (i + 1) * N]) for i in range(6)], -1)
    enc.close()
    assert codes.shape[1] == 3
    assert torch.equal(codes, model.encode(audio, levels=3)[..., : codes.shape[-1]])


def test_failed_search_compile_warns_and_searches_eagerly(no_compiler):
    torch.manual_seed(2)
    m = SpectroStream(tiny_config(num_levels=4, codebook_size=16)).eval()
    with pytest.warns(UserWarning, match="RVQ search failed.*no compiler here"):
        assert compiled_search(m.quantizer, 4) is None
