"""The recipe's losses learn phase: a tiny model overfits one fixed batch to SI-SDR > 0 dB.

With the old losses (mel + L1 on the complex STFT and waveform) the same network could not
memorise one batch (SI-SDR stayed far below 0 dB while the mel distance fell); see
docs/training.md.
"""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spectrostream.train.balance import output_gradient
from spectrostream.train.config import OptimConfig, TrainConfig, TrainConfigError
from spectrostream.train.data import augment
from spectrostream.train.init import calibration_signal
from spectrostream.train.loop import DistInfo, StepRunner, build_nets
from spectrostream.train.losses import cosine_loss, sdr_loss, si_sdr
from spectrostream.train.rvq import QuantizerTrainer
from spectrostream.train.stages import needs_fit, stage
from spectrostream.train.step import lr_scale
from spectrostream.train.validation import pca_share


def fixed_batch(channels: int, seconds: float, sr: int = 48000) -> torch.Tensor:
    """Two crops of harmonic tones (different pitch, phase and stereo image)."""
    t = np.arange(int(seconds * sr)) / sr
    crops = []
    for f0, phase in ((220.0, 0.0), (331.0, 1.0)):
        x = sum(np.sin(2 * np.pi * f0 * h * t + phase * h) / h for h in range(1, 5))
        y = np.sin(2 * np.pi * 1.5 * f0 * t + phase)
        crops.append(np.stack([x, y][:channels]))
    return torch.tensor(np.stack(crops) * 0.2, dtype=torch.float32)


def recipe(steps: int) -> TrainConfig:
    return TrainConfig(model="tiny").with_(
        model_overrides={"audio_channels": 1},
        optim={"lr": 3e-3, "betas": (0.9, 0.99), "max_steps": steps, "calibrate_init": True},
        loss={
            "balance": True,
            "sdr": 0.3,
            "cstft": 0.3,
            "mel": 0.4,
            "mel_scales": (256, 1024),
            "adv_gen": 0.0,
            "adv_feat": 0.0,
        },
        quantizer={"ae_steps": steps},
        run={"device": "cpu"},
    )


def test_tiny_model_overfits_one_batch_with_phase():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        steps = 300
        cfg = recipe(steps)
        nets = build_nets(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
        runner = StepRunner(cfg, nets, torch.device("cpu"))
        x = fixed_batch(1, 0.32)
        first = None
        for step in range(steps):
            runner.step(x, step)
            if step == 0:
                first = runner.read_stats()["metrics/si_sdr"]
        with torch.no_grad():
            y = nets.model.decode_embeddings(nets.model.encode_embeddings(x))
            final = si_sdr(x[..., : y.shape[-1]], y).mean().item()
    finally:
        torch.set_num_threads(n)
    assert first < -20.0  # starts without phase
    assert final > 0.0, final


def test_cosine_loss_pulls_towards_the_input_where_si_sdr_flips_and_explodes():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 4000)
    # Outputs that barely correlate with their inputs (correlation +-0.3 ... +-0.003).
    x = x - x.mean(-1, keepdim=True)
    noise = torch.randn(8, 1, 4000)
    noise = noise - noise.mean(-1, keepdim=True)
    noise = noise - (noise * x).sum(-1, keepdim=True) / x.square().sum(-1, keepdim=True) * x
    rho = torch.tensor([0.3, -0.3, 0.1, -0.1, 0.03, -0.03, 0.003, -0.003])[:, None, None]
    y0 = rho * x / x.norm(dim=-1, keepdim=True) + (1 - rho**2).sqrt() * noise / noise.norm(
        dim=-1, keepdim=True
    )
    grads = {}
    for name, fn in (("cos", cosine_loss), ("sisdr", lambda a, b: sdr_loss(a, b, True))):
        y = y0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x, y), [y])
        grads[name] = g
    # Descent direction -g: cosine always moves every output towards +x ...
    toward = (-grads["cos"] * x).sum(-1).flatten()
    assert (toward > 0).all()
    # ... negative SI-SDR moves the negatively correlated outputs further towards -x,
    toward_si = (-grads["sisdr"] * x).sum(-1).flatten()
    assert (toward_si[1::2] < 0).all() and (toward_si[0::2] > 0).all()
    # and its per-example gradient norms spread far wider (~1 / correlation).
    n_cos = grads["cos"].flatten(1).norm(dim=1)
    n_si = grads["sisdr"].flatten(1).norm(dim=1)
    assert n_si.max() / n_si.min() > 3 * n_cos.max() / n_cos.min()
    # Scale-invariant, like SI-SDR.
    assert cosine_loss(x, 3 * y0).item() == pytest.approx(cosine_loss(x, y0).item(), rel=1e-5)


