"""The training loop end to end on CPU: learning, exact resume, divergence, export, --init, CLI."""

import math
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spectrostream.codec import load
from spectrostream.config import ModelConfig
from spectrostream.errors import CheckpointError
from spectrostream.train import checkpoint as ckpt
from spectrostream.train import cli
from spectrostream.train.config import TrainConfig
from spectrostream.train.export import CODEBOOKS, export_average, export_model
from spectrostream.train.loop import (
    DivergedError,
    TrainingError,
    build_model,
    load_init_weights,
    train,
)
from spectrostream.train.losses import MultiScaleMelLoss

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_music(folder: Path, n: int = 4, seconds: float = 2.0, sr: int = 48000) -> Path:
    """Harmonic tones with vibrato, tremolo and a little noise; one mono file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    for i in range(n):
        f0 = 110.0 * (i + 1)
        x = sum(
            np.sin(2 * np.pi * f0 * h * t + 0.3 * np.sin(2 * np.pi * 5 * t)) / h
            for h in range(1, 5)
        )
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t + i)
        stereo = np.stack([x * env, np.roll(x, 37) * (1 - 0.5 * env)], 1) * 0.15
        stereo += 0.003 * rng.standard_normal(stereo.shape)
        sf.write(
            folder / f"track{i}.wav", (stereo[:, :1] if i == 3 else stereo).astype(np.float32), sr
        )
    return folder


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    return write_music(tmp_path_factory.mktemp("music"))


def tiny(music: Path, **sections) -> TrainConfig:
    cfg = TrainConfig.from_toml(CONFIGS / "tiny.toml").with_(data={"train": (str(music),)})
    return cfg.with_(**sections) if sections else cfg


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_model_learns_with_finite_losses(music, tmp_path):
    cfg = tiny(music, optim={"max_steps": 30}, run={"log_every": 5, "ckpt_every": 30})
    result = train(cfg, tmp_path / "run")
    assert result.step == 30 and result.last_checkpoint.name == "step_00000030.pt"
    s = scalars(tmp_path / "run")
    for key in (
        "mel/loss",
        "adv/gen",
        "adv/feat",
        "vq/commit",
        "aux/stft",
        "d/loss",
        "metrics/si_sdr",
        "grad/gen_norm",
        "grad/disc_norm",
        "vq/usage_mean",
        "vq/perplexity_mean",
        "vq_usage/level_07",
        "perf/audio_s_per_s",
    ):
        assert key in s, key
        assert all(math.isfinite(v) for _, v in s[key]), key
    mel = [v for _, v in s["mel/loss"]]
    assert s["metrics/si_sdr"][0][0] == 0  # logged from step 0
    assert mel[-1] < 0.8 * mel[0]


def test_resume_continues_exactly(music, tmp_path):
    cfg = tiny(music, run={"ckpt_every": 10, "log_every": 10})
    straight = train(cfg.with_(optim={"max_steps": 20}), tmp_path / "a")
    train(cfg.with_(optim={"max_steps": 10}), tmp_path / "b")
    resumed = train(cfg.with_(optim={"max_steps": 20}), tmp_path / "b", resume=True)
    a = ckpt.load_checkpoint(straight.last_checkpoint)
    b = ckpt.load_checkpoint(resumed.last_checkpoint)
    for part in ("generator", "discriminator", "quantizer_ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert a["opt_g"]["state"][0]["exp_avg"].equal(b["opt_g"]["state"][0]["exp_avg"])


def test_resume_with_another_discriminator_starts_it_afresh(music, tmp_path, caplog):
    """A changed [discriminator] section (e.g. a lighter one to start the GAN stage on a CPU)
    keeps the generator, quantizer and generator optimizer and starts the discriminators anew."""
    cfg = tiny(music, run={"ckpt_every": 4, "log_every": 4})
    first = train(cfg.with_(optim={"max_steps": 4}), tmp_path / "run")
    light = cfg.with_(optim={"max_steps": 6}, discriminator={"windows": (256,), "base_width": 8})
    with caplog.at_level("WARNING"):
        resumed = train(light, tmp_path / "run", resume=True)
    assert resumed.step == 6 and "discriminators start afresh" in caplog.text
    before = ckpt.load_checkpoint(first.last_checkpoint)["discriminator"]
    after = ckpt.load_checkpoint(resumed.last_checkpoint)["discriminator"]
    assert before.keys() != after.keys()


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(music, tmp_path):
    cfg = tiny(music, optim={"max_steps": 2}, run={"ckpt_every": 2})
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(cfg, tmp_path / "run", resume=True)
    train(cfg, tmp_path / "run")
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg, tmp_path / "run")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(music, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = MultiScaleMelLoss.forward

    def poisoned(self, x, y):
        calls["n"] += 1
        out = real(self, x, y)
        return out * float("nan") if calls["n"] >= 7 else out

    monkeypatch.setattr(MultiScaleMelLoss, "forward", poisoned)
    cfg = tiny(music, optim={"max_steps": 20}, run={"ckpt_every": 5, "log_every": 1})
    with pytest.raises(DivergedError, match="non-finite"):
        train(cfg, tmp_path / "run")
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [5]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"))
    assert all(torch.isfinite(v).all() for v in state["generator"].values())


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with a poisoned gradient."""

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def test_a_nan_gradient_drops_one_update_and_training_goes_on(music, tmp_path, monkeypatch, caplog):
    """A finite loss whose gradient is NaN (band cosine on a crop of digital silence did this
    once, and the update wrote NaN into every weight) drops that update, counts it, warns, and
    the run finishes with finite weights."""
    calls = {"n": 0}
    real = MultiScaleMelLoss.forward

    def poisoned(self, x, y):
        calls["n"] += 1
        return real(self, x, _NanGradient.apply(y) if calls["n"] == 4 else y)

    monkeypatch.setattr(MultiScaleMelLoss, "forward", poisoned)
    cfg = tiny(music, optim={"max_steps": 8}, run={"ckpt_every": 8, "log_every": 2})
    with caplog.at_level("WARNING"):
        result = train(cfg, tmp_path / "run")
    assert result.step == 8
    assert "1 update(s) dropped" in caplog.text
    state = ckpt.load_checkpoint(result.last_checkpoint)
    assert all(torch.isfinite(v).all() for v in state["generator"].values())
    skipped = [v for _, v in scalars(tmp_path / "run")["train/skipped_updates"]]
    assert skipped[0] == 0 and skipped[-1] == 1


