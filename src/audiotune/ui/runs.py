"""An evaluation run folder as the Evaluate tab shows it (pure: no Gradio here).

``audiotune eval`` and the demo write ``predictions.jsonl`` (one line per model and clip) and
``metrics.json`` (corpus metrics per model, and the evaluation's config). This module turns them
into a metrics table and per-clip samples (references, every model's answer, per-clip scores), sorts
them worst first, filters them by text, and finds each clip's audio again by re-opening the dataset
the run names — decoding only the clips on the page, with every file path confined to the root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..metrics import LOWER_IS_BETTER
from ..tasks import headline_metric, metric_names
from .paths import Root

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


@dataclass
class Sample:
    id: str
    references: list[str]
    prompt: str = ""
    answers: dict[str, str] = field(default_factory=dict)  # model → prediction
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # model → metric → value

    def score(self, model: str, metric: str) -> float | None:
        value = self.scores.get(model, {}).get(metric)
        return None if value is None else float(value)

    def text(self) -> str:
        return " ".join([self.id, self.prompt, *self.references, *self.answers.values()]).lower()


@dataclass
class RunView:
    folder: Path
    task: str
    models: list[str]
    metrics: dict[str, dict[str, float]]  # model → metric → value
    samples: list[Sample]
    config: dict[str, Any]

    def metric_order(self) -> list[str]:
        first = next(iter(self.metrics.values()), {})
        return metric_names(self.task, list(first))

    def metrics_rows(self) -> list[list[Any]]:
        """Table rows: metric, then one value per model (rounded for display)."""
        return [[m, *[_round(self.metrics[n].get(m)) for n in self.models]] for m in self.metric_order()]

    def sample_metrics(self) -> list[str]:
        """Per-clip metrics present in the predictions, the task's headline first."""
        names = sorted({k for s in self.samples for scores in s.scores.values() for k in scores})
        head = headline_metric(self.task)
        return ([head] if head in names else []) + [n for n in names if n != head]


def _round(value: Any) -> Any:
    return round(float(value), 4) if isinstance(value, (int, float)) else value


REGRESSION = "regression.json"


def load_regression(folder: Path) -> tuple[str, list[list[str]], list[str]]:
    """A regression view's folder (``eval --benchmarks``): (its markdown, one table row per benchmark, the models).
    Each benchmark's own folder below it opens as a run."""
    view = json.loads((folder / REGRESSION).read_text())
    models = list(next(iter(view["table"].values()), {}))
    rows = []
    for name, cells in view["table"].items():
        row = [name, view["metrics"][name]]
        for model in models:
            cell = cells[model]
            text = "—" if cell["value"] is None else f"{cell['value']:.4f}"
            if cell.get("difference") is not None:
                text += f" ({cell['difference']:+.4f}, {cell['verdict'] or 'no interval'})"
            row.append(text)
        rows.append(row)
    markdown = (folder / "regression.md").read_text() if (folder / "regression.md").exists() else ""
    return markdown, rows, models


