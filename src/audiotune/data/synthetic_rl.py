"""A verifiable synthetic task for GRPO and DPO: "How many beeps?" on counted-beep clips.

Each clip is ``count`` beeps of 1 kHz (rendered by :mod:`audiotune.data.synthetic`'s beep event), one per
``slot_seconds``, over faint noise, at 16 kHz; the answer is the count, so every completion can be checked.
One table serves every method:

- ``--task mcq``: ``question``, ``choices`` (the count words; shuffled per row when ``shuffle_choices``) and
  ``answer`` (the right choice's text), as MMAU rows are;
- ``--task classify``: ``label`` (the count word);
- ``--method dpo``: ``prompt`` (the question), ``chosen`` (the right count word) and ``rejected`` (a wrong one).

Layout: ``DIR/data/{train,validation,test}-00000-of-00001.parquet`` with an ``Audio`` column, like the captions.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..audio import encode_audio
from .synthetic import _COUNTS, SoundEvent, _render_event

QUESTION = "How many beeps do you hear?"
RATE = 16000


def beep_clip(count: int, slot_seconds: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` beeps, one per slot, with a little noise so no two clips are the same."""
    wave = _render_event(SoundEvent("beeps", "", count * slot_seconds, count=count), RATE, rng)
    return (wave + 0.003 * rng.standard_normal(len(wave))).astype(np.float32)


def write_beep_count_dataset(out_dir: str | Path, n_clips: int = 200, seed: int = 0,
                             counts: tuple[int, ...] = (2, 3, 4, 5), slot_seconds: float = 0.4,
                             shuffle_choices: bool = False,
                             split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> dict[str, int]:
    """Write train/validation/test parquet shards under ``out_dir/data``; return rows per split. ``counts`` is
    cycled, then shuffled: each distinct count is a choice, and repeating one makes it more frequent (by default
    they are balanced, so accuracy by chance is 1/4)."""
    from datasets import Audio, Dataset, Features, Sequence, Value

    words = [_COUNTS[c] for c in sorted(set(counts))]
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    order = [counts[i % len(counts)] for i in range(n_clips)]
    rng.shuffle(order)
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    n_train = max(1, int(round(n_clips * split_fractions[0])))
    n_val = max(1, int(round(n_clips * split_fractions[1])))
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, n_clips)}
    features = Features({"id": Value("string"), "audio": Audio(), "question": Value("string"),
                         "choices": Sequence(Value("string")), "answer": Value("string"), "label": Value("string"),
                         "prompt": Value("string"), "chosen": Value("string"), "rejected": Value("string"),
                         "count": Value("int64")})
    rows_per_split: dict[str, int] = {}
    for split, (start, stop) in bounds.items():
        rows: dict[str, list] = {name: [] for name in features}
        for index in range(start, stop):
            count = order[index]
            word = _COUNTS[count]
            choices = list(words)
            if shuffle_choices:
                rng.shuffle(choices)
            clip_id = f"beeps{seed:03d}-{index:05d}"
            rows["id"].append(clip_id)
            rows["audio"].append({"bytes": encode_audio(beep_clip(count, slot_seconds, nrng), RATE, "WAV"),
                                  "path": f"{clip_id}.wav"})
            rows["question"].append(QUESTION)
            rows["choices"].append(choices)
            rows["answer"].append(word)
            rows["label"].append(word)
            rows["prompt"].append(QUESTION)
            rows["chosen"].append(word)
            rows["rejected"].append(rng.choice([w for w in words if w != word]))
            rows["count"].append(count)
        Dataset.from_dict(rows, features=features).to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
        rows_per_split[split] = stop - start
    return rows_per_split