def test_balancer_gives_each_loss_its_share_of_the_output_gradient():
    y = torch.randn(2, 1, 100, requires_grad=True)
    target = torch.randn(2, 1, 100)
    losses = {"a": 1000.0 * (y - target).square().mean(), "b": (y - 2 * target).abs().mean()}
    weights = {"a": 0.25, "b": 0.75}
    g, shares, norms = output_gradient(losses, y, weights, balance=True)
    assert shares["a"].item() == pytest.approx(0.25, abs=1e-6)
    assert shares["b"].item() == pytest.approx(0.75, abs=1e-6)
    assert norms["a"] > 100 * norms["b"]  # raw scales differ by orders of magnitude
    g_plain, shares_plain, _ = output_gradient(losses, y, weights, balance=False)
    ga = torch.autograd.grad(losses["a"], y, retain_graph=True)[0]
    gb = torch.autograd.grad(losses["b"], y, retain_graph=True)[0]
    torch.testing.assert_close(g_plain, 0.25 * ga + 0.75 * gb)
    assert shares_plain["a"] > 0.99  # without balancing the big loss takes everything
    assert g.shape == y.shape


def test_stages_follow_the_step_and_kmeans_fits_every_level():
    cfg = TrainConfig(model="tiny").with_(quantizer={"ae_steps": 5, "kmeans_frames": 400})
    assert [stage(cfg, s) for s in (0, 4, 5, 9)] == ["ae", "ae", "rvq", "rvq"]
    mc = cfg.model_config()
    rvq = QuantizerTrainer(mc.num_levels, mc.codebook_size, mc.embedding_dim, cfg.quantizer)
    assert not needs_fit(cfg, rvq, 4) and needs_fit(cfg, rvq, 5)
    torch.manual_seed(0)
    x = torch.randn(400, mc.embedding_dim) * torch.linspace(2.0, 0.1, mc.embedding_dim)
    codebooks = torch.zeros(mc.num_levels, mc.codebook_size, mc.embedding_dim)
    rvq.fit(x, codebooks, step_vectors=40)
    assert not needs_fit(cfg, rvq, 5)
    # EMA usage starts at this step's scale: counts sum to the vectors per step at every level.
    torch.testing.assert_close(rvq.cluster_size.sum(1), torch.full((mc.num_levels,), 40.0))
    residual, errors = x.clone(), []
    for level in range(mc.num_levels):
        idx = ((residual[:, None] - codebooks[level][None]) ** 2).sum(-1).argmin(1)
        residual = residual - codebooks[level][idx]
        errors.append(residual.square().mean().item())
    assert errors[0] < 0.5 * x.square().mean().item()
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(errors))


def test_validation_scores_spot_a_collapsed_latent():
    torch.manual_seed(0)
    rank2 = torch.randn(500, 2) @ torch.randn(2, 16)
    assert pca_share(rank2, 4) == pytest.approx(1.0, abs=1e-9)
    spread = torch.randn(500, 16)
    assert pca_share(spread, 4) < 0.45
    # never an exception: a validation number must not stop a run
    bad = spread.clone()
    bad[3, 5] = float("nan")
    assert math.isnan(pca_share(bad, 4))
    assert math.isnan(pca_share(torch.ones(50, 16), 4))  # no variance


