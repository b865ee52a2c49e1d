"""The evaluation loop: every clip through every system at every rate, scored.

For each clip (48 kHz, resampled with soxr if the file is at another rate) and each requested
rate, each system codes and decodes the clip (SpectroStream through ``codec.compress`` and
``codec.decompress``, Opus through opusenc/opusdec), and the decoded audio is scored against the
original with :mod:`spectrostream.evaluation.metrics`. A clip, rate or metric that fails is
kept with its error message; nothing is dropped silently.

Rates: with ``per_channel`` a requested rate r is per audio channel, so a stereo clip is coded
at 2r kbps in total (the paper's Table 1 convention); otherwise r is the total rate.
SpectroStream's level count for a total rate is ``config.levels_for_kbps`` (250 bit/s per level,
rounded down). Actual bit rates come from the compressed size over the clip duration.
"""

from __future__ import annotations

import datetime
import math
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from spectrostream.audio_io import is_audio_file_name, read_audio, resample
from spectrostream.config import SAMPLES_PER_CODE
from spectrostream.errors import EvalError
from spectrostream.evaluation import metrics
from spectrostream.evaluation.baselines import (
    RoundTrip,
    opus_round_trip,
    opus_tools_available,
)
from spectrostream.evaluation.media import LISTEN_SUBTYPES, write_listening_audio, write_spectrogram

SAMPLE_RATE = 48000
BASELINES = ("opus",)
LISTEN_FORMATS = tuple(LISTEN_SUBTYPES)
MEDIA_DIR = "media"


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate.

    kbps: requested rates (per channel if ``per_channel``, else total), one table column each.
    baselines: names from :data:`BASELINES`.
    max_clips / max_seconds: use only the first N clips (sorted by name) / seconds of each.
    visqol: compute ViSQOL (the slow part); the other metrics are always computed.
    listen_format: format of the listening copies next to index.html ("ogg": Vorbis at
        quality 0.7, about 200 kbps stereo; "flac": 16-bit lossless).
    """

    kbps: tuple[float, ...] = (2.7, 5.3, 8.0)
    per_channel: bool = False
    baselines: tuple[str, ...] = ()
    max_clips: int | None = None
    max_seconds: float | None = None
    visqol: bool = True
    listen_format: str = "ogg"

    def __post_init__(self) -> None:
        if not self.kbps:
            raise EvalError("give at least one bit rate")
        if any(not (0 < k < math.inf) for k in self.kbps):
            raise EvalError(f"bit rates must be positive, got {list(self.kbps)}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise EvalError(f"unknown baseline(s) {sorted(unknown)}; known: {list(BASELINES)}")
        if self.max_clips is not None and self.max_clips < 1:
            raise EvalError("max_clips must be >= 1")
        if self.max_seconds is not None and not (self.max_seconds > 0):
            raise EvalError("max_seconds must be > 0")
        if self.listen_format not in LISTEN_FORMATS:
            raise EvalError(f"listen_format must be one of {list(LISTEN_FORMATS)}")


class System(Protocol):
    """A coder under test: ``round_trip(audio [C, T], sr, total_kbps) -> RoundTrip``."""

    name: str
    label: str

    def round_trip(self, audio: np.ndarray, sample_rate: int, total_kbps: float) -> RoundTrip: ...


class CodecSystem:
    """SpectroStream through its public ``compress``/``decompress`` (the .ssc bitstream)."""

    name = "spectrostream"

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        model_id = getattr(codec, "model_id", None)
        self.label = f"SpectroStream ({model_id})" if model_id else "SpectroStream"

    def round_trip(self, audio: np.ndarray, sample_rate: int, total_kbps: float) -> RoundTrip:
        import torch

        config = self.codec.config
        # 250 bit/s per level, rounded down; a rate above the model's top uses every level
        # and is marked clamped, as Opus's floor is.
        clamped = total_kbps > config.max_kbps
        levels = config.levels_for_kbps(min(total_kbps, config.max_kbps))
        with torch.inference_mode():
            data = self.codec.compress(torch.from_numpy(audio), sample_rate, levels=levels)
            decoded, rate = self.codec.decompress(data)
        decoded = np.asarray(decoded.detach().cpu().numpy(), dtype=np.float32)
        if rate != sample_rate or decoded.shape != audio.shape:
            raise RuntimeError(
                f"decompress returned {decoded.shape} at {rate} Hz for {audio.shape} at "
                f"{sample_rate} Hz"
            )
        payload_bits = levels * config.bits_per_code * _code_frames(audio.shape[1], sample_rate)
        return RoundTrip(
            audio=decoded,
            sample_rate=rate,
            target_kbps=levels * config.kbps_per_level,
            clamped=clamped,
            file_bytes=len(data),
            payload_bytes=(payload_bits + 7) // 8,
            levels=levels,
        )


def _code_frames(num_samples: int, sample_rate: int) -> int:
    """Code frames the codec writes for a clip: ceil(T48 / 1920) plus one look-ahead frame."""
    samples_48k = -(-num_samples * SAMPLE_RATE // sample_rate)
    return -(-samples_48k // SAMPLES_PER_CODE) + 1


class OpusSystem:
    """Debian's opus-tools, hard CBR (see :mod:`spectrostream.evaluation.baselines`)."""

    name = "opus"
    label = "Opus (opus-tools, hard CBR)"

    def round_trip(self, audio: np.ndarray, sample_rate: int, total_kbps: float) -> RoundTrip:
        return opus_round_trip(audio, sample_rate, total_kbps)


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class CellResult:
    """One clip coded by one system at one requested rate.

    requested_kbps: the column's rate as asked (per channel if the run is per channel).
    total_kbps: the total rate asked of the system (requested x channels when per channel).
    target_kbps: the total rate actually configured (after Opus's clamp / RVQ level rounding).
    actual_kbps: compressed file size x 8 / duration (container and header included).
    payload_kbps: coded audio only (Opus packets; SpectroStream codes).
    metrics: name -> value (None if that metric failed; its message is in metric_errors).
    per_channel: name -> per-channel values (ViSQOL).
    error: the round trip failed (then every metric is missing).
    """

    system: str
    requested_kbps: float
    total_kbps: float
    target_kbps: float | None = None
    clamped: bool = False
    levels: int | None = None
    actual_kbps: float | None = None
    payload_kbps: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    per_channel: dict[str, list[float]] = field(default_factory=dict)
    metric_errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    audio_file: str | None = None
    spectrogram_file: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ClipResult:
    """A clip and its cells.

    ceiling_speech: ViSQOL speech-mode score of the original against itself (on music the
        lattice mapping does not reach a fixed maximum; this is the clip's best possible score).
    """

    name: str
    path: str
    channels: int | None = None
    duration_s: float | None = None
    source_sample_rate: int | None = None
    error: str | None = None
    ceiling_speech: float | None = None
    ceiling_error: str | None = None
    audio_file: str | None = None
    spectrogram_file: str | None = None
    cells: list[CellResult] = field(default_factory=list)


