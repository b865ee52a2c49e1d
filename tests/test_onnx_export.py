"""The ONNX step graphs (``spectrostream export-onnx``) run with onnxruntime on CPU and match
PyTorch within 1e-4 over 100 steps (4 s) of real music; the pure step matches streaming."""

from pathlib import Path

import numpy as np
import pytest
import torch

from spectrostream import Codec, audio_io
from spectrostream.cli import main
from spectrostream.config import FRAMES_PER_CODE, SAMPLE_RATE, SAMPLES_PER_CODE, tiny_config
from spectrostream.model import SpectroStream, StreamingEncoder
from spectrostream.step import decoder_step, encoder_step

ort = pytest.importorskip("onnxruntime")
EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
STEPS = 100


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    codec = Codec(SpectroStream(tiny_config(num_levels=8, codebook_size=64)).eval())
    path = tmp_path_factory.mktemp("onnx") / "tiny.safetensors"
    codec.save(path)
    audio, _ = audio_io.read_audio(EVAL / "moonlight.flac", sample_rate=SAMPLE_RATE)
    x = torch.from_numpy(audio[:, 48000 : 48480 + STEPS * SAMPLES_PER_CODE])[None].float()
    return codec.model, path, x


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def run_steps(session, xs: list[np.ndarray], n_states: int) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    state = [np.zeros(i.shape, np.float32) for i in session.get_inputs()[1:]]
    assert len(state) == n_states
    ys = []
    for x in xs:
        y, *state = session.run(None, dict(zip(names, [x, *state], strict=True)))
        ys.append(y)
    return ys


def test_onnx_steps_match_pytorch_on_real_audio(tiny, tmp_path):
    model, path, x = tiny
    assert main(["export-onnx", str(path), "-o", str(tmp_path / "out")]) == 0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = {
        p: ort.InferenceSession(str(tmp_path / "out" / f"{p}_step.onnx"), opts)
        for p in ("encoder", "decoder")
    }
    with torch.no_grad():
        spec = model.stft(x)[..., : STEPS * FRAMES_PER_CODE, :]  # STFT outside the graph
        ref_emb = model.encoder(spec)  # offline PyTorch, [1, D, 100]
        groups = spec.split(FRAMES_PER_CODE, dim=3)
        n_states = len(encoder_step(model).state_shapes)
        emb = np.concatenate(run_steps(sess["encoder"], [g.numpy() for g in groups], n_states), -1)
        assert emb.shape == ref_emb.shape
        assert rel(emb, ref_emb.numpy()) < 1e-4
        deq = model.quantizer.quantize(ref_emb)[1]  # RVQ outside the graph
        ref_spec = model.decoder(deq)  # [1, C, 2, 400, 480]
        out = run_steps(
            sess["decoder"],
            [deq[..., j : j + 1].numpy() for j in range(STEPS)],
            len(decoder_step(model).state_shapes),
        )
    assert rel(np.concatenate(out, 3), ref_spec.numpy()) < 1e-4


def test_pure_step_equals_streaming(tiny):
    """Step by step, the pure step function gives the streaming encoder's embeddings (fed the
    same 40 ms blocks) exactly, and leaves its input state untouched."""
    model, _, x = tiny
    step = encoder_step(model)
    state = step.initial_state()
    ys, ref = [], []
    with torch.no_grad():
        spec = model.stft(x)[..., : 20 * FRAMES_PER_CODE, :]
        for g in spec.split(FRAMES_PER_CODE, dim=3):
            before = [s.clone() for s in state]
            y, *new = step(g, *state)
            assert all(torch.equal(a, b) for a, b in zip(before, state, strict=True))
            ys.append(y)
            state = new
        with StreamingEncoder(model) as enc:
            for j in range(20):
                lo = 0 if j == 0 else 480 + j * SAMPLES_PER_CODE
                ref.append(enc.push_embeddings(x[..., lo : 480 + (j + 1) * SAMPLES_PER_CODE]))
            with pytest.raises(RuntimeError, match="open stream"):
                step(spec[..., :FRAMES_PER_CODE, :], *state)
    ys, ref = torch.cat(ys, -1), torch.cat(ref, -1)
    assert ref.shape == ys.shape == (1, model.config.embedding_dim, 20)
    assert torch.equal(ys, ref)