@pytest.fixture(scope="module")
def trained_run(music, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    cfg = tiny(music, optim={"max_steps": 4}, run={"ckpt_every": 4})
    torch.set_num_threads(1)
    train(cfg, run)
    return run


def test_export_round_trip(trained_run, tmp_path):
    out = tmp_path / "model.safetensors"
    path, step = export_model(trained_run, out)
    assert step == 4 and path.name == "step_00000004.pt"
    codec = load(out)
    assert not codec.config.weight_norm
    state = ckpt.load_checkpoint(path)
    trained = build_model(codec.config)
    trained.load_state_dict(state["generator"])
    trained.eval()
    x = 0.1 * torch.randn(1, 2, 1920 * 6)
    with torch.no_grad():
        ref = trained(x)
        got = codec.model(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    # fp16 export loads as well (weights rounded to half precision).
    export_model(trained_run, tmp_path / "m16.safetensors", fp16=True)
    codec16 = load(tmp_path / "m16.safetensors")
    with torch.no_grad():
        assert (codec16.model(x) - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


def _perturbed_copy(source: Path, run: Path, scale: float, seed: int) -> Path:
    """A copy of ``source`` whose generator weights are moved by ``scale`` (relative)."""
    state = ckpt.load_checkpoint(source)
    gen = torch.Generator().manual_seed(seed)
    for v in state["generator"].values():
        if v.is_floating_point():
            v.add_(scale * v.abs().mean() * torch.randn(v.shape, generator=gen))
    state = {k: v for k, v in state.items() if k not in ("format", "version")}
    return ckpt.save_checkpoint(run, state, keep=1)


def test_export_of_several_checkpoints_averages_their_networks(trained_run, tmp_path):
    """Networks are averaged after folding weight norm; the codebooks are the first's; unrelated
    runs and different model configs are refused; the CLI names every source."""
    near = _perturbed_copy(ckpt.latest_checkpoint(trained_run), tmp_path / "near", 0.05, 1)
    out = tmp_path / "avg.safetensors"
    used = export_average([trained_run, near], out)
    assert [step for _, step in used] == [4, 4] and used[1][0] == near
    export_model(trained_run, tmp_path / "a.safetensors")
    export_model(near, tmp_path / "b.safetensors")
    a, b, avg = (
        load(tmp_path / n).model.state_dict()
        for n in ("a.safetensors", "b.safetensors", "avg.safetensors")
    )
    assert torch.equal(avg[CODEBOOKS], a[CODEBOOKS]) and not torch.equal(a[CODEBOOKS], b[CODEBOOKS])
    nets = [k for k in avg if k != CODEBOOKS and avg[k].is_floating_point()]
    assert nets and not all(torch.equal(a[k], b[k]) for k in nets)
    for k in nets:
        torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2, atol=1e-6, rtol=1e-5)
    # One checkpoint twice is that checkpoint.
    export_average([trained_run, trained_run], tmp_path / "same.safetensors")
    same = load(tmp_path / "same.safetensors").model.state_dict()
    assert all(torch.allclose(same[k], a[k], atol=1e-7) for k in a)
    far = _perturbed_copy(ckpt.latest_checkpoint(trained_run), tmp_path / "far", 2.0, 2)
    with pytest.raises(CheckpointError, match="did not start from one model"):
        export_average([trained_run, far], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    args = Namespace(
        run=[str(trained_run), str(near)], output=str(tmp_path / "c.safetensors"), fp16=True
    )
    assert cli.run_export(args) == 0
    assert load(tmp_path / "c.safetensors").num_levels == 8


def test_export_refuses_to_average_different_models(trained_run, tmp_path):
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(trained_run))
    cfg = ModelConfig.from_json(state["model_config"]).with_(num_levels=4)
    other = build_model(cfg)
    state = {k: v for k, v in state.items() if k not in ("format", "version")}
    state.update(model_config=cfg.to_json(), generator=other.state_dict())
    path = ckpt.save_checkpoint(tmp_path / "other", state, keep=1)
    with pytest.raises(CheckpointError, match="model config differs"):
        export_average([trained_run, path], tmp_path / "x.safetensors")


def test_init_from_exported_model_reproduces_it(trained_run, tmp_path):
    out = tmp_path / "model.safetensors"
    export_model(trained_run, out)
    codec = load(out)
    model = build_model(codec.config)
    load_init_weights(model, str(out))
    assert model.config.weight_norm
    x = 0.1 * torch.randn(1, 2, 1920 * 5)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), codec.model(x), atol=1e-5, rtol=1e-4)


