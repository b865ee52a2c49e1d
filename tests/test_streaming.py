"""One code path: streamed codes equal offline codes exactly, streamed audio equals offline audio,
for any chunking; the architecture is causal with 80 ms latency."""

import numpy as np
import pytest
import torch

from spectrostream.config import SAMPLES_PER_CODE, tiny_config
from spectrostream.model import SpectroStream, StreamingDecoder, StreamingEncoder
from spectrostream.streaming import get_state, set_state, streaming


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SpectroStream(tiny_config(num_levels=8, codebook_size=16)).eval()
    # Randomise the codebooks relative to the embedding scale so that every level is used.
    with torch.no_grad():
        x = torch.randn(1, 2, 48000) * 0.3
        scale = m.encode_embeddings(x).std()
        m.quantizer.codebooks.normal_().mul_(scale)
    return m


def _audio(seconds: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(48000 * seconds)) / 48000
    x = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.1 * torch.randn(2, len(t), generator=g)
    x[1] *= 0.7
    return x[None]


def _chunks(total: int, size: int | str, seed: int = 0) -> list[int]:
    if size != "random":
        return [min(size, total - i) for i in range(0, total, size)]
    rng = np.random.default_rng(seed)
    out, done = [], 0
    while done < total:
        n = int(min(rng.integers(0, 5000), total - done))
        out.append(n)  # zero-length chunks are allowed
        done += n
    return out


@pytest.mark.parametrize("chunk", [1, 7, 1920, 4800, "random"])
def test_stream_equals_offline(model, chunk):
    x = _audio({1: 0.2, 7: 0.5}.get(chunk, 1.3))
    with torch.no_grad():
        ref_codes = model.encode(x)
        ref_audio = model.decode(ref_codes)
        codes, audio = [], []
        with StreamingEncoder(model) as enc, StreamingDecoder(model) as dec:
            pos = 0
            for n in _chunks(x.shape[-1], chunk):
                c = enc.push(x[..., pos : pos + n])
                pos += n
                codes.append(c)
                audio.append(dec.push(c))
            c = enc.flush()
            codes.append(c)
            audio.append(dec.push(c))
    codes = torch.cat(codes, -1)
    audio = torch.cat(audio, -1)
    assert torch.equal(codes, ref_codes)
    assert audio.shape == ref_audio.shape
    assert (audio - ref_audio).abs().max() < 1e-5


@pytest.mark.parametrize("frames", [1, 2, 3, 11])
def test_decoder_stream_any_code_chunking(model, frames):
    x = _audio(1.0, seed=3)
    with torch.no_grad():
        codes = model.encode(x, 5)
        ref = model.decode(codes)
        with StreamingDecoder(model) as dec:
            out = torch.cat(
                [dec.push(codes[..., i : i + frames]) for i in range(0, codes.shape[-1], frames)],
                -1,
            )
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-5


def test_latency_is_two_code_frames(model):
    """Fed 40 ms blocks, audio block j comes out once input block j + 2 is in: 80 ms."""
    x = _audio(0.8)
    produced = []
    with torch.no_grad(), StreamingEncoder(model) as enc, StreamingDecoder(model) as dec:
        for k in range(x.shape[-1] // SAMPLES_PER_CODE):
            block = x[..., k * SAMPLES_PER_CODE : (k + 1) * SAMPLES_PER_CODE]
            produced.append(dec.push(enc.push(block)).shape[-1])
    total = np.cumsum(produced)
    # After k + 1 blocks (k = 0, 1, ...): blocks 0 .. k - 2 are out.
    expected = [max(0, k - 1) * SAMPLES_PER_CODE for k in range(len(produced))]
    assert total.tolist() == expected


def test_causality_prefix(model):
    """Changing the input from sample p on leaves every code frame j with 1920 j + 2399 < p and
    every output sample n with 1920 (n // 1920 + 1) + 2399 < p unchanged; later ones change."""
    x = _audio(1.0)
    p = 30000
    y = x.clone()
    y[..., p:] += 0.5 * torch.randn_like(y[..., p:])
    with torch.no_grad():
        cx, cy = model.encode(x), model.encode(y)
        ax, ay = model.decode(cx), model.decode(cy)
    j_ok = (p - 2400) // 1920  # frames 0 .. j_ok have 1920 j + 2399 < p
    assert torch.equal(cx[..., : j_ok + 1], cy[..., : j_ok + 1])
    assert not torch.equal(cx[..., j_ok + 1 :], cy[..., j_ok + 1 :])
    n_ok = j_ok * 1920  # samples in blocks 0 .. j_ok - 1 need codes up to j_ok
    assert torch.allclose(ax[..., :n_ok], ay[..., :n_ok], atol=1e-6)
    assert not torch.allclose(ax[..., n_ok + 1920 :], ay[..., n_ok + 1920 :], atol=1e-4)


def test_state_snapshot_and_restore(model):
    """get_state / set_state: resuming a stream from a snapshot repeats the same output."""
    x = _audio(1.0)
    with torch.no_grad(), streaming(model.decoder):
        codes = model.encode(x)
        model.decoder(model.quantizer.decode(codes[..., :10]))
        snap = get_state(model.decoder)
        a = model.decoder(model.quantizer.decode(codes[..., 10:]))
        set_state(model.decoder, snap)
        b = model.decoder(model.quantizer.decode(codes[..., 10:]))
    assert torch.equal(a, b)


def test_one_stream_at_a_time(model):
    with StreamingEncoder(model), pytest.raises(RuntimeError, match="already"):
        StreamingEncoder(model)
    enc = StreamingEncoder(model)
    enc.close()
    with pytest.raises(RuntimeError, match="closed"):
        enc.push(torch.zeros(1, 2, 10))


def _push_all(enc, x, sizes):
    out, pos = [], 0
    for n in sizes:
        out.append(enc.push(x[..., pos : pos + n]))
        pos += n
    return out, pos


def test_encoder_snapshot_mid_stream_continues_bit_exactly(model):
    """A snapshot taken mid code frame (STFT samples and frames pending) restores everything:
    the layers, the partial frames and the sample count that ``flush`` pads from."""
    x = _audio(1.3, seed=5)
    sizes = _chunks(x.shape[-1], "random", seed=3)
    cut = len(sizes) // 2
    with torch.no_grad(), StreamingEncoder(model) as enc:
        head, pos = _push_all(enc, x, sizes[:cut])
        snap = enc.get_state()
        tails = []
        for _ in range(2):  # restoring the same snapshot twice gives the same continuation
            enc.set_state(snap)
            more, _ = _push_all(enc, x[..., pos:], sizes[cut:])
            tails.append(more)
        codes = torch.cat([*head, *tails[1], enc.flush()], -1)
        ref = model.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(tails[0], tails[1], strict=True))
    assert torch.equal(codes, ref)


