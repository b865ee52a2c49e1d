"""Training configuration: frozen dataclasses, loaded from TOML, stored in checkpoints as JSON.

A TOML file has top-level ``version`` and ``model`` (a preset: "official", "small", "tiny"),
an optional ``[model_overrides]`` table (any ``ModelConfig`` field), and the sections
``[data]``, ``[optim]``, ``[loss]``, ``[quantizer]``, ``[discriminator]`` and ``[run]``
(fields below). Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..config import (
    ModelConfig,
    from_plain_dict,
    official_config,
    plain_dict,
    small_config,
    tiny_config,
)
from ..errors import TrainConfigError
from ..metrics import ENVELOPE_PER_OCTAVE

TRAIN_CONFIG_VERSION = 1
MODEL_PRESETS = {"official": official_config, "small": small_config, "tiny": tiny_config}


@dataclass(frozen=True)
class DataConfig:
    """Where the audio comes from and how crops are cut.

    train: folders searched recursively for audio. If a folder holds ``train/`` and ``valid/``
        subfolders they define the split; otherwise tracks are split by a hash of their path.
    valid_fraction: share of tracks (by path hash) held out for validation.
    crop_seconds: crop length at 48 kHz (1.28 s = 61440 samples = 32 code frames).
    silence_db: crops whose RMS (dBFS, over all channels) is below this are redrawn.
    silence_retries: redraws before a quiet crop is accepted (and counted).
    valid_crops: number of fixed validation crops (spread over the validation tracks).
    manifest_cache: JSON file caching per-file metadata; "" means RUN_DIR/manifest.json.
    augment_gain_db: training crops get a random gain in +- this many dB (0: off).
    augment_flips: training crops get a polarity flip and a left/right swap, each at p = 1/2.
    """

    train: tuple[str, ...] = ()
    valid_fraction: float = 0.02
    crop_seconds: float = 1.28
    batch_size: int = 16
    num_workers: int = 4
    silence_db: float = -50.0
    silence_retries: int = 5
    valid_crops: int = 32
    valid_batch_size: int = 8
    manifest_cache: str = ""
    augment_gain_db: float = 0.0
    augment_flips: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """Adam for generator and discriminators (paper: lr 1e-4, betas (0.5, 0.9))."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = 1000.0
    warmup_steps: int = 0
    max_steps: int = 2_000_000
    # Cosine decay of the learning rate from ``lr`` at step decay_start to lr * decay_final at
    # decay_start + decay_steps (then constant); decay_steps = 0: no decay.
    decay_start: int = 0
    decay_steps: int = 0
    decay_final: float = 0.1
    # Betas used by both optimizers once the adversarial losses are on (step >= adv_start_step);
    # before that ``betas`` (regression settings such as (0.9, 0.99) suit the phase better).
    gan_betas: tuple[float, float] = (0.5, 0.9)
    # Fresh runs only: zero the biases and rescale the convs (train/init.py) before step 0.
    calibrate_init: bool = False


