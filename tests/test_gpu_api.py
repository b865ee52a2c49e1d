"""Device and dtype choice, batched encoding of clips of any length, the LM-facing token API."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from spectrostream.cli import main
from spectrostream.codec import Codec, load
from spectrostream.config import SAMPLES_PER_CODE, tiny_config
from spectrostream.device import exact_fp32, rank_device, resolve_device, resolve_dtype
from spectrostream.model import SpectroStream
from spectrostream.official import ModelError


def make_codec(seed: int = 0) -> Codec:
    torch.manual_seed(seed)
    return Codec(SpectroStream(tiny_config(num_levels=12, codebook_size=1024)))


@pytest.fixture(scope="module")
def codec():
    return make_codec()


@pytest.fixture(scope="module")
def model_file(codec, tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    codec.save(p)
    return p


def noise(channels: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 48000
    x = 0.3 * np.sin(2 * np.pi * 220 * (seed + 1) * t) + 0.1 * rng.standard_normal((channels, n))
    return x.astype(np.float32)


# ---- device and dtype -------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_is_a_model_error(model_file, tmp_path, capsys):
    with pytest.raises(ModelError, match="CUDA is not available"):
        load(model_file, device="cuda")
    with pytest.raises(ModelError, match="CUDA is not available"):
        resolve_device("cuda:1")
    wav = tmp_path / "a.wav"
    sf.write(wav, noise(2, 4800, 0).T, 48000)
    args = ["encode", str(wav), str(tmp_path / "a.ssc"), "--model", str(model_file)]
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "a.ssc").exists()
    assert main([*args, "--device", "auto"]) == 0  # auto falls back to the CPU


def test_bad_device_and_dtype_names():
    if not torch.backends.mps.is_available():
        with pytest.raises(ModelError, match="MPS"):
            resolve_device("mps")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(ModelError, match="unsupported device"):
        resolve_device("meta")
    with pytest.raises(ModelError, match="unknown dtype"):
        resolve_dtype("int8")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(None) is torch.float32


def test_torchrun_ranks_take_their_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert [rank_device(d) for d in ("auto", "cuda", "cpu", "cuda:1")] == [
        "cuda:3",
        "cuda:3",
        "cpu",
        "cuda:1",
    ]
    monkeypatch.delenv("LOCAL_RANK")
    assert rank_device("auto") == "auto"


def test_exact_fp32_forces_ieee_and_restores():
    knob = torch.backends.mkldnn.matmul
    before = knob.fp32_precision
    try:
        knob.fp32_precision = "bf16"
        with exact_fp32(torch.device("cpu"), convs=False):
            assert knob.fp32_precision == "ieee"
        assert knob.fp32_precision == "bf16"
    finally:
        knob.fp32_precision = before
    # CUDA: cuDNN convolutions default to TF32; fp32 mode turns that off, the search alone not.
    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    with exact_fp32(torch.device("cuda"), convs=True):
        assert conv.fp32_precision == "ieee"
    assert conv.fp32_precision == before
    with exact_fp32(torch.device("cuda"), convs=False):
        assert conv.fp32_precision == before


def test_fp32_codes_equal_the_plain_model(codec):
    """The precision guard and batching leave fp32 codes exactly as the network computes them."""
    x = noise(2, 48000 + 123, 1)
    codes = codec.encode(x, 48000)
    padded = F.pad(torch.from_numpy(x)[None], (0, SAMPLES_PER_CODE))  # the appended silence
    with torch.no_grad():
        ref = codec.model.encode(padded)
    assert torch.equal(codes, ref)


def test_bf16_and_fp16_run_on_cpu(model_file):
    ref = load(model_file)
    x = noise(2, 3 * 48000, 2)
    want = ref.encode(x, 48000)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        half = load(model_file, dtype=name)
        assert half.dtype == dtype and half.model.encoder.base_conv_first.conv.weight.dtype == dtype
        assert half.codebooks.dtype == torch.float32  # the RVQ stays float32
        got = half.encode(x, 48000)
        assert got.shape == want.shape
        # Reduced-precision convs move some codes; the first level, chosen from the largest
        # codewords, mostly agrees.
        assert (got[:, 0] == want[:, 0]).float().mean() > 0.5
        audio = half.decode(want)
        assert audio.dtype == torch.float32 and torch.isfinite(audio).all()
        err = (audio - ref.decode(want)).norm() / ref.decode(want).norm()
        assert err < 0.1
        with pytest.raises(ModelError, match="load the model again"):
            half.to(dtype="fp32")


# ---- a list of clips ---------------------------------------------------------------------------
def test_list_encode_equals_each_clip_alone(codec):
    lengths = [48000, 7, 1920, 1921, 100_000, 3 * 1920 - 1, 12_345]
    clips = [noise(2, n, i) for i, n in enumerate(lengths)]
    alone = [codec.encode(c, 48000, levels=10)[0] for c in clips]
    for batch in (1, 3, len(clips)):
        many = codec.encode(clips, 48000, levels=10, batch_size=batch)
        assert [m.shape[-1] for m in many] == [-(-n // 1920) + 1 for n in lengths]
        for a, m in zip(alone, many, strict=True):
            assert torch.equal(a, m)


def test_list_encode_mixed_rates_and_channels(codec):
    clips = [noise(1, 44100, 3), torch.from_numpy(noise(2, 16000, 4)), noise(2, 30000, 5)]
    rates = [44100, 16000, 48000]
    many = codec.encode(clips, rates, kbps=2)
    for clip, sr, m in zip(clips, rates, many, strict=True):
        assert torch.equal(codec.encode(clip, sr, kbps=2)[0], m)
    with pytest.raises(ValueError, match="2 sample rates"):
        codec.encode(clips, [48000, 48000])


# ---- tokens for language models ----------------------------------------------------------------
def test_codebooks_embed_quantize(codec):
    cb = codec.codebooks
    assert cb.shape == (12, 1024, 16) and cb.dtype == torch.float32
    x = torch.from_numpy(noise(2, 20000, 6))[None]
    with torch.no_grad():
        latent = codec.model.encode_embeddings(F.pad(x, (0, SAMPLES_PER_CODE)))
    codes = codec.quantize(latent, levels=5)
    assert torch.equal(codes, codec.encode(x, 48000, levels=5))
    emb = codec.embed(codes)
    by_hand = sum(cb[q][codes[:, q]] for q in range(5)).transpose(1, 2)
    assert torch.allclose(emb, by_hand, atol=1e-6)
    _, dequantized = codec.model.quantizer.quantize(latent, 5)
    assert torch.equal(emb, dequantized)
    # The decoder's input is embed(codes): decoding the embedding gives decode(codes).
    with torch.no_grad():
        audio = codec.model.decode_embeddings(emb)
    assert torch.equal(audio, codec.decode(codes))
    # Each level removes part of the residual: more levels, closer to the latent.
    errs = [(codec.embed(codec.quantize(latent, q)) - latent).norm() for q in (1, 4, 12)]
    assert errs[0] > errs[1] > errs[2]
    with pytest.raises(ModelError, match="latent must be"):
        codec.quantize(latent[:, :3])
    with pytest.raises(ModelError, match="codes must be in"):
        codec.embed(codes + 1024)


def test_mrt_layout_round_trip(codec):
    n = 48000 + 1000  # 25.52 code frames: MRT keeps 25 whole frames, we code 27 (with look-ahead)
    codes = codec.encode(noise(2, n, 7), 48000, levels=6)
    assert codes.shape[-1] == 27
    mrt = codec.to_mrt_codes(codes, num_samples=n)
    assert mrt.dtype == torch.int32 and mrt.shape == (1, 25, 6)
    assert torch.equal(mrt[0, 3], codes[0, :, 3].int())
    assert torch.equal(codec.from_mrt_codes(mrt), codes[..., :25])
    no_lookahead = codec.to_mrt_codes(codes[0])  # [L, N] -> [N - 1, L]
    assert no_lookahead.shape == (26, 6)
    assert torch.equal(codec.from_mrt_codes(no_lookahead), codes[0, :, :26])
    tokens = torch.randint(0, 1024, (2, 9, 12), dtype=torch.int32)
    back = codec.from_mrt_codes(tokens)
    assert back.dtype == torch.int64 and back.shape == (2, 12, 9)
    assert torch.equal(codec.to_mrt_codes(torch.cat([back, back[..., :1]], -1)), tokens)
    with pytest.raises(ModelError, match="levels"):
        codec.from_mrt_codes(torch.zeros(5, 13, dtype=torch.int32))
