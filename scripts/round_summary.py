"""JSON summary of a GPU round: steps, time, data, init model, and the last validation.

python scripts/round_summary.py RUN_DIR DATA_DIR INIT_MODEL SECONDS [FIT_JSON]

FIT_JSON: scripts/round_config.py's choice (batch, throughput probe, decay), kept as "fit".
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def last_scalars(tb_dir: Path) -> dict[str, tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    ea.Reload()
    out = {}
    for tag in ea.Tags()["scalars"]:
        ev = ea.Scalars(tag)[-1]
        out[tag] = (ev.step, ev.value)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str]) -> int:
    run, data, init, seconds = Path(argv[0]), Path(argv[1]), Path(argv[2]), float(argv[3])
    fit = json.loads(Path(argv[4]).read_text()) if len(argv) > 4 else None
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    step = int(ckpts[-1].stem.split("_")[1]) if ckpts else 0
    cfg = json.loads((run / "train_config.json").read_text())
    scalars = last_scalars(run / "tb")
    val = {k: {"step": s, "value": v} for k, (s, v) in scalars.items() if k.startswith("val/")}
    train_keys = ("metrics/si_sdr", "perf/steps_per_s", "perf/audio_s_per_s")
    train = {k: scalars[k][1] for k in train_keys if k in scalars}
    shares = {k: v for k, (_, v) in scalars.items() if k.startswith("share/")}
    manifest = data / "manifest.json"
    steps_audio_h = step * cfg["data"]["batch_size"] * cfg["data"]["crop_seconds"] / 3600
    summary = {
        "steps": step,
        "wall_seconds": seconds,
        "audio_hours_seen": round(steps_audio_h, 3),
        "init_model_sha256": sha256(init),
        "data_manifest_sha256": sha256(manifest) if manifest.is_file() else None,
        "train": train,
        "loss_shares": shares,
        "validation": val,
        "train_config": cfg,
        "fit": fit,
    }
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