def test_encoder_snapshot_restores_flush_padding(model):
    """Restoring a snapshot into a fresh stream (another object) resumes with the right count."""
    x = _audio(0.9, seed=6)
    with torch.no_grad():
        ref = model.encode(x)
        with StreamingEncoder(model) as enc:
            a = enc.push(x[..., :20001])
            snap = enc.get_state()
        with StreamingEncoder(model) as enc:
            enc.set_state(snap)
            codes = torch.cat([a, enc.push(x[..., 20001:]), enc.flush()], -1)
    assert torch.equal(codes, ref)


def test_decoder_snapshot_mid_stream_continues_bit_exactly(model):
    x = _audio(1.0, seed=7)
    with torch.no_grad():
        codes = model.encode(x)
        ref = model.decode(codes)
        with StreamingDecoder(model) as dec:
            a = dec.push(codes[..., :1])  # the look-ahead trim is still pending here
            snap = dec.get_state()
            b = dec.push(codes[..., 1:])
            dec.set_state(snap)
            c = dec.push(codes[..., 1:])
    assert torch.equal(b, c)
    assert torch.equal(torch.cat([a, b], -1), torch.cat([a, c], -1))
    assert (torch.cat([a, b], -1) - ref).abs().max() < 1e-5


def test_reset_starts_a_new_stream(model):
    x = _audio(0.6, seed=8)
    with torch.no_grad():
        ref = model.encode(x)
        with StreamingEncoder(model) as enc:
            enc.push(torch.randn(1, 2, 5000))
            enc.reset()
            codes = torch.cat([enc.push(x), enc.flush()], -1)
    assert torch.equal(codes, ref)


def test_steady_steps_reuse_preallocated_state(model):
    """Fed 40 ms blocks, every layer's buffer is allocated once: later steps update in place."""
    from spectrostream.streaming import FrameBuffer

    def buffers():
        return {
            n: m._stream_state.buf.data_ptr()
            for n, m in model.named_modules()
            if isinstance(getattr(m, "_stream_state", None), FrameBuffer)
        }

    x = _audio(0.6, seed=9)
    seen = []
    with torch.inference_mode(), StreamingEncoder(model) as enc, StreamingDecoder(model) as dec:
        for k in range(x.shape[-1] // SAMPLES_PER_CODE):
            dec.push(enc.push(x[..., k * SAMPLES_PER_CODE : (k + 1) * SAMPLES_PER_CODE]))
            seen.append(buffers())
    assert len(seen[2]) > 20  # conv, transposed-conv, STFT buffers
    assert all(s == seen[2] for s in seen[2:])


def test_fold_time_gives_the_conv_frames_as_channels():
    """The folded weight (a step's frames as output channels) computes the same conv."""
    from spectrostream.layers import fold_time

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 10, 48, generator=g)
    w, b = torch.randn(2, 16, 7, 7, generator=g), torch.randn(2, generator=g)
    ref = torch.nn.functional.conv2d(x, w, b, padding=(0, 3))  # 4 output frames
    wf, bf = fold_time(w, b, 4)
    y = torch.nn.functional.conv2d(x, wf, bf, padding=(0, 3))
    assert wf.shape == (8, 16, 10, 7) and y.shape == (2, 8, 1, 48)
    assert torch.allclose(y.reshape(2, 2, 4, 48), ref, atol=1e-4)


