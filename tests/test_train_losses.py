"""Training losses and discriminators: values on known inputs, float32 under autocast."""

import functools
import math

import pytest
import torch

from spectrostream.metrics import hz_to_mel, mel_filterbank, mel_to_hz
from spectrostream.train.discriminators import (
    LayerNorm2d,
    MultiScaleSTFTDiscriminator,
    STFTDiscriminator,
)
from spectrostream.train.losses import (
    LogMagnitudeLoss,
    MelSpectrogram,
    MultiScaleMelLoss,
    band_cosine_loss,
    compressed_stft_loss,
    cosine_loss,
    discriminator_hinge,
    envelope_loss,
    feature_matching,
    generator_adversarial,
    phase_advance_loss,
    sdr_loss,
    si_sdr,
    stationary_loss,
    stft_l1,
    waveform_l1,
)


def test_mel_scale_round_trip_and_htk_anchor():
    f = torch.tensor([0.0, 700.0, 1000.0, 24000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(f)), f)
    assert hz_to_mel(torch.tensor(1000.0)).item() == pytest.approx(999.99, abs=0.05)


def test_filterbank_is_triangular_and_partitions_unity():
    fb = mel_filterbank(2048, 64)
    assert fb.shape == (1025, 64)
    assert fb.min() >= 0 and fb.max() <= 1 + 1e-6
    # Consecutive triangles overlap so that between the first and last centre they sum to 1.
    centers = fb.argmax(dim=0)
    inner = fb[centers[0] + 1 : centers[-1]].sum(dim=1)
    torch.testing.assert_close(inner, torch.ones_like(inner), atol=1e-5, rtol=0)
    # Each filter peaks where its centre frequency falls: peaks rise monotonically.
    assert torch.all(centers[1:] >= centers[:-1])


def test_mel_spectrogram_of_a_sine_peaks_at_its_band():
    t = torch.arange(48000) / 48000
    x = torch.sin(2 * math.pi * 1000 * t)[None, None]
    mel = MelSpectrogram(2048, 64)(x)  # [1, 1, 64, frames]
    band = mel[0, 0, :, 10].argmax().item()
    fb = mel_filterbank(2048, 64)
    expected = fb[round(1000 / (24000 / 1024))].argmax().item()
    assert abs(band - expected) <= 1


def test_multiscale_mel_loss_zero_on_identity_and_grows_with_error():
    torch.manual_seed(0)
    x = 0.1 * torch.randn(2, 2, 9600)
    loss = MultiScaleMelLoss()
    same = loss(x, x).item()
    small = loss(x, x + 0.001 * torch.randn_like(x)).item()
    big = loss(x, x + 0.05 * torch.randn_like(x)).item()
    # sqrt(1e-8) floor of each per-frame L2 norm, times sum of alphas.
    assert same == pytest.approx(1e-4 * sum(math.sqrt(s / 2) for s in loss_scales()), rel=1e-3)
    assert same < small < big


def loss_scales():
    return (64, 128, 256, 512, 1024, 2048)