def test_init_rejects_a_different_architecture(trained_run, tmp_path):
    out = tmp_path / "model.safetensors"
    export_model(trained_run, out)
    other = build_model(load(out).config.with_(num_levels=4))
    with pytest.raises(TrainingError, match="does not match"):
        load_init_weights(other, str(out))


def _args(**kw) -> Namespace:
    base = {
        "config": str(CONFIGS / "tiny.toml"),
        "data": None,
        "out": None,
        "resume": False,
        "init": None,
        "max_steps": None,
    }
    return Namespace(**{**base, **kw})


def test_cli_errors_are_exit_code_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.run_train(_args(data=[str(empty)], out=str(tmp_path / "r"))) == 2
    assert "no usable training audio" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\nmodel = "huge"\n')
    assert cli.run_train(_args(config=str(bad))) == 2
    assert "unknown model preset" in capsys.readouterr().err
    bad.write_text("version = 1\n[data]\nbatch = 3\n")
    assert cli.run_train(_args(config=str(bad))) == 2
    assert "unknown keys in [data]" in capsys.readouterr().err
    args = Namespace(
        run=[str(tmp_path / "nothing")], output=str(tmp_path / "m.safetensors"), fp16=False
    )
    assert cli.run_export(args) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_cli_parser_wires_train_and_export(music, tmp_path):
    import argparse

    parser = argparse.ArgumentParser(prog="spectrostream")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "train",
            str(CONFIGS / "tiny.toml"),
            "--data",
            str(music),
            "--out",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
        ]
    )
    assert args.func is cli.run_train and args.data == [str(music)] and args.max_steps == 2
    assert args.func(args) == 0
    out = tmp_path / "m.safetensors"
    args = parser.parse_args(["export", str(tmp_path / "run"), "-o", str(out)])
    assert args.func is cli.run_export and args.func(args) == 0
    assert load(out).num_levels == 8


def test_zero_adversarial_weights_skip_the_discriminator(music, tmp_path):
    cfg = tiny(
        music,
        optim={"max_steps": 2},
        loss={"adv_gen": 0.0, "adv_feat": 0.0},
        run={"ckpt_every": 2, "log_every": 1},
    )
    train(cfg, tmp_path / "run")
    s = scalars(tmp_path / "run")
    assert "mel/loss" in s and "d/loss" not in s and "adv/gen" not in s


def test_compile_without_a_cpp_compiler_warns_and_trains_eager(monkeypatch, caplog):
    """run.compile on a CPU with no C++ compiler: one warning, eager networks (no crash at the
    first step); with a compiler, or on a GPU, it compiles."""
    from spectrostream.train import nets
    from spectrostream.train.distributed import DistInfo

    cfg = TrainConfig.from_toml(CONFIGS / "tiny.toml").with_(run={"compile": True})
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(nets.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING", logger=nets.__name__):
        built = nets.build_nets(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    assert "no C++ compiler" in caplog.text
    assert built.model.encoder._compiled_call_impl is None
    assert nets._can_compile(torch.device("cuda"))
    monkeypatch.setattr(nets.shutil, "which", lambda name: "/usr/bin/" + name)
    built = nets.build_nets(cfg, DistInfo(0, 1, 0, torch.device("cpu")))  # compiles lazily
    assert built.model.encoder._compiled_call_impl is not None


def test_train_speed_bench_runs_a_quantized_step(capsys, monkeypatch):
    """bench/train_speed.py (smoke): one timed step of the RVQ stage on the CPU."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "train_speed.py"
    spec = importlib.util.spec_from_file_location("train_speed", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_speed", bench)  # for its dataclass
    spec.loader.exec_module(bench)
    args = ["--config", str(CONFIGS / "tiny.toml"), "--batch", "1", "--steps", "1"]
    args += ["--warmup", "1", "--device", "cpu", "--fp32", "--start-step", "100000"]
    assert bench.main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and '"steps_per_s": 0' not in rows[0]