@pytest.mark.parametrize("weight_norm", [False, True])
def test_long_windows_fold_by_eight_with_the_plain_convs_values_and_gradients(weight_norm):
    """A 2-channel output conv over 64 frames (training, offline) runs as 8 folded frames at
    time stride 8: same output and same gradients (input, weight, bias) as the plain conv."""
    from spectrostream.layers import FOLD_MAX_FRAMES, CausalConv2d

    torch.manual_seed(4)
    layer = CausalConv2d(16, 2, (7, 7), weight_norm=weight_norm)
    x = torch.randn(2, 16, 64, 40, requires_grad=True)
    assert layer._fold_frames(x, 64) == FOLD_MAX_FRAMES
    assert layer._fold_frames(x, 60) == 1  # not a multiple: the plain conv
    g = torch.randn(2, 2, 64, 40)
    results = []
    for fold in (True, False):
        layer.zero_grad()
        x.grad = None
        if not fold:
            layer._fold_frames = lambda buf, n: 1
        y = layer(x)  # offline: the window starts with the causal zero frames
        y.backward(g)
        grads = [p.grad.clone() for p in layer.parameters()]
        results.append((y.detach(), x.grad.clone(), *grads))
    for a, b in zip(*results, strict=True):  # other summation orders
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    del layer._fold_frames
    with torch.no_grad():  # inference: the folded weight cached (without weight norm)
        torch.testing.assert_close(layer(x), results[0][0], rtol=1e-4, atol=1e-4)


def test_a_hooked_conv_is_not_folded():
    """Observers (int8 calibration's pre-hooks, the init calibration's forward hooks) must see
    the conv run: with a hook on it the layer runs the plain conv."""
    from spectrostream.layers import CausalConv2d

    layer = CausalConv2d(16, 2, (7, 7))
    x = torch.randn(1, 16, 64, 24)
    seen = []
    handle = layer.conv.register_forward_hook(lambda m, i, out: seen.append(out.shape))
    assert layer._fold_frames(x, 64) == 1
    y = layer(x)
    handle.remove()
    assert seen == [y.shape]
    assert layer._fold_frames(x, 64) == 8


@pytest.mark.parametrize("batch", [1, 2])
def test_split_towers_stream_equals_one_thread(model, batch):
    """split_towers=True (channel 1's towers in a worker thread) gives the same codes and
    audio as the one-thread stream, for 40 ms and odd chunks, in batches; its snapshot holds
    the twin's state and restores bit-exactly."""
    n = torch.get_num_threads()
    x = torch.cat([_audio(1.1, seed=8 + b) for b in range(batch)])
    sizes = _chunks(x.shape[-1], "random", seed=4)
    try:
        with torch.no_grad():
            ref = model.encode(x)
            ref_audio = model.decode(ref)
            with StreamingEncoder(model, split_towers=True) as enc:
                head, pos = _push_all(enc, x, sizes[:5])
                snap = enc.get_state()
                assert "split_towers" in snap
                more, _ = _push_all(enc, x[..., pos:], sizes[5:])
                enc.set_state(snap)
                again, _ = _push_all(enc, x[..., pos:], sizes[5:])
                codes = torch.cat([*head, *again, enc.flush()], -1)
            with StreamingDecoder(model, split_towers=True) as dec:
                audio = torch.cat(
                    [dec.push(codes[..., j : j + 1]) for j in range(codes.shape[-1])], -1
                )
            pool = enc._split._pool
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a, b) for a, b in zip(more, again, strict=True))
    assert torch.equal(codes, ref)
    assert (audio - ref_audio).abs().max() < 1e-5
    assert pool._shutdown  # closing the stream stops its worker


def test_split_towers_refuses_what_it_cannot_do(model):
    from spectrostream.errors import UsageError

    with pytest.raises(UsageError, match="cannot be combined"):
        StreamingEncoder(model, split_towers=True, compiled=True)
    mono = SpectroStream(tiny_config(num_levels=2, codebook_size=4, audio_channels=1))
    with pytest.raises(UsageError, match="stereo"):
        StreamingDecoder(mono, split_towers=True)
    with StreamingEncoder(model, split_towers=True) as enc:
        snap = enc.get_state()
    with StreamingEncoder(model) as enc, pytest.raises(UsageError, match="not a streaming"):
        enc.set_state(snap)  # a split stream's state has the twin's part


def test_stream_split_bench_runs(monkeypatch):
    """bench/stream_split.py (smoke): one split stream of the small config, a few steps."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "stream_split.py"
    spec = importlib.util.spec_from_file_location("stream_split", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "stream_split", bench)
    spec.loader.exec_module(bench)
    n = torch.get_num_threads()
    try:
        assert bench.run_one("small", 2, True, None) > 0
    finally:
        torch.set_num_threads(n)
