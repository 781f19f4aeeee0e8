"""The Data tab's logic (pure: no Gradio here): ``data check`` as the CLI runs it, plus each problem row's clip.

:func:`check` builds the same spec as ``audiotune data check`` and calls
:func:`~audiotune.data.check.check_dataset`; :func:`row_audio` re-opens one row so a person can
listen to a clip that was altered or flagged (a row that fails to decode has nothing to play).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import DataCheckConfig
from ..data.check import CheckReport, check_dataset
from ..errors import AudiotuneError
from ..models.families import family_by_name
from ..models.family import Family
from .paths import Root


@dataclass(frozen=True)
class CheckRequest:
    dataset: str
    split: str = "train"
    task: str = "caption"
    model: str = ""  # tokens counted with its tokenizer; else the family's audio arithmetic only
    family: str = "af3"
    audio_column: str = ""
    text_column: str = ""
    long_audio: str = "window"

    def spec(self, root: Root) -> DataCheckConfig:
        """The same spec the CLI builds, with the dataset (and model) confined to the root."""
        return DataCheckConfig.from_flat(model=root.local_or_hub(self.model, "model") if self.model.strip() else None,
                                         split=self.split, family=self.family,
                                         dataset=root.local_or_hub(self.dataset, "dataset"), task=self.task,
                                         audio_column=self.audio_column.strip() or None,
                                         text_column=self.text_column.strip() or None, long_audio=self.long_audio)


def resolve(request: CheckRequest, root: Root) -> tuple[DataCheckConfig, Family, object]:
    spec = request.spec(root)
    from ..models.loading import load_processor, offline_facts, resolve_family

    if spec.model:
        return spec, resolve_family(spec.model), load_processor(spec.model).tokenizer
    return spec, offline_facts(family_by_name(request.family)), None  # no checkpoint: the tiny one's facts


def check(request: CheckRequest, root: Root, on_row: Callable[[int], None] | None = None) -> CheckReport:
    """Run ``data check``; a dataset-level problem is in ``report.fatal``, as the CLI shows it."""
    spec, family, tokenizer = resolve(request, root)
    return check_dataset(spec.data, request.split, family, tokenizer, on_row=on_row)


def rows_audio(request: CheckRequest, root: Root, indices: list[int]) -> tuple[dict[int, np.ndarray | str], int]:
    """Each row's clip (mono float32), or why it cannot play (a row that fails to decode); and the rate."""
    from ..audio import load_audio
    from ..data.prepare import prepare_split

    spec, family, _ = resolve(request, root)
    rows, build = prepare_split(spec.data, request.split, family, check_rows=False)
    out: dict[int, np.ndarray | str] = {}
    for index in indices:
        try:
            item = root.audio_item(build.first_clip(rows[int(index)], int(index)), f"row {index}")
            out[index] = load_audio(item, family.sampling_rate, f"row {index}")
        except AudiotuneError as error:
            out[index] = str(error)
    return out, family.sampling_rate
