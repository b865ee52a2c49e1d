"""The exact CPU RVQ search against the float32 searches, on real music (one-off check).

    PYTHONPATH=src python bench/rvq_exact.py [../shared/eval]
For every clip: embeddings from the shipped model, then codes of (a) the exact search
(``quantizer.exact_search``), whole clip and one frame per call, (b) the float32 torch search
(``EXACT_CPU_SEARCH = False``), whole clip and one frame per call, (c) the exact search one frame
per call with its compiled first pass (``step.CompiledSearch``). Prints how many frames differ
from (a) and, for each differing frame, the relative gap of the two best float64 distances at
the first differing level (a near tie if tiny). Also times one-frame searches side by side.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from spectrostream import audio_io, load, quantizer
from spectrostream.config import SAMPLE_RATE
from spectrostream.step import compiled_search


def gap(codebooks: torch.Tensor, emb: torch.Tensor, codes: torch.Tensor, level: int) -> float:
    r = emb.double()
    for lv in range(level):
        r = r - codebooks[lv].double()[codes[lv]]
    d = ((codebooks[level].double() - r) ** 2).sum(1).topk(2, largest=False).values
    return float((d[1] - d[0]) / d[0])


def search(q: quantizer.ResidualVQ, emb: torch.Tensor, exact: bool, per_frame: bool, first=None):
    quantizer.EXACT_CPU_SEARCH = exact
    try:
        if not per_frame:
            return q.encode(emb), 0.0
        t = time.perf_counter()
        out = [q.encode(emb[..., j : j + 1], first_pass=first) for j in range(emb.shape[-1])]
        return torch.cat(out, -1), (time.perf_counter() - t) / emb.shape[-1]
    finally:
        quantizer.EXACT_CPU_SEARCH = True


def main() -> int:
    torch.set_num_threads(1)
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/eval")
    model = load().model.eval()
    q, cb = model.quantizer, model.quantizer.codebooks
    first = compiled_search(q, q.num_levels)
    names = ("exact 1 frame", "compiled 1 frame", "fp32 offline", "fp32 1 frame")
    frames, diffs, times = 0, dict.fromkeys(names, 0), []
    for path in sorted(folder.glob("*.flac")):
        audio, _ = audio_io.read_audio(path, sample_rate=SAMPLE_RATE)
        with torch.inference_mode():
            emb = model.encode_embeddings(torch.from_numpy(audio)[None].float())
        ref, _ = search(q, emb, True, False)
        frames += emb.shape[-1]
        for name, exact, per, fp in (
            ("exact 1 frame", True, True, None),
            ("compiled 1 frame", True, True, first),
            ("fp32 offline", False, False, None),
            ("fp32 1 frame", False, True, None),
        ):
            codes, dt = search(q, emb, exact, per, fp)
            if per:
                times.append((name, dt))
            for j in torch.nonzero((codes != ref).any(1)[0]).flatten().tolist():
                first = int(torch.nonzero(codes[0, :, j] != ref[0, :, j])[0])
                g = gap(cb, emb[0, :, j], ref[0, :, j], first)
                print(f"{path.name}: {name} differs at frame {j}, level {first}, gap {g:.2e}")
                diffs[name] += 1
    print(f"{frames} frames; frames whose codes differ from the exact whole-clip search: {diffs}")
    for name in ("exact 1 frame", "compiled 1 frame", "fp32 1 frame"):
        ts = sorted(dt for n, dt in times if n == name)
        print(f"{name}: median over clips {1e3 * ts[len(ts) // 2]:.2f} ms per frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
