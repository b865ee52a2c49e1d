"""An exact one-frame RVQ search ranked by int8 x int8 products (torch._int_mm): a probe.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/rvq_int8.py [--bits 127|63] [--clips a,b,c]

Per level the doubled residual x is rounded to int8 here (its rounding error e is known), the
codewords are per-codeword int8 (c_hat), and a score's error is bounded by
||x_hat|| ||c - c_hat|| + ||e|| ||c|| plus the float32 terms of ``quantizer.ExactTables``;
codewords within the window are re-ranked in float64 as ``exact_search`` does. Prints the frames
whose codes differ from ``exact_search`` (must be 0), the mean candidates per level, and the time
per frame of both searches, interleaved. Not used by the package (docs/benchmarks.md, round 3).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from spectrostream import audio_io, load
from spectrostream.quantizer import SearchTables, _rerank, exact_search, ordinary_cap


class Int8Tables:
    def __init__(self, tables: SearchTables, bits: int) -> None:
        """Int8 copies of the exact search's tables; ``sq``: the float32 ||c||^2 it ranks by."""
        self.rows, self.bound = tables.exact.rows, tables.exact.bound
        self.sq = [n.numpy() for n in tables.norms]
        self.w, self.scale, self.qerr, self.norm = [], [], [], []
        self.cap = []
        for r in self.rows:
            r64 = r.astype(np.float64)
            s = np.abs(r64).max(1) / bits
            s[s == 0] = 1.0
            cq = np.clip(np.rint(r64 / s[:, None]), -bits, bits)
            chat = cq * s[:, None]
            self.w.append(torch.from_numpy(cq.astype(np.int8).T.copy()))  # [D, K]
            self.scale.append(s.astype(np.float32))
            self.qerr.append(np.sqrt(((r64 - chat) ** 2).sum(1)))
            n = np.maximum(np.sqrt((r64**2).sum(1)), np.sqrt((chat**2).sum(1)))
            self.norm.append(n)
            cap = ordinary_cap(n)
            out = np.flatnonzero(n > cap)
            self.cap.append((cap, float(np.delete(self.qerr[-1], out).max()), out))

    def error(self, big_x: float, e: float, c, q):
        return self.bound * (c * c + big_x * c) + q * big_x + e * c


def search_frame(x: np.ndarray, tab: Int8Tables, stats: dict) -> np.ndarray:
    """x [D] float32 = 2 x the embedding (updated in place) -> codes [levels]."""
    codes = np.empty(len(tab.rows), np.int64)
    for lv, rows in enumerate(tab.rows):
        m = float(np.abs(x).max())
        sx = m / 127.0 if m > 0 else 1.0
        xi = np.rint(x / sx)
        e = math.sqrt(float(((x.astype(np.float64) - xi * sx) ** 2).sum()))
        big_x = math.sqrt(float(x @ x)) * 1.0001 + e
        prod = torch._int_mm(torch.from_numpy(xi.astype(np.int8))[None], tab.w[lv])[0].numpy()
        approx = tab.sq[lv] - (np.float32(sx) * tab.scale[lv]) * prod.astype(np.float32)
        best = int(approx.argmin())
        top = float(approx[best])
        cap, qcap, out = tab.cap[lv]
        eb = tab.error(big_x, e, tab.norm[lv][best], tab.qerr[lv][best])
        limit = top + 2.0 * (eb + tab.error(big_x, e, cap, qcap))
        own = top + 2.0 * (eb + tab.error(big_x, e, tab.norm[lv][out], tab.qerr[lv][out]))
        approx[best] = np.inf
        close = out[approx[out] <= own]
        stats["levels"] += 1
        stats["candidates"] += 1
        if approx.min() <= limit or close.size:
            approx[best] = top
            cands = np.union1d(np.flatnonzero(approx <= limit), close)
            stats["candidates"] += cands.size - 1
            stats["reranked"] += 1
            best = _rerank(x, rows, cands)
        codes[lv] = best
        x -= 2.0 * rows[best]
    return codes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", type=int, default=127, help="codeword range: 127 (8 bit) or 63")
    p.add_argument("--clips", default="harpsichord,moonlight,castanets")
    p.add_argument("--data", default="../shared/eval")
    args = p.parse_args()
    torch.set_num_threads(1)
    codec = load("default")
    tables = codec.model.quantizer.search_tables()
    exact = tables.exact
    tab = Int8Tables(tables, args.bits)
    frames = []
    for clip in args.clips.split(","):
        audio, _ = audio_io.read_audio(
            f"{args.data}/{clip}.flac", sample_rate=48000, num_frames=4 * 48000
        )
        with torch.no_grad():
            emb = codec.model.encode_embeddings(torch.from_numpy(audio)[None])[0]
        frames += [(2.0 * f).numpy().astype(np.float32) for f in emb.T]
    stats = {"levels": 0, "candidates": 0, "reranked": 0}
    differ = 0
    for f in frames:
        ref, _ = exact_search(f[None].copy(), exact, len(exact.rows), False)
        differ += int(not np.array_equal(ref[0], search_frame(f.copy(), tab, stats)))
    print(
        f"{len(frames)} frames, {differ} differ from exact_search; candidates per level "
        f"{stats['candidates'] / stats['levels']:.2f}, re-ranked "
        f"{stats['reranked'] / stats['levels']:.1%} of levels"
    )
    for rnd in range(3):
        for name in ("exact_search (float16 ranking)", "int8 ranking"):
            t = time.perf_counter()
            for f in frames[::2]:
                if name.startswith("exact"):
                    exact_search(f[None].copy(), exact, len(exact.rows), False)
                else:
                    search_frame(f.copy(), tab, {"levels": 0, "candidates": 0, "reranked": 0})
            ms = (time.perf_counter() - t) / len(frames[::2]) * 1e3
            print(f"round {rnd}: {name}: {ms:.2f} ms per frame")


if __name__ == "__main__":
    main()