@dataclass(frozen=True)
class EvalReport:
    settings: EvalSettings
    systems: dict[str, str]  # name -> label, in table order
    clips: list[ClipResult]
    environment: dict[str, str]
    model: dict[str, Any] | None
    seconds: float


METRIC_NAMES = (
    "visqol_speech",
    "visqol_audio",
    "mel_distance",
    "si_sdr_db",
    "harmonic_corr",
    "envelope_db",
    "comb_share",
    "ild_error_db",
    "icc_error",
)


# --------------------------------------------------------------------------------------------
# The loop


def find_clips(data_dir: str | Path, max_clips: int | None = None) -> list[Path]:
    """Audio files directly in ``data_dir``, sorted by name; raises EvalError if none."""
    directory = Path(data_dir)
    if not directory.is_dir():
        raise EvalError(f"{directory}: not a directory")
    clips = sorted(p for p in directory.iterdir() if p.is_file() and is_audio_file_name(p))
    if not clips:
        raise EvalError(f"{directory}: no audio files")
    return clips[:max_clips] if max_clips is not None else clips


def build_systems(settings: EvalSettings, codec: Any | None) -> list[System]:
    """SpectroStream first (if a codec is given), then the baselines."""
    systems: list[System] = []
    if codec is not None:
        systems.append(CodecSystem(codec))
    for name in settings.baselines:
        if name == "opus":
            if not opus_tools_available():
                raise EvalError("opusenc/opusdec not found: install opus-tools")
            systems.append(OpusSystem())
    if not systems:
        raise EvalError("nothing to evaluate: give a model, a baseline, or both")
    return systems


