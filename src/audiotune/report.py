"""A short Markdown report of a run: what ran, how long, and base vs tuned on held-out clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def metrics_table(columns: dict[str, dict[str, float]], metrics: tuple[str, ...]) -> str:
    """Markdown table: one row per metric, one column per model."""
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in metrics:
        values = [columns[n].get(metric) for n in names]
        lines.append(f"| {metric} | " + " | ".join("—" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


def write_demo_report(path: str | Path, summary: dict[str, Any], table: str,
                      samples: list[dict[str, Any]], timings: dict[str, float]) -> Path:
    lines = ["# audiotune demo report", ""]
    lines += [f"- {k}: {v}" for k, v in summary.items()]
    lines += ["", "## Base vs tuned on the held-out test split", "", table, ""]
    lines += ["## Sample predictions (tuned)", "", "| clip | prediction | first reference |", "|---|---|---|"]
    for s in samples:
        lines.append(f"| {s['id']} | {s['prediction']} | {s['references'][0]} |")
    lines += ["", "## Wall time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    out = Path(path)
    out.write_text("\n".join(lines) + "\n")
    return out