def test_calibrated_init_has_no_latent_bias_and_unit_output_gain():
    torch.manual_seed(0)
    cfg = TrainConfig(model="tiny").with_(optim={"calibrate_init": True})
    nets = build_nets(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    m = nets.model
    x = calibration_signal(2)
    with torch.no_grad():
        assert m.encode_embeddings(torch.zeros_like(x)).abs().max().item() == 0.0
        y = m.decode_embeddings(m.encode_embeddings(x))
    rms = y.square().mean().sqrt().item()
    assert rms == pytest.approx(0.1, rel=1e-3)


def test_augmentation_is_bounded_and_reproducible():
    crop = np.stack([np.linspace(-0.9, 0.9, 1000), np.zeros(1000)]).astype(np.float32)
    outs = [augment(crop, np.random.default_rng(s), 6.0, True) for s in range(40)]
    assert all(np.abs(o).max() <= 1.0 + 1e-6 for o in outs)
    swapped = [o for o in outs if np.abs(o[0]).max() == 0.0]
    flipped = [o for o in outs if o[np.abs(o).max(1).argmax(), -1] < 0]
    assert 5 < len(swapped) < 35 and 5 < len(flipped) < 35
    again = augment(crop, np.random.default_rng(3), 6.0, True)
    np.testing.assert_array_equal(again, outs[3])


def test_configs_parse_and_the_gpu_round_continues_the_cpu_default():
    configs = Path(__file__).resolve().parents[1] / "configs"
    parsed = {p.stem: TrainConfig.from_toml(p) for p in sorted(configs.glob("*.toml"))}
    assert {"cpu_default", "cpu_default_v0", "gpu_round"} <= set(parsed)
    # --init needs the same network: the GPU round continues whatever the CPU recipe made.
    net = parsed["cpu_default"].model_config()
    assert parsed["gpu_round"].model_config() == net == parsed["cpu_default_v0"].model_config()
    # The stages that made the shipped default (docs/model-card.md) parse and build its network.
    stages = sorted((configs / "default_v1").glob("stage*.toml"))
    stages += sorted((configs / "default_v2").glob("stage*.toml"))
    stages += sorted((configs / "default_v3").glob("stage*.toml"))
    # v4: two GPU rounds (the GPU round's config as it then stood), then stages 10-11 on the CPU.
    stages += sorted((configs / "default_v4").glob("*.toml"))
    assert [p.stem for p in stages[-4:]] == ["gpu_round1", "gpu_round2", "stage10", "stage11"]
    # v5: three CPU stages from v4's file, the last two with the envelope in twelfth octaves.
    v5 = sorted((configs / "default_v5").glob("stage*.toml"))
    assert [p.stem for p in v5] == ["stage12", "stage13", "stage14"]
    assert [TrainConfig.from_toml(p).loss.envelope_per_octave for p in v5] == [6, 12, 12]
    stages += v5
    # v6: h2 from v5's file (--init), then two resumed cycles, sixth + 24th octave envelope.
    v6 = sorted((configs / "default_v6").glob("stage*.toml"))
    assert [p.stem for p in v6] == ["stage15", "stage16", "stage17"]
    assert all(TrainConfig.from_toml(p).loss.envelope_widths() == (6, 24) for p in v6)
    stages += v6
    assert len(stages) == 19
    for p in stages:
        assert TrainConfig.from_toml(p).model_config() == net, p.name
    for name in ("cpu_default", "gpu_round"):
        loss = parsed[name].loss
        # Mel for the envelope plus the bounded per-band phase term (negative SI-SDR and the
        # complex STFT term stalled real-music runs; the waveform cosine pulled energy into the
        # bass: docs/training.md, "Diagnosis" and "Round 3").
        assert loss.balance and loss.bandcos > 0 and loss.mel > 0, name
        assert loss.stationary > 0, name  # no fixed comb of tones ("Round 4")
        assert loss.sdr == 0 and loss.cstft == 0, name
        assert parsed[name].quantizer.kmeans_frames > 0, name


def test_learning_rate_warms_up_then_decays_by_cosine():
    o = OptimConfig(warmup_steps=10, decay_start=100, decay_steps=100, decay_final=0.1)
    assert lr_scale(o, 0) == pytest.approx(0.1)
    assert lr_scale(o, 9) == lr_scale(o, 100) == 1.0
    assert lr_scale(o, 150) == pytest.approx(0.55)
    assert lr_scale(o, 200) == lr_scale(o, 10_000) == pytest.approx(0.1)
    assert lr_scale(OptimConfig(), 10_000) == 1.0  # no decay unless asked for
    with pytest.raises(TrainConfigError, match="decay"):
        TrainConfig.from_dict({"optim": {"decay_final": 0.0}})


def test_envelope_band_widths_take_one_width_or_a_list_of_distinct_ones():
    widths = TrainConfig.from_dict({"loss": {"envelope_per_octave": [6, 24]}}).loss
    assert widths.envelope_widths() == (6, 24)
    assert TrainConfig.from_dict({"loss": {"envelope_per_octave": 12}}).loss.envelope_widths() == (
        12,
    )
    for bad in (0, 49, [], [6, 6], [6, 0], [6.0], True):
        with pytest.raises(TrainConfigError, match="envelope_per_octave"):
            TrainConfig.from_dict({"loss": {"envelope_per_octave": bad}})
