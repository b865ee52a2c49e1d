"""The RVQ search gives the codes of the float32 search it replaced, and exact ones.

The CPU search (``quantizer.exact_search``) picks the float64-nearest codeword of each level:
it equals a brute-force float64 search, gives the same codes for one frame per call (40 ms
streaming) as for many (offline), and equals the old float32 search except where that one's
rounding decided a near tie (best and second-best distances within a relative 1e-5; none on
the parity fixture or the clips below). The float32 torch search (GPU, ``EXACT_CPU_SEARCH``
off) equals the old search offline and up to near ties per frame.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from spectrostream import audio_io, load, quantizer
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


def float64_search(codebooks: torch.Tensor, emb: torch.Tensor, n: int) -> torch.Tensor:
    """Brute force: the float64-nearest codeword of every level (float32 residual, as the
    search keeps it), emb [1, D, N] -> codes [1, n, N]."""
    twice = (2.0 * emb[0].T.float()).numpy()
    cb = codebooks.float().numpy()
    codes = []
    for level in range(n):
        diff = cb[level][None].astype(np.float64) - 0.5 * twice.astype(np.float64)[:, None]
        best = (diff * diff).sum(-1).argmin(1)
        twice = twice - 2.0 * cb[level][best]
        codes.append(torch.from_numpy(best))
    return torch.stack(codes)[None]


def check(codebooks: torch.Tensor, emb: torch.Tensor) -> int:
    """Exact search: = brute-force float64, per frame = offline, = the old float32 search up to
    near ties; torch float32 search: = old offline, per frame up to near ties.

    Returns the number of frames whose torch per-frame codes differ (each at a near tie)."""
    q = ResidualVQ(*codebooks.shape)
    q.codebooks.copy_(codebooks)
    n = codebooks.shape[0]
    exact, old = q.encode(emb), old_search(codebooks, emb, n)
    assert torch.equal(exact, float64_search(codebooks, emb, n))
    per_frame = [q.encode(emb[..., j : j + 1]) for j in range(emb.shape[-1])]
    assert torch.equal(torch.cat(per_frame, -1), exact)
    for j in torch.nonzero((exact != old).any(1)[0]).flatten().tolist():
        first = int(torch.nonzero(exact[0, :, j] != old[0, :, j])[0])
        assert near_tie(codebooks, emb[0, :, j], exact[0, :, j], first), (j, first)
    quantizer.EXACT_CPU_SEARCH = False
    try:
        assert torch.equal(q.encode(emb), old)
        flips = 0
        for j in range(emb.shape[-1]):
            frame = emb[..., j : j + 1]
            new, ref = q.encode(frame)[0, :, 0], old_search(codebooks, frame, n)[0, :, 0]
            if not torch.equal(new, ref):
                first = int(torch.nonzero(new != ref)[0])
                assert near_tie(codebooks, emb[0, :, j], new, first), (j, first)
                flips += 1
    finally:
        quantizer.EXACT_CPU_SEARCH = True
    return flips


def test_rounding_bound_holds_for_blas_products():
    """The bound the candidate set relies on, checked against float64 on random data."""
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(512, 256, generator=g) * torch.rand(512, 1, generator=g) * 3
    x = torch.randn(8, 256, generator=g) * 5
    approx = (cb * cb).sum(1) - x @ cb.T
    exact = (cb.double() ** 2).sum(1) - x.double() @ cb.double().T
    c = float(cb.double().norm(dim=1).max())
    bound = quantizer.rounding_bound(256) / 2 * (c * c + x.double().norm(dim=1, keepdim=True) * c)
    assert ((approx.double() - exact).abs() <= bound).all()


def test_near_ties_pick_the_float64_nearest(ranking):
    """Two codewords at (almost) the same distance: the float64-nearest wins, the lower index
    on an exact tie, whatever the batch."""
    q = ResidualVQ(1, 4, 3)
    q.codebooks.copy_(torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [-1.0, 0, 0]]]))
    emb = torch.tensor([[0.0, 1.0, 0.0], [0.7, 0.7 + 1e-7, 0.0], [0.7, 0.7, 0.0]]).T[None]
    codes = q.encode(emb)[0, 0].tolist()
    assert codes == [1, 1, 0]  # exact tie 1 = 2 -> 1; 1 nearer by 1e-7; exact tie 0 = 1 -> 0
    assert [q.encode(emb[..., j : j + 1])[0, 0, 0].item() for j in range(3)] == codes


@pytest.fixture(params=["float16 ranking", "float32 ranking"])
def ranking(request, monkeypatch):
    """Both CPU rankings (fbgemm float16 weights where there, float32 numpy) give exact codes."""
    half = request.param == "float16 ranking"
    if half and "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("no fbgemm on this CPU")
    monkeypatch.setattr(quantizer, "HALF_CPU_RANKING", half)
    return half


def test_ranking_in_use(ranking):
    q = ResidualVQ(2, 64, 16)
    assert (q.search_tables().exact.half is not None) == ranking


def test_parity_fixture_codes(parity_dir, ranking):
    from gen_weights import make_param

    fx = np.load(parity_dir / "spectrostream_parity_fixture.npz")
    codebooks = torch.from_numpy(make_param("quantizer/embedding", (64, 1024, 256)).copy())
    emb = torch.from_numpy(fx["enc_emb"]).permute(0, 2, 1).contiguous()
    check(codebooks.float(), emb)


@pytest.mark.parametrize("clip", ["moonlight.flac", "castanets.flac"])
def test_real_audio_codes(clip, ranking):
    codec = load()
    audio, _ = audio_io.read_audio(EVAL / clip, sample_rate=SAMPLE_RATE)
    x = torch.from_numpy(audio[:, : 3 * SAMPLE_RATE])
    with torch.inference_mode():
        emb = codec.model.encode_embeddings(x[None].float())
    check(codec.model.quantizer.codebooks.float(), emb)


def test_decode_sums_codewords_in_level_order():
    """The CPU decode adds the codewords level by level in float32, bit-identical to the loop."""
    g = torch.Generator().manual_seed(2)
    q = ResidualVQ(6, 32, 8)
    codes = torch.randint(0, 32, (2, 5, 7), generator=g)
    ref = torch.zeros(2 * 7, 8)
    for level, idx in enumerate(codes.transpose(0, 1).reshape(5, 14)):
        ref = ref + q.codebooks[level][idx]
    assert torch.equal(q.decode(codes), ref.reshape(2, 7, 8).transpose(1, 2))


def test_long_outlier_codewords_keep_the_window_of_the_others(ranking, monkeypatch):
    """A trained codebook can hold a few codewords far longer than the rest (default v3: norms
    near 50 where 99% are below 4-38). Codes stay exact, and those outliers get their own
    re-rank window instead of widening everyone's: without that a stream step re-ranked
    hundreds of ordinary codewords per level and ran 3x slower."""
    g = torch.Generator().manual_seed(5)
    levels, k, d = 8, 256, 32
    scale = 0.7 ** torch.arange(levels, dtype=torch.float32)[:, None, None]
    plain = torch.randn(levels, k, d, generator=g) * scale
    emb = torch.randn(1, d, 40, generator=g) * 1.5
    spiked = plain.clone()
    spiked[:, :3] = torch.nn.functional.normalize(spiked[:, :3], dim=-1) * 60.0
    reranked = []
    real = quantizer._rerank
    monkeypatch.setattr(
        quantizer, "_rerank", lambda t, r, c: reranked.append(len(c)) or real(t, r, c)
    )
    counts = []
    for books in (plain, spiked):
        check(books, emb)  # exact: = brute-force float64, per frame = offline
        q = ResidualVQ(levels, k, d)
        q.codebooks.copy_(books)
        tab = q.search_tables().exact
        reranked.clear()
        for j in range(emb.shape[-1]):
            q.encode(emb[..., j : j + 1])
        counts.append(sum(reranked))
    assert all(o.size == 3 for o in tab.outliers) and max(c for c, _ in tab.cap) < 60.0
    assert counts[1] <= counts[0] + emb.shape[-1] * levels  # at most the outliers' own checks


def test_outliers_far_is_a_sound_shortcut():
    """The scalar test that skips the outliers' own check: true for an ordinary input, false
    for one that points at an outlier (whose score then does come near the best)."""
    g = torch.Generator().manual_seed(6)
    books = torch.randn(1, 256, 32, generator=g)
    books[0, :2] = torch.nn.functional.normalize(books[0, :2], dim=-1) * 60.0
    q = ResidualVQ(1, 256, 32)
    q.codebooks.copy_(books)
    tab = q.search_tables().exact
    for x, far in ((torch.randn(32, generator=g), True), (2.0 * books[0, 0], False)):
        aug = np.append(x.numpy(), np.float32(1.0)).astype(np.float32)
        approx = tab.rank(0, aug, x[None].contiguous())
        best = int(approx.argmin())
        assert tab.outliers_far(0, float(x.norm()), best, float(approx[best])) == far


def _brute(books: torch.Tensor, frame: np.ndarray) -> np.ndarray:
    """float64_search of one frame given as 2 x embedding [D]."""
    emb = torch.from_numpy(frame / 2.0)[None, :, None]
    return float64_search(books, emb, books.shape[0])[0, :, 0].numpy()


def test_a_changed_decision_searches_the_later_levels_again(ranking, monkeypatch):
    """One frame's levels first take the argmin of their scores, all are then checked at once;
    where the float64 re-rank changes a level's code, the levels after it are searched again
    from the new residual. Forced here: twin codewords 1e-6 apart, and scores perturbed within
    the error bound the window allows for, so that the argmin often picks the wrong twin."""
    g = torch.Generator().manual_seed(8)
    levels, k, d = 6, 64, 16
    base = torch.randn(levels, k // 2, d, generator=g) * 0.6 ** torch.arange(levels)[:, None, None]
    books = torch.cat([base, base * (1 + 1e-6)], 1)
    q = ResidualVQ(levels, k, d)
    q.codebooks.copy_(books)
    tab = q.search_tables().exact
    real_rank, noise = tab.rank, np.random.default_rng(0)

    def perturbed(level, aug, x):
        out = real_rank(level, aug, x)
        x_norm = float(np.linalg.norm(aug[:d]))
        c = tab.norms[level]
        err = 0.4 * tab.bound / 2 * (c * c + x_norm * c)  # within the proven error
        return (out + noise.uniform(-1, 1, out.shape) * err).astype(np.float32)

    monkeypatch.setattr(tab, "rank", perturbed)
    starts = []
    real_pass = quantizer._argmin_levels
    monkeypatch.setattr(
        quantizer, "_argmin_levels", lambda t, a, s, *r: starts.append(s) or real_pass(t, a, s, *r)
    )
    for _ in range(30):
        frame = (2.0 * books[np.arange(levels), noise.integers(0, k, levels)].sum(0)).numpy()
        frame += noise.normal(0, 1e-3, d).astype(np.float32)
        codes, _ = quantizer.exact_search(frame[None].copy(), tab, levels, False)
        assert np.array_equal(codes[0], _brute(books, frame))
    assert sum(s > 0 for s in starts) >= 5  # the later levels were searched again


def test_copied_codewords_are_never_candidates(ranking, monkeypatch):
    """A codeword equal to one of lower index (trained codebooks hold thousands) can only tie
    with it, and the lower index wins: it is ranked out, so an input next to such a pair takes
    the lower index without a re-rank."""
    g = torch.Generator().manual_seed(9)
    books = torch.randn(2, 32, 8, generator=g)
    books[:, 20] = books[:, 3]
    books[:, 31] = books[:, 3]
    q = ResidualVQ(2, 32, 8)
    q.codebooks.copy_(books)
    reranked = []
    real = quantizer._rerank
    monkeypatch.setattr(
        quantizer, "_rerank", lambda t, r, c: reranked.append(c.tolist()) or real(t, r, c)
    )
    emb = (books[0, 3] + 0.5 * books[1, 3])[None, :, None]
    assert q.encode(emb)[0, :, 0].tolist() == [3, 3]
    assert q.encode(emb.repeat(1, 1, 3))[0, :, 0].tolist() == [3, 3]
    assert not reranked


def test_compiled_first_pass_gives_the_exact_codes(ranking):
    """``step.CompiledSearch`` (the compiled first pass of a stream step's search) on the
    shipped model's first 8 levels and real music: per frame, the codes of the brute-force
    float64 search and of the eager search."""
    from spectrostream import step

    codec = load()
    audio, _ = audio_io.read_audio(EVAL / "castanets.flac", sample_rate=SAMPLE_RATE)
    with torch.inference_mode():
        emb = codec.model.encode_embeddings(torch.from_numpy(audio[None, :, :SAMPLE_RATE]))
    books = codec.model.quantizer.codebooks[:8].clone()
    q = ResidualVQ(*books.shape)
    q.codebooks.copy_(books)
    search = step.compiled_search(q, 8)
    if search is None:
        pytest.skip("torch.compile is not available here")
    twice = (2.0 * emb[0].T).contiguous().numpy()
    for frame in twice:
        got, _ = quantizer.exact_search(frame[None].copy(), search.tables, 8, False, search)
        want, _ = quantizer.exact_search(frame[None].copy(), search.tables, 8, False)
        assert np.array_equal(got[0], want[0])
        assert np.array_equal(got[0], _brute(books.float(), frame))