def evaluate(
    data_dir: str | Path,
    out_dir: str | Path,
    settings: EvalSettings,
    codec: Any | None = None,
    model_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> EvalReport:
    """Runs the evaluation and writes the listening media under ``out_dir/media``.

    The reports themselves are written by :func:`spectrostream.evaluation.report.write_all`.
    """
    start = time.perf_counter()
    clips = find_clips(data_dir, settings.max_clips)
    systems = build_systems(settings, codec)
    scorer = metrics.VisqolScorer() if settings.visqol else None
    out = Path(out_dir)
    (out / MEDIA_DIR).mkdir(parents=True, exist_ok=True)

    results = []
    bar = tqdm(clips, desc="eval", unit="clip", disable=not progress)
    used_names: set[str] = set()
    for path in bar:
        slug = _unique_slug(path.stem, used_names)
        results.append(
            _evaluate_clip(
                path,
                slug,
                out,
                settings,
                systems,
                scorer,
                lambda text: bar.set_postfix_str(text, refresh=True),
            )
        )
    bar.close()
    return EvalReport(
        settings=settings,
        systems={s.name: s.label for s in systems},
        clips=results,
        environment=environment_info(),
        model=model_info,
        seconds=time.perf_counter() - start,
    )


def _unique_slug(stem: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "clip"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}_{n}", n + 1
    used.add(slug)
    return slug


def _load_clip(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    audio, source_rate = read_audio(path)
    audio = resample(audio, source_rate, SAMPLE_RATE)
    if max_seconds is not None:
        audio = audio[:, : round(max_seconds * SAMPLE_RATE)]
    if audio.shape[1] < SAMPLE_RATE // 2:
        raise EvalError(f"clip is shorter than 0.5 s ({audio.shape[1]} samples)")
    return np.ascontiguousarray(audio, dtype=np.float32), source_rate


def _evaluate_clip(
    path: Path,
    slug: str,
    out: Path,
    settings: EvalSettings,
    systems: Sequence[System],
    scorer: metrics.VisqolScorer | None,
    status: Callable[[str], None],
) -> ClipResult:
    status(f"{slug}: load")
    try:
        audio, source_rate = _load_clip(path, settings.max_seconds)
    except Exception as error:  # noqa: BLE001 (reported in the table, never dropped)
        return ClipResult(name=slug, path=str(path), error=_describe(error))
    channels, num_samples = audio.shape
    media = Path(MEDIA_DIR) / slug
    original_audio, original_png = _write_original(audio, out, media, settings.listen_format)
    ceiling, ceiling_error = None, None
    if scorer is not None:
        status(f"{slug}: ceiling")
        ceiling, ceiling_error = _ceiling(audio, scorer)

    cells = _evaluate_cells(audio, slug, media, out, settings, systems, scorer, status)
    return ClipResult(
        name=slug,
        path=str(path),
        channels=channels,
        duration_s=num_samples / SAMPLE_RATE,
        source_sample_rate=source_rate,
        ceiling_speech=ceiling,
        ceiling_error=ceiling_error,
        audio_file=original_audio.as_posix(),
        spectrogram_file=original_png.as_posix(),
        cells=cells,
    )


def _evaluate_cells(
    audio: np.ndarray,
    slug: str,
    media: Path,
    out: Path,
    settings: EvalSettings,
    systems: Sequence[System],
    scorer: metrics.VisqolScorer | None,
    status: Callable[[str], None],
) -> list[CellResult]:
    """Every (rate, system) cell of one clip, in table order."""
    cells = []
    for requested in settings.kbps:
        total = requested * audio.shape[0] if settings.per_channel else requested
        for system in systems:
            status(f"{slug}: {system.name} {requested:g} kbps")
            stem = f"{system.name}_{requested:g}kbps".replace(".", "p")
            cells.append(
                _evaluate_cell(
                    audio,
                    system,
                    requested,
                    total,
                    scorer,
                    out,
                    media / stem,
                    settings.listen_format,
                )
            )
    return cells


def _write_original(audio: np.ndarray, out: Path, media: Path, ext: str) -> tuple[Path, Path]:
    """The clip's listening copy and spectrogram; returns their paths relative to ``out``."""
    (out / media).mkdir(parents=True, exist_ok=True)
    original_audio, original_png = media / f"original.{ext}", media / "original.png"
    write_listening_audio(out / original_audio, audio, SAMPLE_RATE, ext)
    write_spectrogram(out / original_png, audio, SAMPLE_RATE)
    return original_audio, original_png


def _ceiling(audio: np.ndarray, scorer: metrics.VisqolScorer) -> tuple[float | None, str | None]:
    """ViSQOL of the clip against itself (the scale's ceiling), or the reason it failed."""
    try:
        return float(np.mean(scorer.speech(audio, audio, SAMPLE_RATE))), None
    except Exception as error:  # noqa: BLE001 (reported beside the table)
        return None, _describe(error)


def _evaluate_cell(
    audio: np.ndarray,
    system: System,
    requested: float,
    total: float,
    scorer: metrics.VisqolScorer | None,
    out: Path,
    stem: Path,
    ext: str,
) -> CellResult:
    start = time.perf_counter()
    duration_s = audio.shape[1] / SAMPLE_RATE
    try:
        coded = system.round_trip(audio, SAMPLE_RATE, total)
    except Exception as error:  # noqa: BLE001 (reported in the table, never dropped)
        return CellResult(
            system=system.name,
            requested_kbps=requested,
            total_kbps=total,
            error=_describe(error),
            seconds=time.perf_counter() - start,
        )
    values, per_channel, errors = score(audio, coded.audio, SAMPLE_RATE, scorer)
    audio_file = stem.with_suffix(f".{ext}")
    png_file = stem.with_suffix(".png")
    write_listening_audio(out / audio_file, coded.audio, SAMPLE_RATE, ext)
    write_spectrogram(out / png_file, coded.audio, SAMPLE_RATE)
    return CellResult(
        system=system.name,
        requested_kbps=requested,
        total_kbps=total,
        target_kbps=coded.target_kbps,
        clamped=coded.clamped,
        levels=coded.levels,
        actual_kbps=coded.file_bytes * 8 / duration_s / 1000,
        payload_kbps=coded.payload_bytes * 8 / duration_s / 1000,
        metrics=values,
        per_channel=per_channel,
        metric_errors=errors,
        audio_file=audio_file.as_posix(),
        spectrogram_file=png_file.as_posix(),
        seconds=time.perf_counter() - start,
    )


def score(
    reference: np.ndarray,
    estimate: np.ndarray,
    sample_rate: int,
    scorer: metrics.VisqolScorer | None,
) -> tuple[dict[str, float | None], dict[str, list[float]], dict[str, str]]:
    """All metrics of one decoded clip -> (values, per-channel values, errors by metric).

    Each metric is computed on its own, so one failing (e.g. SI-SDR on a silent channel)
    leaves the others.
    """
    estimate = metrics.match_length(estimate, reference.shape[1])
    values: dict[str, float | None] = {}
    per_channel: dict[str, list[float]] = {}
    errors: dict[str, str] = {}

    def attempt(name: str, fn: Callable[[], float]) -> None:
        try:
            values[name] = float(fn())
        except Exception as error:  # noqa: BLE001 (recorded per metric, reported)
            values[name] = None
            errors[name] = _describe(error)

    def visqol(name: str, fn: Callable[..., list[float]]) -> None:
        def run() -> float:
            scores = fn(reference, estimate, sample_rate)
            per_channel[name] = scores
            return float(np.mean(scores))

        attempt(name, run)

    if scorer is not None:
        visqol("visqol_speech", scorer.speech)
        visqol("visqol_audio", scorer.audio)
    attempt("mel_distance", lambda: metrics.mel_distance(reference, estimate, sample_rate))
    attempt("si_sdr_db", lambda: metrics.si_sdr_db(reference, estimate))
    attempt("harmonic_corr", lambda: metrics.harmonic_corr(reference, estimate, sample_rate))
    attempt("envelope_db", lambda: metrics.envelope_db(reference, estimate, sample_rate))
    attempt("comb_share", lambda: metrics.comb_share(estimate))
    if reference.shape[0] == 2:
        stereo: list[metrics.StereoErrors] = []

        def stereo_errors() -> metrics.StereoErrors:
            if not stereo:
                stereo.append(metrics.stereo_image_errors(reference, estimate, sample_rate))
            return stereo[0]

        attempt("ild_error_db", lambda: stereo_errors().ild_error_db)
        attempt("icc_error", lambda: stereo_errors().icc_error)
    return values, per_channel, errors


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------------------------
# Environment


def environment_info() -> dict[str, str]:
    """Date, machine and tool versions, for the report header."""
    info = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        import visqol

        info["visqol"] = visqol.__version__
    except ImportError:
        info["visqol"] = "not installed"
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = "not installed"
    if opus_tools_available():
        result = subprocess.run(
            ["opusenc", "--version"], capture_output=True, text=True, check=False
        )
        info["opusenc"] = result.stdout.splitlines()[0] if result.stdout else "unknown"
    return info


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    if names:
        return f"{names[0]} x {len(names)}"
    return platform.processor() or platform.machine()
