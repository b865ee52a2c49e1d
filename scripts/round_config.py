"""The GPU round's training config, fitted to the machine: a batch size from a throughput probe
and the lr decay over the round's second half (docs/training.md, "A GPU round").

    python scripts/round_config.py CONFIG -o ROUND.toml --minutes M --probe PROBE
    python scripts/round_config.py CONFIG -o ROUND.toml --minutes M --batch N [--rate STEPS_PER_S]

PROBE is bench/train_speed.py's output for a few batch sizes of CONFIG (its --json file, or its
printed log: one JSON line per batch). The batch with the
most audio-seconds per second is taken if it beats CONFIG's own batch by SWITCH_GAIN (the probe
times only a few steps); else CONFIG's batch stays. A larger batch keeps the autoencoder
re-warm-up the same length in audio (quantizer.ae_steps scaled down). Where the step rate is
known (probe or --rate), a config with a decay gets it over the second half of the steps that
M minutes hold (a round stopped by its time limit would otherwise end before or part-way down
the cosine). The lr stays as configured. Prints the choice as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spectrostream.train.config import TrainConfig

SWITCH_GAIN = 1.15
# Share of the round's wall time spent in training steps (k-means, validation and checkpoints
# take the rest; rounds 1-2 of session 9: 4,443 steps in 7.5 min at 10.36 steps/s = 95%).
TIME_SHARE = 0.9


def read_probe(path: Path) -> list[dict[str, Any]]:
    """bench/train_speed.py's rows: its --json list, or the JSON line it prints per batch (what
    a probe stopped by a time limit has left)."""
    text = path.read_text()
    try:
        rows = json.loads(text)
        return rows if isinstance(rows, list) else []
    except ValueError:
        pass
    rows = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def choose_batch(probe: list[dict[str, Any]], base: int) -> tuple[int, float | None]:
    """(batch, its steps per second) from bench/train_speed.py rows; (base, None) if none ran."""
    ok = [r for r in probe if not r.get("error") and r.get("steps_per_s", 0) > 0]
    if not ok:
        return base, None
    best = max(ok, key=lambda r: r["audio_s_per_s"])
    own = next((r for r in ok if r["batch"] == base), None)
    if own is not None and best["audio_s_per_s"] < SWITCH_GAIN * own["audio_s_per_s"]:
        best = own
    return int(best["batch"]), float(best["steps_per_s"])


def fit(
    cfg: TrainConfig, batch: int, rate: float | None, minutes: float, max_steps: int | None
) -> TrainConfig:
    """``cfg`` with ``batch``, the re-warm-up scaled to it, and the decay over the second half
    of the expected steps (``rate`` steps/s for ``minutes``, at most ``max_steps`` and the
    config's own max_steps)."""
    base = cfg.data.batch_size
    ae = cfg.quantizer.ae_steps
    if batch != base and ae > 0:
        ae = max(1, round(ae * base / batch))
    changes: dict[str, Any] = {
        "data": {"batch_size": batch},
        "quantizer": {"ae_steps": ae},
    }
    steps = int(rate * minutes * 60 * TIME_SHARE) if rate else None
    if max_steps is not None:
        steps = max_steps if steps is None else min(steps, max_steps)
    if steps is not None:  # unknown (no rate, no --steps): the config's decay stays
        steps = min(steps, cfg.optim.max_steps)
    if steps is not None and cfg.optim.decay_steps > 0:
        half = max(ae, steps // 2)
        changes["optim"] = {"decay_start": half, "decay_steps": max(1, steps - half)}
    return cfg.with_(**changes)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def to_toml(d: dict[str, Any], header: str) -> str:
    """A flat config dict (scalars, then one level of tables) as TOML; None values left out."""
    lines = [f"# {line}" for line in header.splitlines()]
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in d.items() if k not in tables and v is not None]
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--max-steps", type=int)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--probe", help="bench/train_speed.py's --json file or printed log")
    src.add_argument("--batch", type=int)
    p.add_argument("--rate", type=float, help="steps per second at --batch (from a past round)")
    args = p.parse_args(argv)
    cfg = TrainConfig.from_toml(args.config)
    probe: list[dict[str, Any]] = []
    if args.probe:
        try:
            probe = read_probe(Path(args.probe))
        except OSError as e:
            print(f"round_config.py: no usable probe ({e}); keeping the batch", file=sys.stderr)
        batch, rate = choose_batch(probe, cfg.data.batch_size)
    else:
        batch, rate = args.batch, args.rate
    fitted = fit(cfg, batch, rate, args.minutes, args.max_steps)
    choice = {
        "batch_size": batch,
        "steps_per_s": rate,
        "minutes": args.minutes,
        "ae_steps": fitted.quantizer.ae_steps,
        "decay_start": fitted.optim.decay_start,
        "decay_steps": fitted.optim.decay_steps,
        "probe": [
            {k: r.get(k) for k in ("batch", "steps_per_s", "audio_s_per_s", "error")} for r in probe
        ],
    }
    header = f"{Path(args.config).name}, fitted by scripts/round_config.py:\n{json.dumps(choice)}"
    Path(args.output).write_text(to_toml(fitted.to_dict(), header), encoding="utf-8")
    assert TrainConfig.from_toml(args.output) == fitted, "round_config.py: TOML round trip"
    print(json.dumps(choice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