@dataclass(frozen=True)
class LossConfig:
    """One weight per loss key; a weight of 0 skips computing that loss.

    sdr: negative SDR of the waveform (dB; ``sdr_scale_invariant`` for SI-SDR).
    cos: 1 - cosine similarity of the (mean-removed) waveforms: scale-invariant like SI-SDR,
        but its gradient is bounded and always points towards +x (docs/training.md).
    bandcos: 1 - cosine similarity of the complex codec STFTs per octave band, bands weighted
        equally (the waveform cosine without the bass deciding it).
    stationary: squared distance of the complex codec STFTs averaged over the frames and the
        batch (an input-independent frame-constant component, which plays as a fixed comb of
        tones), relative to the reference's frame energy.
    envelope: mean absolute dB difference of band energies per 21 ms frame in bands of
        1 / ``envelope_per_octave`` octave (``spectrostream.metrics.envelope_distance``): the
        time-varying spectral envelope, which decides ViSQOL (docs/training.md, "Round 5").
        ``envelope_per_octave`` is one band width or a list of them (e.g. [6, 24]); with a
        list the loss is the mean of the distances at each width (docs/training.md, "Round 14").
    logmag: mean absolute difference of log magnitudes of linear-frequency STFTs at
        ``logmag_scales`` (window s, hop s / 4): asks for harmonic fine structure, which the
        mel distance's bands average away.
    ifreq, gdelay: the band cosine of the codec STFTs' phase advance along time
        (instantaneous frequency) or along frequency (group delay): coherent partials and
        transients without the absolute phase (``train.losses.phase_advance_loss``).
    cstft: squared error of the magnitude-compressed complex STFT at the codec's resolution
        (960 / 480), |X|^cstft_power e^(i angle X).
    balance: when true the weights of the losses on the decoded audio are shares of the
        gradient that reaches the audio (each loss's gradient is normalised, then weighted;
        commitment stays a plain weight). When false they are plain weights. Either way the
        measured shares are logged as ``share/<loss>``.
    """

    mel: float = 1.0
    adv_gen: float = 1.0
    adv_feat: float = 100.0
    commit: float = 1.0
    aux_stft: float = 0.0
    aux_wave: float = 0.0
    sdr: float = 0.0
    sdr_scale_invariant: bool = False
    cos: float = 0.0
    bandcos: float = 0.0
    stationary: float = 0.0
    envelope: float = 0.0
    envelope_per_octave: int | tuple[int, ...] = ENVELOPE_PER_OCTAVE
    logmag: float = 0.0
    ifreq: float = 0.0
    gdelay: float = 0.0
    logmag_scales: tuple[int, ...] = (1024, 2048, 4096)
    cstft: float = 0.0
    cstft_power: float = 0.3
    balance: bool = False
    mel_bins: int = 64
    mel_scales: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    # Adversarial losses start after this many steps (0 = from the start, as in the paper).
    adv_start_step: int = 0

    def envelope_widths(self) -> tuple[int, ...]:
        """``envelope_per_octave`` as a tuple of distinct band widths, each 1..48."""
        w = self.envelope_per_octave
        widths = w if isinstance(w, tuple) else (w,)
        ok = widths and all(type(v) is int and 1 <= v <= 48 for v in widths)
        if not ok or len(set(widths)) != len(widths):
            raise TrainConfigError(
                "loss.envelope_per_octave must be an integer in 1..48 or a non-empty list of "
                f"distinct such integers, got {w!r}"
            )
        return widths

    def lambdas(self) -> dict[str, float]:
        """Loss key -> weight, keys as logged ("mel/loss", "adv/gen", ...)."""
        return {
            "mel/loss": self.mel,
            "adv/gen": self.adv_gen,
            "adv/feat": self.adv_feat,
            "vq/commit": self.commit,
            "aux/stft": self.aux_stft,
            "aux/wave": self.aux_wave,
            "wave/sdr": self.sdr,
            "wave/cos": self.cos,
            "stft/compressed": self.cstft,
            "stft/logmag": self.logmag,
            "stft/bandcos": self.bandcos,
            "stft/stationary": self.stationary,
            "stft/envelope": self.envelope,
            "stft/ifreq": self.ifreq,
            "stft/gdelay": self.gdelay,
        }


