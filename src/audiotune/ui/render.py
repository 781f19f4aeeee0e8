"""HTML the tabs show (pure): sample tables with audio players, data-check issues, the training status.

Every text is escaped; audio is embedded as a ``data:audio/wav`` URI, so a player never points at
a file path and the page needs no file route beyond what Gradio serves itself.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..audio import encode_audio
from ..data.check import RowIssue
from .runs import Sample


def wav_uri(audio: np.ndarray, rate: int) -> str:
    return "data:audio/wav;base64," + base64.b64encode(encode_audio(audio, rate)).decode()


def _player(audio: np.ndarray | str | None, rate: int) -> str:
    if isinstance(audio, np.ndarray):
        return f"<audio controls preload='metadata' src='{wav_uri(audio, rate)}'></audio>"
    return f"<span class='at-muted'>{html.escape(audio or 'no audio')}</span>"


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def samples_html(samples: Sequence[Sample], models: list[str], metric: str, score_model: str,
                 audio: Callable[[str], np.ndarray | str | None], rate: int, total: int, page: int,
                 pages: int) -> str:
    """One page of samples: clip id, score, player, references, then every model's answer."""
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for sample in samples:
        answers = "".join(f"<td>{html.escape(sample.answers.get(m, '—'))}</td>" for m in models)
        refs = "<br>".join(html.escape(r) for r in sample.references)
        rows.append(f"<tr class='at-sample' data-id='{html.escape(sample.id)}'><td>{html.escape(sample.id)}</td>"
                    f"<td class='at-num'>{_score(sample.score(score_model, metric))}</td>"
                    f"<td>{_player(audio(sample.id), rate)}</td><td class='at-refs'>{refs}</td>{answers}</tr>")
    caption = (f"{total} sample(s); page {page} of {pages}; sorted by {html.escape(score_model)}'s "
               f"{html.escape(metric)}" if metric else f"{total} sample(s); page {page} of {pages}")
    return (f"<div class='at-table'><p class='at-caption'>{caption}</p><table><thead><tr><th>clip</th>"
            f"<th>{html.escape(metric or 'score')}</th><th>audio</th><th>references</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def issues_html(issues: Sequence[RowIssue], audio: dict[int, np.ndarray | str], rate: int, shown: int) -> str:
    """The data check's problem rows, each with a player where the clip decodes."""
    if not issues:
        return "<p class='at-caption'>No row fails or is altered.</p>"
    rows = []
    for issue in issues[:shown]:
        clip = audio.get(issue.row)
        player = _player(clip, rate) if isinstance(clip, np.ndarray) else "<span class='at-muted'>—</span>"
        rows.append(f"<tr class='at-issue at-{issue.severity}'><td class='at-num'>{issue.row}</td>"
                    f"<td>{html.escape(issue.id)}</td><td>{html.escape(str(issue.file or '—'))}</td>"
                    f"<td>{issue.severity}</td><td>{html.escape(issue.problem)}</td><td>{player}</td></tr>")
    more = f"<p class='at-caption'>… and {len(issues) - shown} more.</p>" if len(issues) > shown else ""
    return (f"<div class='at-table'><p class='at-caption'>{len(issues)} row(s) that fail or are altered</p>"
            "<table><thead><tr><th>row</th><th>id</th><th>file</th><th>severity</th><th>problem</th>"
            f"<th>audio</th></tr></thead><tbody>{''.join(rows)}</tbody></table>{more}</div>")


def status_markdown(run: str, status: str, history: dict[str, Any], points: int, error: str | None = None) -> str:
    step, total = history.get("global_step") or 0, history.get("max_steps")
    losses = [h["loss"] for h in history.get("log_history", []) if "loss" in h]
    parts = [f"**{run}** — {status}", f"step {step}" + (f" of {total}" if total else ""),
             f"{points} curve point(s)"]
    if losses:
        parts.append(f"last train loss {losses[-1]:.4f}")
    text = " · ".join(parts)
    return text + (f"\n\n**{error}**" if error else "")


CSS = """
.at-table table{border-collapse:collapse;width:100%;font-size:.9em}
.at-table td,.at-table th{border:1px solid var(--border-color-primary);padding:.3em .5em;vertical-align:top}
.at-table th{background:var(--background-fill-secondary);text-align:left}
.at-num{text-align:right;font-variant-numeric:tabular-nums}
.at-refs{color:var(--body-text-color-subdued)}
.at-muted{color:var(--body-text-color-subdued);font-size:.85em}
.at-caption{margin:.2em 0 .5em 0;color:var(--body-text-color-subdued)}
.at-table audio{width:210px;height:32px}
.at-fails td:nth-child(4){color:#c62828;font-weight:600}.at-altered td:nth-child(4){color:#ef6c00}
"""
