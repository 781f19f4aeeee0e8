"""``audiotune data check``: what a dataset holds, and every row that will fail or be altered.

Runs the same preparation as training (column resolution, text checks, decoding, the long-audio
policy) without a model, so what it reports is what training would do. Exit codes: 0 clean (or
warnings/alterations only), 1 some rows would be skipped, 2 the dataset cannot be used as given.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..audio import decode_any, length_outcome
from ..errors import AudiotuneError, DatasetSchemaError
from ..models.family import Family
from .prepare import prepare_split
from .sources import row_id

DURATION_BINS = ((0, 1), (1, 5), (5, 10), (10, 30), (30, 60), (60, 600), (600, math.inf))
SILENCE_PEAK = 1e-4


@dataclass
class RowIssue:
    row: int
    id: str
    file: str | None
    severity: str  # "fails" (the row is skipped), "altered" (kept, changed), "warning"
    problem: str


@dataclass
class CheckReport:
    dataset: str
    split: str
    task: str
    shape: str = "table"
    rows: int = 0
    usable_rows: int = 0
    seconds: float = 0.0
    durations: list[float] = field(default_factory=list)
    sample_rates: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    text_chars: list[int] = field(default_factory=list)
    text_tokens: list[int] = field(default_factory=list)
    audio_tokens: list[int] = field(default_factory=list)
    issues: list[RowIssue] = field(default_factory=list)
    fatal: str | None = None

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return 2
        return 1 if any(i.severity == "fails" for i in self.issues) else 0

    def histogram(self) -> dict[str, int]:
        counts = {}
        for low, high in DURATION_BINS:
            label = f"{low}-{high} s" if high != math.inf else f">{low} s"
            counts[label] = sum(1 for d in self.durations if low <= d < high)
        return counts

    def summary(self) -> dict[str, Any]:
        def stats(values: list[int]) -> dict[str, float] | None:
            if not values:
                return None
            array = np.asarray(values)
            return {"min": int(array.min()), "mean": round(float(array.mean()), 1), "p95": int(np.percentile(array, 95)),
                    "max": int(array.max())}

        return {
            "dataset": self.dataset, "split": self.split, "task": self.task, "shape": self.shape, "rows": self.rows,
            "usable_rows": self.usable_rows, "hours": round(self.seconds / 3600, 4),
            "duration_histogram": self.histogram(), "sample_rates": dict(sorted(self.sample_rates.items())),
            "channels": dict(sorted(self.channels.items())), "text_chars": stats(self.text_chars),
            "text_tokens": stats(self.text_tokens), "audio_tokens": stats(self.audio_tokens),
            "issues": [asdict(i) for i in self.issues], "fatal": self.fatal, "exit_code": self.exit_code,
        }


def _file_of(item: Any) -> str | None:
    if isinstance(item, str):
        return "a data: URI" if item.startswith("data:") else item
    if isinstance(item, dict):
        return item.get("path")
    return None


def check_dataset(spec: Any, split: str, family: Family, tokenizer=None,
                  on_row: Callable[[int], None] | None = None) -> CheckReport:
    """Inspect every row of ``split``; dataset-level problems end up in :attr:`CheckReport.fatal`."""
    report = CheckReport(spec.dataset, split, spec.task)
    try:
        rows, build = prepare_split(spec, split, family, clip_limit_fatal=False)
    except AudiotuneError as error:
        report.fatal = str(error)
        return report
    report.task = build.task.name
    report.shape = build.shape.name
    for problem in (build.shard_problems or {}).values():
        report.issues.append(RowIssue(-1, Path(problem.shard).name, problem.shard, "fails", problem.message))
    for index, row in enumerate(rows):
        report.rows += 1
        if on_row:
            on_row(index)
        _check_row(report, build, family, row, index, tokenizer)
    if report.rows == 0:
        report.fatal = f"{spec.dataset} [{split}]: the split is empty."
    elif report.usable_rows == 0:
        report.fatal = f"{spec.dataset} [{split}]: no row is usable; see the issues."
    return report


def _check_row(report: CheckReport, build, family: Family, row: dict[str, Any], index: int, tokenizer) -> None:
    name = row_id(row, index, build.id_column)
    try:
        row = build.canonical(row, index)
        name = row_id(row, index, build.id_column)
        items = build.audio_items(row, name)
    except DatasetSchemaError as error:
        report.issues.append(RowIssue(index, name, None, "fails", str(error)))
        return
    first_file = _file_of(items[0]) if items else None
    try:
        references = build.task.references(row, name)
        prompt = build.task.user_text(row, name)
    except DatasetSchemaError as error:
        report.issues.append(RowIssue(index, name, first_file, "fails", str(error)))
        return
    ok = True
    for item in items:
        file = _file_of(item)
        if item is None or (isinstance(item, str) and not item.strip()):
            report.issues.append(RowIssue(index, name, file, "fails", f"{name}: the audio cell is empty."))
            ok = False
            continue
        try:
            wave, rate = decode_any(build.resolve(item, name), name, default_rate=family.sampling_rate)
        except AudiotuneError as error:
            report.issues.append(RowIssue(index, name, file, "fails", str(error)))
            ok = False
            continue
        seconds = wave.shape[0] / rate
        report.sample_rates[rate] += 1
        report.channels[wave.shape[1]] += 1
        if wave.shape[0] == 0:
            report.issues.append(RowIssue(index, name, file, "fails", f"{name}: the audio has no samples."))
            ok = False
            continue
        finite = np.isfinite(wave)
        if not finite.all():
            report.issues.append(RowIssue(index, name, file, "fails",
                                          f"{name}: {int((~finite).sum())} NaN/Inf samples."))
            ok = False
            continue
        try:
            kept, message = length_outcome(seconds, name, build.limits)
        except AudiotuneError as error:
            report.issues.append(RowIssue(index, name, file, "fails", str(error)))
            ok = False
            continue
        if message:
            report.issues.append(RowIssue(index, name, file, "altered", message))
        if float(np.abs(wave).max()) < SILENCE_PEAK:
            report.issues.append(RowIssue(index, name, file, "warning", f"{name}: the audio is silent (peak below "
                                                                       f"{SILENCE_PEAK}); check the file."))
        report.durations.append(seconds)
        report.seconds += kept
        report.audio_tokens.append(family.audio_tokens(kept))
    if not ok:
        return
    report.usable_rows += 1
    text = " ".join(references[:1]) + " " + prompt
    report.text_chars.append(len(references[0]))
    if tokenizer is not None:
        report.text_tokens.append(len(tokenizer.encode(text, add_special_tokens=False)))