def test_losses_are_float32_under_bf16_autocast():
    x = 0.1 * torch.randn(1, 2, 4800)
    y = x + 0.01 * torch.randn_like(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = [
            MultiScaleMelLoss()(x.bfloat16(), y.bfloat16()),
            stft_l1(x, y),
            waveform_l1(x, y),
            si_sdr(x, y),
        ]
    assert all(v.dtype == torch.float32 for v in values)


def test_hinge_and_generator_adversarial_values():
    real = [torch.tensor([2.0, 0.5]), torch.tensor([[1.0]])]
    fake = [torch.tensor([-2.0, 0.0]), torch.tensor([[0.5]])]
    # D: scale 0: relu(1-r) = [0, .5] -> .25, relu(1+f) = [0, 1] -> .5; scale 1: 0 + 1.5.
    assert discriminator_hinge(real, fake).item() == pytest.approx(((0.25 + 0.5) + 1.5) / 2)
    # G: relu(1 - f): scale 0 -> [3, 1] mean 2; scale 1 -> .5.
    assert generator_adversarial(fake).item() == pytest.approx((2.0 + 0.5) / 2)


def test_feature_matching_is_mean_l1_and_blocks_gradient_to_real():
    r = [[torch.ones(2, 3, requires_grad=True), torch.zeros(4)]]
    f = [[torch.zeros(2, 3, requires_grad=True), torch.full((4,), 2.0)]]
    loss = feature_matching(r, f)
    assert loss.item() == pytest.approx((1.0 + 2.0) / 2)
    loss.backward()
    assert r[0][0].grad is None and f[0][0].grad is not None


def test_si_sdr_known_ratio_and_scale_invariance():
    torch.manual_seed(0)
    s = torch.randn(1, 1, 48000)
    n = torch.randn(1, 1, 48000)
    n = n - (n * s).sum() / (s * s).sum() * s  # orthogonal to s
    n = n * (s.norm() / n.norm()) * 0.1  # 20 dB below
    assert si_sdr(s, s + n).item() == pytest.approx(20.0, abs=0.01)
    assert si_sdr(s, 3.0 * (s + n)).item() == pytest.approx(20.0, abs=0.01)


def test_log_magnitude_loss_is_the_mean_log_ratio():
    torch.manual_seed(0)
    x = 0.1 * torch.randn(2, 2, 16384)
    loss = LogMagnitudeLoss((256, 1024))
    assert loss(x, x).item() == 0.0
    assert loss(x, 2 * x).item() == pytest.approx(math.log(2), rel=1e-4)  # floor not reached
    assert loss(x, -x).item() == pytest.approx(0.0, abs=1e-6)  # magnitudes only


def test_band_cosine_weights_octave_bands_equally():
    torch.manual_seed(1)
    x = 0.1 * torch.randn(2, 2, 48000)
    assert band_cosine_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert band_cosine_loss(x, -x).item() == pytest.approx(2.0, abs=1e-6)
    assert band_cosine_loss(x, 5 * x).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    # Right below 125 Hz only (inside the first of 7 bands, clear of the window's leakage into
    # the next), independent noise above: about 6/7, where the waveform cosine of bass-heavy
    # audio calls it nearly right.
    spec = torch.fft.rfft(x)
    low = torch.fft.irfft(spec * (torch.arange(spec.shape[-1]) < 125), 48000)
    bass = 100 * low + (x - low)  # most of the energy below 125 Hz
    noise = torch.randn_like(x) * 0.1
    nspec = torch.fft.rfft(noise)
    y = 100 * low + torch.fft.irfft(nspec * (torch.arange(nspec.shape[-1]) >= 125), 48000)
    assert band_cosine_loss(bass, y).item() == pytest.approx(6 / 7, abs=0.05)
    assert cosine_loss(bass, y).item() < 0.05


def test_phase_advance_asks_for_coherent_partials_not_absolute_phase():
    torch.manual_seed(2)
    t = torch.arange(48000) / 48000

    def tone(hz: float, phase: float = 0.0) -> torch.Tensor:
        partials = [torch.sin(2 * math.pi * k * hz * t + k * phase) / k for k in range(1, 9)]
        return (0.1 * sum(partials)).expand(1, 2, -1)

    x = tone(220.3)
    for axis in ("time", "freq"):
        assert phase_advance_loss(x, x, axis).item() == pytest.approx(0.0, abs=1e-5)
        assert phase_advance_loss(x, -3 * x, axis).item() == pytest.approx(0.0, abs=1e-5)
    # The same partials with other starting phases: the band cosine calls it far off, the
    # instantaneous frequency right; partials 4 Hz off (a tenth of a bin) are wrong for it.
    shifted = tone(220.3, phase=1.3)
    assert band_cosine_loss(x, shifted).item() > 0.3
    assert phase_advance_loss(x, shifted).item() < 0.02
    assert phase_advance_loss(x, tone(224.3)).item() > 0.2
    noise = 0.1 * torch.randn(1, 2, 48000)
    assert phase_advance_loss(x, noise).item() > 0.8
    with pytest.raises(ValueError, match="axis"):
        phase_advance_loss(x, x, "space")


def test_stft_l1_zero_on_identity():
    x = torch.randn(1, 2, 4800)
    assert stft_l1(x, x).item() == 0.0 and stft_l1(x, -x).item() > 0


def test_discriminator_shapes_features_and_delayed_fusion():
    torch.manual_seed(0)
    d = STFTDiscriminator(256, audio_channels=2, base_width=4)
    x = torch.randn(3, 2, 4800)
    logits, feats = d(x)
    assert logits.shape[0] == 3 and logits.shape[1] == 1
    assert len(feats) == 7 and all(f.shape[0] == 3 for f in feats)
    assert feats[0].shape[:3] == (3, 2, 4)  # per-channel early maps
    # Early layers are shared per channel: swapping L and R swaps the early maps.
    _, feats_sw = d(x.flip(1))
    torch.testing.assert_close(feats_sw[0], feats[0].flip(1))
    # Late layers are joint: the logits depend on the pairing of the channels.
    mixed = torch.stack([x[:, 0], x.roll(1, 0)[:, 1]], 1)
    assert not torch.allclose(d(mixed)[0], logits)


def test_discriminator_examples_are_independent():
    """GroupNorm(1, C) normalizes per example: real and fake can share one batch."""
    torch.manual_seed(0)
    d = MultiScaleSTFTDiscriminator((128, 512), audio_channels=2, base_width=4)
    a, b = torch.randn(1, 2, 4800), torch.randn(1, 2, 4800)
    together, _ = d(torch.cat([a, b]))
    alone, _ = d(a)
    for t, s in zip(together, alone, strict=True):
        torch.testing.assert_close(t[:1], s, atol=1e-5, rtol=1e-5)


def test_discriminator_rejects_wrong_channel_count():
    d = STFTDiscriminator(128, audio_channels=2, base_width=4)
    with pytest.raises(ValueError, match="2 channels"):
        d(torch.randn(1, 1, 4800))


def test_layer_norm_2d_equals_group_norm_over_all_non_batch_dims():
    torch.manual_seed(0)
    norm = LayerNorm2d(5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(5))
        norm.bias.copy_(torch.randn(5))
    x = 3 * torch.randn(2, 5, 7, 11) + 1
    ref = torch.nn.functional.group_norm(x, 1, norm.weight, norm.bias, eps=1e-5)
    torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=1e-5)
    # Any number of frames: the same module normalizes a longer map.
    assert norm(torch.randn(1, 5, 13, 11)).shape == (1, 5, 13, 11)


