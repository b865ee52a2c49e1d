"""Writes an evaluation's outputs: report.md, report.json, quality_vs_kbps.png, index.html.

report.md leads with a table shaped like the paper's Table 1 (rows = codecs, columns = the
requested rates, cells = ViSQOL speech mode averaged over clips), then one table per other
metric, a per-clip table and every failure. A mean is over the clips whose cell succeeded; when
some failed the cell reads ``mean (ok/total)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from spectrostream.atomic import atomic_path
from spectrostream.evaluation import page
from spectrostream.evaluation.baselines import OPUS_MIN_KBPS
from spectrostream.evaluation.runner import CellResult, EvalReport

PAPER_RATES_PER_CHANNEL = (2.7, 5.3, 8.0)
PAPER_SPECTROSTREAM = (3.21, 3.83, 4.00)  # ViSQOL speech, MUSDB (49 tracks), per channel

_METRICS = (
    # key, title, digits, note
    (
        "visqol_speech",
        "ViSQOL v3 speech mode (lattice MOS, 16 kHz, per channel averaged)",
        2,
        "higher is better",
    ),
    (
        "visqol_audio",
        "ViSQOL v3 audio mode (SVR MOS, 48 kHz, per channel averaged)",
        2,
        "higher is better; identical input scores 4.73",
    ),
    ("mel_distance", "Mel distance (mean |log10 mel magnitude difference|)", 3, "lower is better"),
    ("si_sdr_db", "SI-SDR (dB)", 1, "higher is better; rewards waveform matching"),
    (
        "harmonic_corr",
        "Harmonic fine-structure correlation (log spectrum minus its envelope, 100 Hz-6 kHz)",
        3,
        "higher is better; 1 = the same partials, about 0 = shaped noise",
    ),
    (
        "envelope_db",
        "Band-envelope distance (dB, sixth-octave bands per 21 ms frame)",
        2,
        "lower is better; what ViSQOL hears first",
    ),
    (
        "comb_share",
        "Fixed-comb share (energy repeating in every 10 ms frame, decoded audio)",
        4,
        "lower is better; music reads about 0.001",
    ),
    (
        "ild_error_db",
        "Inter-channel level difference error (dB, 32 mel bands)",
        2,
        "lower is better; stereo clips only",
    ),
    (
        "icc_error",
        "Inter-channel coherence error (32 mel bands, 171 ms blocks)",
        3,
        "lower is better; stereo clips only",
    ),
)

REPORT_FILES = ("report.md", "report.json", "quality_vs_kbps.png", "index.html")


# --------------------------------------------------------------------------------------------
# Aggregation


def cells_for(report: EvalReport, system: str, requested: float) -> list[CellResult]:
    """The cells of one table entry, one per clip that loaded."""
    return [
        cell
        for clip in report.clips
        for cell in clip.cells
        if cell.system == system and cell.requested_kbps == requested
    ]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def aggregate(report: EvalReport, system: str, requested: float, key: str) -> dict[str, Any]:
    """Mean of one metric over clips -> {"mean", "ok", "total", "clamped"}.

    ``total`` counts every clip (a clip that failed to load counts as failed).
    """
    cells = cells_for(report, system, requested)
    if key in ("actual_kbps", "payload_kbps", "target_kbps"):
        values = [getattr(c, key) for c in cells if c.error is None]
    else:
        values = [c.metrics.get(key) for c in cells if c.error is None]
    ok = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": _mean(ok),
        "ok": len(ok),
        "total": len(report.clips),
        "clamped": any(c.clamped for c in cells),
    }


def summary(report: EvalReport) -> dict[str, Any]:
    """{system: {rate: {metric: aggregate}}} plus the ViSQOL speech ceiling."""
    keys = [k for k, *_ in _METRICS] + ["actual_kbps", "payload_kbps", "target_kbps"]
    table = {
        system: {
            f"{rate:g}": {k: aggregate(report, system, rate, k) for k in keys}
            for rate in report.settings.kbps
        }
        for system in report.systems
    }
    ceilings = [c.ceiling_speech for c in report.clips if c.ceiling_speech is not None]
    return {"systems": table, "ceiling_visqol_speech": _mean(ceilings)}


# --------------------------------------------------------------------------------------------
# Markdown


def _cell_text(agg: dict[str, Any], digits: int) -> str:
    if agg["mean"] is None:
        return f"failed (0/{agg['total']})"
    text = f"{agg['mean']:.{digits}f}"
    if agg["clamped"]:
        text += "*"
    if agg["ok"] < agg["total"]:
        text += f" ({agg['ok']}/{agg['total']})"
    return text


def _rate_header(report: EvalReport) -> str:
    return "kbps per channel" if report.settings.per_channel else "kbps (total)"


def _table(report: EvalReport, key: str, digits: int, paper_row: bool = False) -> list[str]:
    rates = report.settings.kbps
    lines = [
        f"| codec \\ {_rate_header(report)} | " + " | ".join(f"{r:g}" for r in rates) + " |",
        "|---|" + "---|" * len(rates),
    ]
    for system, label in report.systems.items():
        cells = [_cell_text(aggregate(report, system, r, key), digits) for r in rates]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if paper_row and report.settings.per_channel and tuple(rates) == PAPER_RATES_PER_CHANNEL:
        lines.append(
            "| *SpectroStream, paper (MUSDB, not these clips)* | "
            + " | ".join(f"*{v:.2f}*" for v in PAPER_SPECTROSTREAM)
            + " |"
        )
    return lines


def _rate_table(report: EvalReport) -> list[str]:
    rates = report.settings.kbps
    lines = [
        f"| codec \\ {_rate_header(report)} | " + " | ".join(f"{r:g}" for r in rates) + " |",
        "|---|" + "---|" * len(rates),
    ]
    for system, label in report.systems.items():
        cells = []
        for r in rates:
            actual = aggregate(report, system, r, "actual_kbps")
            payload = aggregate(report, system, r, "payload_kbps")
            target = aggregate(report, system, r, "target_kbps")
            if actual["mean"] is None:
                cells.append("failed")
                continue
            star = "*" if target["clamped"] else ""
            text = (
                f"{actual['mean']:.2f} / {payload['mean']:.2f} (target {target['mean']:.2f}{star})"
            )
            levels = {c.levels for c in cells_for(report, system, r) if c.levels is not None}
            if levels:
                text += f", {'/'.join(str(v) for v in sorted(levels))} levels"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _per_clip_table(report: EvalReport) -> list[str]:
    columns = [(s, r) for r in report.settings.kbps for s in report.systems]
    unit = "/ch" if report.settings.per_channel else ""
    header = "| clip | s | ceiling | " + " | ".join(f"{s} {r:g}{unit}" for s, r in columns) + " |"
    lines = [header, "|---|---|---|" + "---|" * len(columns)]
    for clip in report.clips:
        if clip.error is not None:
            lines.append(
                f"| {_md(clip.name)} | | | " + " | ".join("failed" for _ in columns) + " |"
            )
            continue
        by_key = {(c.system, c.requested_kbps): c for c in clip.cells}
        values = []
        for key in columns:
            cell = by_key[key]
            value = cell.metrics.get("visqol_speech")
            values.append("failed" if cell.error else ("-" if value is None else f"{value:.2f}"))
        ceiling = "-" if clip.ceiling_speech is None else f"{clip.ceiling_speech:.2f}"
        lines.append(
            f"| {_md(clip.name)} | {clip.duration_s:.1f} | {ceiling} | " + " | ".join(values) + " |"
        )
    return lines


def _md(text: str) -> str:
    """File names and messages as inert Markdown text: no HTML, no table breaks, one line."""
    import html

    return html.escape(" ".join(text.split())).replace("|", "\\|").replace("`", "&#96;")


def _code(name: str) -> str:
    """A file name as a Markdown code span (shown literally, HTML included)."""
    return "`" + " ".join(name.split()).replace("`", "'") + "`"


def _failures(report: EvalReport) -> list[str]:
    lines = []
    for clip in report.clips:
        if clip.error is not None:
            lines.append(f"- {_code(clip.name)}: failed to load: {_md(clip.error)}")
        if clip.ceiling_error is not None:
            lines.append(f"- {_code(clip.name)}: ceiling score failed: {_md(clip.ceiling_error)}")
        for cell in clip.cells:
            where = f"{_code(clip.name)} {cell.system} {cell.requested_kbps:g}"
            if cell.error is not None:
                lines.append(f"- {where}: {_md(cell.error)}")
            for metric, message in cell.metric_errors.items():
                lines.append(f"- {where} ({metric}): {_md(message)}")
    return lines


def _md_header(report: EvalReport) -> list[str]:
    """Title and the run's facts: date, machine, clips, rates, model, versions, runtime."""
    env = report.environment
    settings = report.settings
    model = report.model or {}
    return [
        "# SpectroStream quality report",
        "",
        f"- date: {env.get('date_utc')}; machine: {env.get('host')} ({env.get('cpu')})",
        f"- clips: {len(report.clips)} ({sum(c.error is None for c in report.clips)} loaded)"
        + (f", first {settings.max_seconds:g} s of each" if settings.max_seconds else ""),
        f"- rates: {', '.join(f'{r:g}' for r in settings.kbps)} "
        + ("kbps per channel (total = rate x channels)" if settings.per_channel else "kbps total"),
        f"- model: {model.get('path', 'none')}" + (f" ({model['id']})" if "id" in model else ""),
        f"- versions: python {env.get('python')}, numpy {env.get('numpy')}, torch "
        f"{env.get('torch')}, visqol-python {env.get('visqol')}"
        + (f", {env['opusenc']}" if "opusenc" in env else ""),
        f"- runtime: {report.seconds:.0f} s",
        "",
    ]