def load_run(folder: Path) -> RunView:
    """Read a run folder's predictions and metrics; a clear error when it is not one."""
    predictions = folder / PREDICTIONS
    if not predictions.exists():
        raise CheckpointError(f"{folder}: no {PREDICTIONS}; open a folder written by `audiotune eval` or the demo "
                              "(or run an evaluation below).")
    meta = json.loads((folder / METRICS).read_text()) if (folder / METRICS).exists() else {}
    samples: dict[str, Sample] = {}
    models: list[str] = []
    for number, line in enumerate(predictions.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise CheckpointError(f"{predictions}: line {number} is not JSON.") from None
        model = str(row.get("model", "model"))
        if model not in models:
            models.append(model)
        sample = samples.setdefault(str(row["id"]), Sample(str(row["id"]), list(row.get("references") or []),
                                                           str(row.get("prompt") or "")))
        sample.answers[model] = str(row.get("prediction", ""))
        sample.scores[model] = {k: v for k, v in (row.get("scores") or {}).items() if isinstance(v, (int, float))}
    metrics = meta.get("models") or {m: {} for m in models}
    return RunView(folder, meta.get("task", "caption"), models, metrics, list(samples.values()),
                   meta.get("config") or {})


def sort_samples(samples: list[Sample], model: str, metric: str, worst_first: bool = True) -> list[Sample]:
    """By ``model``'s per-clip ``metric``; "worst" is the lowest, or the highest for WER/CER. Unscored last."""
    lower_better = metric in LOWER_IS_BETTER
    ascending = worst_first != lower_better

    def key(sample: Sample) -> tuple[bool, float]:
        value = sample.score(model, metric)
        if value is None:
            return True, 0.0
        return False, value if ascending else -value

    return sorted(samples, key=key)


def filter_samples(samples: list[Sample], text: str) -> list[Sample]:
    """Samples whose id, prompt, references or any answer contain ``text`` (case-insensitive)."""
    needle = text.strip().lower()
    return [s for s in samples if needle in s.text()] if needle else list(samples)


class ClipAudio:
    """Finds a run's clips in the dataset its ``metrics.json`` names, decoding only those asked for."""

    def __init__(self, run: RunView, root: Root) -> None:
        self.run = run
        self.root = root
        self._index: dict[str, int] | None = None
        self._rows = None
        self._build = None
        self.rate = 16000
        self.problem: str | None = None

    def _open(self) -> None:
        import dataclasses

        from ..config import flat_fields
        from ..data.prepare import prepare_split
        from ..data.sources import row_id
        from ..errors import AudiotuneError
        from ..evaluate import EvalConfig
        from ..models.loading import resolve_family

        self._index = {}
        cfg = self.run.config
        if not cfg.get("dataset") or not cfg.get("model"):
            self.problem = f"{self.run.folder / METRICS} names no dataset or model; audio players are off."
            return
        try:
            # metrics.json's config is flat (the flags' names): the options this version knows, each to its part
            known = {f.name for f in flat_fields(EvalConfig)}
            ran = EvalConfig.from_flat(**{k: v for k, v in cfg.items() if k in known})
            spec = dataclasses.replace(ran.data, streaming=False,
                                       dataset=self.root.local_or_hub(str(cfg["dataset"]), "the run's dataset"))
            family = resolve_family(self.root.local_or_hub(str(cfg["model"]), "the run's model"))
            rows, build = prepare_split(spec, ran.split, family, check_rows=False)
        except Exception as error:  # noqa: BLE001 - players are optional: say why they are off
            if not isinstance(error, AudiotuneError):
                error = f"{type(error).__name__}: {error}"
            self.problem = f"audio players are off: {error}"
            return
        self.rate = family.sampling_rate
        self._rows, self._build = rows, build
        wanted = {s.id for s in self.run.samples}
        id_columns = [c for c in (build.id_column, "youtube_id", "id", "clip_id", "audiocap_id")
                      if c and c in (rows.column_names or [])]
        ids = rows.select_columns(id_columns) if id_columns else None  # the audio column stays unread
        for index in range(len(rows)):
            clip = row_id(ids[index] if ids is not None else {}, index, build.id_column)
            if clip in wanted:
                self._index.setdefault(clip, index)
            if len(self._index) == len(wanted):
                break

    def get(self, clip_id: str) -> np.ndarray | None:
        """The clip as mono float32 at the family's rate, or None when it cannot be found or decoded."""
        from ..audio import load_audio
        from ..errors import AudiotuneError

        if self._index is None:
            self._open()
        index = self._index.get(clip_id) if self._index else None
        if index is None or self._build is None:
            return None
        try:
            item = self.root.audio_item(self._build.first_clip(self._rows[index], index), f"clip {clip_id}")
            return load_audio(item, self.rate, clip_id)
        except AudiotuneError as error:
            self.problem = str(error)
            return None