def test_stationary_loss_catches_a_fixed_comb():
    """An input-independent frame-periodic addition (the same complex value in every STFT
    frame of every signal: tones at multiples of 100 Hz) costs far more than the same energy
    of fresh noise, and quadratically in its level."""
    torch.manual_seed(2)
    x = 0.1 * torch.randn(4, 2, 48000)
    assert stationary_loss(x, x).item() == pytest.approx(0.0, abs=1e-9)
    comb = (0.03 * torch.randn(1, 1, 480)).repeat(1, 1, 100)  # period 480 samples = the hop
    noise = comb.std() * torch.randn_like(x)
    with_comb, with_noise = (
        stationary_loss(x, x + comb).item(),
        stationary_loss(x, x + noise).item(),
    )
    assert with_comb > 100 * with_noise
    assert with_comb == pytest.approx(stationary_loss(x, x + 2 * comb).item() / 4, rel=1e-3)


def test_envelope_loss_is_the_band_envelope_distance_with_bounded_gradients():
    """Zero for a perfect copy; noise of the same energy (the wrong time envelope) costs far
    more than a 1 dB gain error; a near-silent output gets finite, non-zero gradients (the
    floor bounds 1 / power)."""
    torch.manual_seed(3)
    x = 0.1 * torch.randn(2, 2, 24000)
    x[..., :12000] *= 0.01  # a quiet half, then a loud one
    assert envelope_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    smeared = x.std() * torch.randn_like(x)
    gain = envelope_loss(x, x * 10 ** (-1 / 20)).item()
    assert 0.7 < gain <= 1.0 + 1e-4  # less where the floor (60 dB below the loudest) clips
    assert envelope_loss(x, smeared).item() > 10 * gain
    y = (1e-7 * torch.randn_like(x)).requires_grad_()
    envelope_loss(x, y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().max() > 0


def test_envelope_loss_over_several_band_widths_is_the_mean_of_each():
    """``loss.envelope_per_octave = [6, 24]`` trains both widths: the loss is the mean of the
    two distances, and a one-element list is the plain width."""
    torch.manual_seed(5)
    x, y = 0.1 * torch.randn(2, 2, 12000), 0.1 * torch.randn(2, 2, 12000)
    six, fine = envelope_loss(x, y, per_octave=6), envelope_loss(x, y, per_octave=24)
    assert fine.item() != pytest.approx(six.item(), rel=1e-3)
    torch.testing.assert_close(envelope_loss(x, y, per_octave=[6, 24]), (six + fine) / 2)
    torch.testing.assert_close(envelope_loss(x, y, per_octave=(12,)), envelope_loss(x, y, 12))


@pytest.mark.parametrize(
    "loss",
    [
        MultiScaleMelLoss(),
        LogMagnitudeLoss(),
        band_cosine_loss,
        phase_advance_loss,
        functools.partial(phase_advance_loss, axis="freq"),
        stationary_loss,
        envelope_loss,
        cosine_loss,
        compressed_stft_loss,
        sdr_loss,
        stft_l1,
        waveform_l1,
    ],
)
def test_output_losses_have_finite_gradients_on_a_digitally_silent_reference(loss):
    """A training batch can hold a crop of exact zeros (the silence redraw gives up after a few
    tries). Every loss on the decoded audio must still give a finite gradient: band cosine once
    gave NaN there (sqrt(nx ny) at nx = 0) and the optimizer wrote it into every weight."""
    torch.manual_seed(4)
    x = 0.1 * torch.randn(3, 2, 24000)
    x[1] = 0.0
    y = (x + 0.01 * torch.randn_like(x)).requires_grad_()
    value = loss(x, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(y.grad).all()
    assert y.grad[0].abs().max() > 0