def _md_headline(report: EvalReport) -> list[str]:
    """The paper-shaped ViSQOL speech table with its ceiling, and the Opus floor note."""
    lines: list[str] = []
    if report.settings.visqol:
        ceiling = summary(report)["ceiling_visqol_speech"]
        lines += [f"## {_METRICS[0][1]}", "", *_table(report, "visqol_speech", 2, True), ""]
        if ceiling is not None:
            lines += [
                (
                    f"The original scored against itself averages {ceiling:.2f} on these clips "
                    "(the lattice mapping has no fixed maximum on music; per clip below)."
                ),
                "",
            ]
    else:
        lines += ["ViSQOL was not computed (--skip-visqol).", ""]
    if any(c.clamped for clip in report.clips for c in clip.cells):
        floor = f"{OPUS_MIN_KBPS:g}"
        lines += [
            f"\\* requested total rate below Opus's {floor} kbps floor; coded at {floor} kbps.",
            "",
        ]
    return lines


def _md_bit_rates(report: EvalReport) -> list[str]:
    return [
        "## Bit rate (kbps, total over channels)",
        "",
        (
            "actual (file size x 8 / duration: Ogg container and headers for Opus, .ssc header "
            "and packet framing for SpectroStream) / payload (coded audio only) (configured "
            "target)"
        ),
        "",
        *_rate_table(report),
        "",
    ]


