"""The static listening page (``index.html``).

The page works opened from disk: every link is relative to it. Each ``<audio>`` and ``<img>``
carries ``data-media``; a small inline script marks each one ``data-load-state="loaded"`` or
``"error"`` as it loads (audio: its metadata, with ``data-duration``), and sets
``data-media-done="true"`` on ``<body>`` when all have settled, so a headless browser can check
the page (tests/test_evaluation.py does, with Chromium's ``--dump-dom``).
The media themselves (listening copies, spectrogram PNGs) are written by :mod:`.media`.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spectrostream.evaluation.runner import CellResult, ClipResult, EvalReport

_SCRIPT = """
(function () {
  var els = Array.prototype.slice.call(document.querySelectorAll('[data-media]'));
  var pending = els.length;
  function done() { document.body.setAttribute('data-media-done', 'true'); }
  function mark(el, state) {
    if (el.hasAttribute('data-load-state')) return;
    el.setAttribute('data-load-state', state);
    if (el.tagName === 'AUDIO' && state === 'loaded') {
      el.setAttribute('data-duration', String(el.duration));
    }
    pending -= 1;
    if (pending === 0) done();
  }
  els.forEach(function (el) {
    if (el.tagName === 'IMG') {
      if (el.complete) { mark(el, el.naturalWidth > 0 ? 'loaded' : 'error'); return; }
      el.addEventListener('load', function () { mark(el, 'loaded'); });
      el.addEventListener('error', function () { mark(el, 'error'); });
    } else {
      if (el.error) { mark(el, 'error'); return; }
      if (el.readyState >= 1) { mark(el, 'loaded'); return; }
      el.addEventListener('loadedmetadata', function () { mark(el, 'loaded'); });
      el.addEventListener('error', function () { mark(el, 'error'); });
    }
  });
  if (pending === 0) done();
})();
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1400px; }
table { border-collapse: collapse; margin-bottom: 1em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; vertical-align: middle; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.spec { width: 360px; height: 128px; display: block; image-rendering: auto; }
.err { color: #a00; }
.note { color: #555; font-size: 90%; }
"""


def _fmt(value: float | None, digits: int = 2) -> str:
    return "&ndash;" if value is None else f"{value:.{digits}f}"


def _media_cells(audio_file: str | None, png_file: str | None, alt: str) -> str:
    if audio_file is None or png_file is None:
        return "<td></td><td></td>"
    a = html.escape(audio_file, quote=True)
    p = html.escape(png_file, quote=True)
    return (
        f'<td><audio controls preload="metadata" src="{a}" data-media></audio></td>'
        f'<td><img class="spec" src="{p}" alt="{html.escape(alt, quote=True)}" '
        f"data-media></td>"
    )


def _cell_row(cell: CellResult, label: str, rate_label: str) -> str:
    name = f"{label}, {rate_label}"
    if cell.error is not None:
        return (
            f"<tr><td>{html.escape(name)}</td>"
            f'<td colspan="6" class="err">failed: {html.escape(cell.error)}</td></tr>'
        )
    star = "*" if cell.clamped else ""
    m = cell.metrics
    return (
        f"<tr><td>{html.escape(name)}</td>"
        + _media_cells(cell.audio_file, cell.spectrogram_file, f"spectrogram: {name}")
        + f'<td class="num">{_fmt(cell.actual_kbps)}{star}</td>'
        + f'<td class="num">{_fmt(m.get("visqol_speech"))}</td>'
        + f'<td class="num">{_fmt(m.get("visqol_audio"))}</td>'
        + f'<td class="num">{_fmt(m.get("mel_distance"), 3)}</td></tr>'
    )


def _clip_section(clip: ClipResult, report: EvalReport) -> str:
    title = html.escape(clip.name)
    if clip.error is not None:
        return (
            f'<section><h2 id="{title}">{title}</h2>'
            f'<p class="err">failed to load: {html.escape(clip.error)}</p></section>'
        )
    unit = "kbps/ch" if report.settings.per_channel else "kbps"
    ceiling = (
        ""
        if clip.ceiling_speech is None
        else (f"; ViSQOL speech of the original against itself: {clip.ceiling_speech:.2f}")
    )
    rows = [
        (
            "<tr><th>version</th><th>listen</th><th>spectrogram (0-24 kHz)</th><th>actual kbps"
            "</th><th>ViSQOL speech</th><th>ViSQOL audio</th><th>mel dist.</th></tr>"
        ),
        "<tr><td>original</td>"
        + _media_cells(clip.audio_file, clip.spectrogram_file, "spectrogram: original")
        + '<td class="num">&ndash;</td>'
        + f'<td class="num">{_fmt(clip.ceiling_speech)}</td><td class="num">&ndash;</td>'
        + '<td class="num">&ndash;</td></tr>',
    ]
    for cell in clip.cells:
        label = report.systems.get(cell.system, cell.system)
        rows.append(_cell_row(cell, label, f"{cell.requested_kbps:g} {unit}"))
    return (
        f'<section><h2 id="{title}">{title}</h2>'
        f'<p class="note">{clip.duration_s:.1f} s, {clip.channels} channel(s){ceiling}</p>'
        f"<table>{''.join(rows)}</table></section>"
    )


def render_index(report: EvalReport, summary_html: str) -> str:
    """The whole page: a summary table, then one section per clip."""
    env = report.environment
    listen = "Ogg Vorbis, quality 0.7" if report.settings.listen_format == "ogg" else "16-bit FLAC"
    sections = "\n".join(_clip_section(clip, report) for clip in report.clips)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>SpectroStream listening page</title>
<style>{_STYLE}</style></head>
<body>
<h1>SpectroStream listening page</h1>
<p class="note">{html.escape(env.get("date_utc", ""))}, {html.escape(env.get("cpu", ""))}.
Listening copies are {listen} (metrics are computed on the decoded float audio).
Actual kbps include container/header bytes; * = below Opus's 6 kbps floor, coded at 6 kbps.
ViSQOL speech mode uses the lattice mapping at 16 kHz, per channel, averaged.</p>
{summary_html}
{sections}
<script>{_SCRIPT}</script>
</body></html>
"""