@dataclass(frozen=True)
class QuantizerTrainConfig:
    """EMA codebook training (see train/rvq.py).

    dead_code_fraction: a code is dead when its EMA usage falls below this fraction of the
        uniform usage (vectors per step / codebook size); it is then replaced by a residual.
    bypass_rate: probability per example that the decoder gets the unquantized embedding.
    dropout: "biased" (paper schedule), "uniform" (1..Q) or "none" (always all levels).
    restart_distinct: dead codes restarted in one step take distinct batch vectors (jittered
        beyond the batch's size); False: each draws one at random, so with more dead codes
        than batch vectors many become exact copies, which never win a tie (default v6 holds
        10,372 copies in 65,536 codewords).

    Stages (by step): steps < ae_steps are an autoencoder warm-up (quantizer bypassed, the
    decoder gets the embedding plus Gaussian noise of ae_noise times its standard deviation).
    At ae_steps, if kmeans_frames > 0 and the codebooks are not fitted yet (also after --init:
    the codebooks are refitted), kmeans_frames embedding frames are collected from training
    crops and residual k-means fits the levels one by one. Then the quantizer is on.
    With kmeans_frames = 0 the first batch initialises the codebooks (the old behaviour).
    """

    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_fraction: float = 0.03
    bypass_rate: float = 0.5
    dropout: str = "biased"
    ae_steps: int = 0
    ae_noise: float = 0.0
    kmeans_frames: int = 0
    restart_distinct: bool = False


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-scale STFT discriminators (one per window, hop = window / 2)."""

    windows: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    base_width: int = 32


@dataclass(frozen=True)
class RunConfig:
    """Logging, checkpoints and the device side.

    device: "auto" (CUDA if available), "cpu" or "cuda".
    bf16: bf16 autocast on CUDA (STFT, iSTFT, quantizer and losses stay in float32).
    """

    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    channels_last: bool = False
    compile: bool = False
    log_every: int = 50
    val_every: int = 5000
    ckpt_every: int = 5000
    keep_checkpoints: int = 3
    val_audio_examples: int = 2
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    version: int = TRAIN_CONFIG_VERSION
    model: str = "official"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    quantizer: QuantizerTrainConfig = QuantizerTrainConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    run: RunConfig = RunConfig()

    def __post_init__(self) -> None:
        if self.version != TRAIN_CONFIG_VERSION:
            raise TrainConfigError(
                f"unsupported training config version {self.version} "
                f"(this is {TRAIN_CONFIG_VERSION})"
            )
        if self.model not in MODEL_PRESETS:
            raise TrainConfigError(
                f"unknown model preset {self.model!r}; choose from {sorted(MODEL_PRESETS)}"
            )
        self.model_config()  # validates the overrides
        d, o, q = self.data, self.optim, self.quantizer
        if d.batch_size < 1 or d.valid_batch_size < 1:
            raise TrainConfigError("batch sizes must be >= 1")
        if not 0.0 <= d.valid_fraction < 1.0:
            raise TrainConfigError("data.valid_fraction must be in [0, 1)")
        if d.crop_seconds * 25 < 2:
            raise TrainConfigError("data.crop_seconds must cover at least 2 code frames (0.08 s)")
        if d.num_workers < 0 or d.silence_retries < 0:
            raise TrainConfigError("data.num_workers and data.silence_retries must be >= 0")
        if o.lr <= 0 or len(o.betas) != 2 or o.max_steps < 1 or o.grad_clip <= 0:
            raise TrainConfigError("optim: lr > 0, two betas, max_steps >= 1, grad_clip > 0")
        if o.decay_start < 0 or o.decay_steps < 0 or not 0 < o.decay_final <= 1:
            raise TrainConfigError("optim: decay_start, decay_steps >= 0, 0 < decay_final <= 1")
        if not 0.0 < q.ema_decay < 1.0:
            raise TrainConfigError("quantizer.ema_decay must be in (0, 1)")
        if not 0.0 <= q.bypass_rate <= 1.0:
            raise TrainConfigError("quantizer.bypass_rate must be in [0, 1]")
        if q.ae_steps < 0 or q.ae_noise < 0 or q.kmeans_frames < 0:
            raise TrainConfigError("quantizer: ae_steps, ae_noise, kmeans_frames must be >= 0")
        if q.dropout not in ("biased", "uniform", "none"):
            raise TrainConfigError("quantizer.dropout must be 'biased', 'uniform' or 'none'")
        if any(w < 16 or w & (w - 1) for w in self.discriminator.windows):
            raise TrainConfigError("discriminator.windows must be powers of two >= 16")
        if any(s < 16 or s & (s - 1) for s in self.loss.mel_scales):
            raise TrainConfigError("loss.mel_scales must be powers of two >= 16")
        if not self.loss.logmag_scales or any(s < 16 for s in self.loss.logmag_scales):
            raise TrainConfigError("loss.logmag_scales must be a non-empty list of sizes >= 16")
        self.loss.envelope_widths()  # validates loss.envelope_per_octave
        r = self.run
        if min(r.log_every, r.val_every, r.ckpt_every, r.keep_checkpoints) < 1:
            raise TrainConfigError("run: log_every, val_every, ckpt_every, keep_checkpoints >= 1")
        if r.device not in ("auto", "cpu", "cuda"):
            raise TrainConfigError("run.device must be 'auto', 'cpu' or 'cuda'")

    # ---- derived ---------------------------------------------------------------------------
    def model_config(self) -> ModelConfig:
        """The generator's config, with training-time weight norm."""
        base = MODEL_PRESETS[self.model]()
        known = {f.name for f in fields(ModelConfig)}
        unknown = set(self.model_overrides) - known
        if unknown:
            raise TrainConfigError(f"unknown model_overrides: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_overrides.items()}
        kw["weight_norm"] = True
        return replace(base, **kw)

    @property
    def crop_samples(self) -> int:
        return round(self.data.crop_seconds * 48000)

    def with_(self, **sections: Any) -> TrainConfig:
        """Copy with fields replaced; section values may be dicts of field changes."""
        kw: dict[str, Any] = {}
        for k, v in sections.items():
            cur = getattr(self, k)
            kw[k] = replace(cur, **v) if isinstance(v, dict) and k != "model_overrides" else v
        return replace(self, **kw)

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        if not isinstance(d, dict):
            raise TrainConfigError("training config must be a table/object")
        sections = {
            "data": DataConfig,
            "optim": OptimConfig,
            "loss": LossConfig,
            "quantizer": QuantizerTrainConfig,
            "discriminator": DiscriminatorConfig,
            "run": RunConfig,
        }
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TrainConfigError(f"unknown training config keys: {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k in sections:
                kw[k] = _section(sections[k], k, v)
            else:
                kw[k] = v
        return cls(**kw)

    @classmethod
    def from_json(cls, s: str) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(s))
        except json.JSONDecodeError as e:
            raise TrainConfigError(f"training config is not valid JSON: {e}") from e

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        try:
            d = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise TrainConfigError(f"config file not found: {p}") from e
        except UnicodeDecodeError as e:  # e.g. an audio file given as the config
            raise TrainConfigError(f"{p}: not a UTF-8 TOML file") from e
        except tomllib.TOMLDecodeError as e:
            raise TrainConfigError(f"{p}: invalid TOML: {e}") from e
        try:
            return cls.from_dict(d)
        except TrainConfigError as e:
            raise TrainConfigError(f"{p}: {e}") from e


def _section(cls: type, name: str, value: Any) -> Any:
    if not isinstance(value, dict):
        raise TrainConfigError(f"[{name}] must be a table")
    return from_plain_dict(
        cls, value, TrainConfigError, f"unknown keys in [{name}]", prefix=f"[{name}]: "
    )
