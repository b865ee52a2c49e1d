"""scripts/round_config.py: the GPU round's batch from a throughput probe, and its lr decay."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from spectrostream.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("round_config", ROOT / "scripts/round_config.py")
rc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rc)

ROUND = ROOT / "configs" / "gpu_round.toml"


def row(batch, steps_per_s, crop=1.28, error=None):
    return {
        "batch": batch,
        "steps_per_s": steps_per_s,
        "audio_s_per_s": steps_per_s * batch * crop,
        "error": error,
    }


def test_choose_batch_takes_the_most_audio_only_by_a_margin():
    # 64 gives 1.7x the audio per second of 32, 128 less than 64
    probe = [row(32, 10.0), row(64, 8.5), row(128, 3.5)]
    assert rc.choose_batch(probe, 32) == (64, 8.5)
    # 64 is only 1.1x better: within the probe's noise, the config's batch stays
    assert rc.choose_batch([row(32, 10.0), row(64, 5.5)], 32) == (32, 10.0)
    # failed rows are ignored; nothing usable: the config's batch, rate unknown
    assert rc.choose_batch([row(32, 10.0), row(64, 0, error="out of memory")], 32) == (32, 10.0)
    assert rc.choose_batch([row(32, 0, error="x")], 32) == (32, None)
    assert rc.choose_batch([], 32) == (32, None)


def test_fit_scales_the_rewarmup_and_puts_the_decay_over_the_second_half():
    cfg = TrainConfig.from_toml(ROUND)
    assert cfg.data.batch_size == 32 and cfg.quantizer.ae_steps == 300
    fitted = rc.fit(cfg, 64, 8.0, minutes=8, max_steps=None)
    steps = int(8.0 * 8 * 60 * rc.TIME_SHARE)
    assert fitted.data.batch_size == 64
    assert fitted.quantizer.ae_steps == 150  # the same audio before the k-means refit
    assert fitted.optim.decay_start == steps // 2
    assert fitted.optim.decay_start + fitted.optim.decay_steps == steps
    assert fitted.optim.lr == cfg.optim.lr and fitted.loss == cfg.loss
    # --steps caps the expected length; no rate and no cap: the config's decay is kept
    capped = rc.fit(cfg, 32, 10.0, minutes=8, max_steps=1000)
    assert (capped.optim.decay_start, capped.optim.decay_steps) == (500, 500)
    kept = rc.fit(cfg, 32, None, minutes=8, max_steps=None)
    assert kept == cfg


def test_the_written_toml_is_the_fitted_config(tmp_path):
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps([row(32, 10.0), row(64, 9.0), row(128, 5.0)]))
    out = tmp_path / "round.toml"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts/round_config.py"), str(ROUND), "-o", str(out)]
        + ["--minutes", "8", "--probe", str(probe)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    choice = json.loads(r.stdout)
    assert choice["batch_size"] == 128 and len(choice["probe"]) == 3
    cfg = TrainConfig.from_toml(out)
    assert cfg == rc.fit(TrainConfig.from_toml(ROUND), 128, 5.0, 8, None)
    assert cfg.model_config() == TrainConfig.from_toml(ROUND).model_config()


def test_read_probe_takes_the_json_list_or_the_printed_lines(tmp_path):
    rows = [row(32, 10.0), row(64, 9.0)]
    listed = tmp_path / "probe.json"
    listed.write_text(json.dumps(rows))
    assert rc.read_probe(listed) == rows
    # a probe stopped by its time limit: the lines printed so far, among other output
    log = tmp_path / "probe.log"
    log.write_text("\n".join(["warming up", json.dumps(rows[0]), json.dumps(rows[1]), "| t"]))
    assert rc.read_probe(log) == rows
    log.write_text("Traceback (most recent call last):\n  ...\n")
    assert rc.read_probe(log) == []
