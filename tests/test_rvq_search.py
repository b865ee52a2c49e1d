"""The RVQ search with pre-transposed, cached tables gives the codes of the search it replaced.

Offline (many frames per call: a matrix product) the codes are bit-identical. One frame per
call (40 ms streaming) goes through a matrix-vector product whose summation order differs from
the old one, as the old one's already differed from the offline search: a code may then differ
only at a near tie (best and second-best distances within a relative 1e-5).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from spectrostream import audio_io, load
from spectrostream.config import SAMPLE_RATE
from spectrostream.quantizer import ResidualVQ

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
TIE = 1e-5  # relative distance gap below which float32 rounding may pick either code


def old_search(codebooks: torch.Tensor, emb: torch.Tensor, n: int) -> torch.Tensor:
    """The search before this change (reference): emb [B, D, N] -> codes [B, n, N]."""
    b, d, t = emb.shape
    r = emb.float().transpose(1, 2).reshape(b * t, d)
    codes = []
    for level in range(n):
        cb = codebooks[level].float()
        idx = ((cb * cb).sum(1) - 2.0 * r @ cb.t()).argmin(dim=1)
        r = r - cb[idx]
        codes.append(idx)
    return torch.stack(codes, 1).reshape(b, t, n).permute(0, 2, 1)


def near_tie(codebooks: torch.Tensor, emb: torch.Tensor, codes: torch.Tensor, level: int) -> bool:
    """Whether the decision at ``level`` (emb [D] one frame, codes [L] the new search's) is a
    near tie in float64: the two best distances within TIE of each other."""
    r = emb.double()
    for lv in range(level):
        r = r - codebooks[lv].double()[codes[lv]]
    d = ((codebooks[level].double() - r) ** 2).sum(1)
    best2 = d.topk(2, largest=False).values
    return float(best2[1] - best2[0]) <= TIE * float(best2[0])


def check(codebooks: torch.Tensor, emb: torch.Tensor) -> int:
    """Offline codes equal the old search's; per-frame codes equal it up to near ties.

    Returns the number of frames whose per-frame codes differ (each at a near tie)."""
    q = ResidualVQ(*codebooks.shape)
    q.codebooks.copy_(codebooks)
    n = codebooks.shape[0]
    assert torch.equal(q.encode(emb), old_search(codebooks, emb, n))
    flips = 0
    for j in range(emb.shape[-1]):
        frame = emb[..., j : j + 1]
        new, old = q.encode(frame)[0, :, 0], old_search(codebooks, frame, n)[0, :, 0]
        if not torch.equal(new, old):
            first = int(torch.nonzero(new != old)[0])
            assert near_tie(codebooks, emb[0, :, j], new, first), (j, first)
            flips += 1
    return flips


def test_parity_fixture_codes(parity_dir):
    from gen_weights import make_param

    fx = np.load(parity_dir / "spectrostream_parity_fixture.npz")
    codebooks = torch.from_numpy(make_param("quantizer/embedding", (64, 1024, 256)).copy())
    emb = torch.from_numpy(fx["enc_emb"]).permute(0, 2, 1).contiguous()
    check(codebooks.float(), emb)


@pytest.mark.parametrize("clip", ["moonlight.flac", "castanets.flac"])
def test_real_audio_codes(clip):
    codec = load()
    audio, _ = audio_io.read_audio(EVAL / clip, sample_rate=SAMPLE_RATE)
    x = torch.from_numpy(audio[:, : 3 * SAMPLE_RATE])
    with torch.inference_mode():
        emb = codec.model.encode_embeddings(x[None].float())
    check(codec.model.quantizer.codebooks.float(), emb)