def _md_metrics(report: EvalReport) -> list[str]:
    """One table per other metric, then ViSQOL per clip (ViSQOL ones only when computed)."""
    lines: list[str] = []
    for key, title, digits, note in _METRICS[1:]:
        if key.startswith("visqol") and not report.settings.visqol:
            continue
        lines += [f"## {title}", "", note, "", *_table(report, key, digits), ""]
    if report.settings.visqol:
        lines += ["## ViSQOL speech mode per clip", "", *_per_clip_table(report), ""]
    return lines


def render_markdown(report: EvalReport) -> str:
    lines = [
        *_md_header(report),
        *_md_headline(report),
        *_md_bit_rates(report),
        *_md_metrics(report),
        "## Failures",
        "",
        *(_failures(report) or ["none"]),
        "",
        "Metric definitions: `spectrostream/evaluation/metrics.py`, docs/quality.md.",
        "Listening page: index.html.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# JSON, PNG, HTML


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render_json(report: EvalReport) -> str:
    """Every per-clip number, the settings, the environment and the summary means."""
    body = dataclasses.asdict(report)
    body["summary"] = summary(report)
    return json.dumps(_finite(body), indent=1, allow_nan=False)


def plot_quality(report: EvalReport, path: Path) -> None:
    """Mean metric vs mean actual total kbps, one line per codec (Agg, no pyplot)."""
    from matplotlib.figure import Figure

    panels = [
        k
        for k in ("visqol_speech", "visqol_audio", "mel_distance", "si_sdr_db")
        if report.settings.visqol or not k.startswith("visqol")
    ]
    titles = {k: t for k, t, *_ in _METRICS}
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(5.5 * columns, 4.2 * rows))
    for index, key in enumerate(panels):
        ax = fig.add_subplot(rows, columns, index + 1)
        for system, label in report.systems.items():
            xs, ys = [], []
            for rate in report.settings.kbps:
                x = aggregate(report, system, rate, "actual_kbps")["mean"]
                y = aggregate(report, system, rate, key)["mean"]
                if x is not None and y is not None:
                    xs.append(x)
                    ys.append(y)
            ax.plot(xs, ys, marker="o", label=label)
        if key == "visqol_speech":
            ax.plot(
                [2 * r for r in PAPER_RATES_PER_CHANNEL],
                PAPER_SPECTROSTREAM,
                "k--",
                marker="x",
                alpha=0.5,
                label="SpectroStream paper (MUSDB, stereo)",
            )
        title = titles[key]
        ax.set_title(title if len(title) < 40 else title.split(" (")[0], fontsize=10)
        ax.set_xlabel("actual kbps (total, file size)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)


def write_all(report: EvalReport, out_dir: str | Path) -> dict[str, Path]:
    """Writes the four report files into ``out_dir`` (media already there) -> name: path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in REPORT_FILES}
    _write_text(paths["report.md"], render_markdown(report))
    _write_text(paths["report.json"], render_json(report))
    plot_quality(report, paths["quality_vs_kbps.png"])
    headline = "visqol_speech" if report.settings.visqol else "mel_distance"
    summary_html = _html_table(report, headline)
    _write_text(paths["index.html"], page.render_index(report, summary_html))
    return paths


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _html_table(report: EvalReport, key: str) -> str:
    import html

    title, digits = next((t, d) for k, t, d, _ in _METRICS if k == key)
    rates = report.settings.kbps
    rows = [
        "<tr><th>codec \\ "
        + html.escape(_rate_header(report))
        + "</th>"
        + "".join(f"<th>{r:g}</th>" for r in rates)
        + "</tr>"
    ]
    for system, label in report.systems.items():
        rows.append(
            f"<tr><td>{html.escape(label)}</td>"
            + "".join(
                f'<td class="num">{html.escape(_cell_text(aggregate(report, system, r, key), digits))}'
                "</td>"
                for r in rates
            )
            + "</tr>"
        )
    return (
        f"<h2>{html.escape(title)}</h2><table>{''.join(rows)}</table>"
        '<p><img src="quality_vs_kbps.png" alt="quality vs bit rate" data-media '
        'style="max-width: 100%"></p>'
    )
