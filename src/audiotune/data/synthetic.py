"""A synthetic audio-captioning dataset stored exactly like the Hub's AudioCaps.

Why synthetic: this project must run its whole workflow offline, and a dataset whose captions
are *true descriptions* of the audio lets a test or the demo check that fine-tuning really
learned something. Each clip is a sequence of sound events (tones, chirps, noise bursts,
counted beeps, silences); each caption describes those events in one of several wordings.

Layout (what ``load_dataset(DIR)`` and ``load_dataset("parquet", data_files=...)`` read)::

    DIR/data/train-00000-of-00001.parquet       one row per clip
    DIR/data/validation-00000-of-00001.parquet
    DIR/data/test-00000-of-00001.parquet

Columns: ``audiocap_id`` (int), ``youtube_id`` (str, the clip id), ``start_time`` (int),
``caption`` (str), ``audio`` (``Audio`` feature: ``{"bytes", "path"}``) and ``captions``: the 5
reference captions of the clip, as AudioCaps/Clotho evaluation uses (``caption`` is the first).
Every split has the same columns so that one non-streaming ``load_dataset(DIR)`` reads them all.
Clips are 1–10 s long, at 16 / 22.05 / 44.1 kHz, mono or stereo, stored as WAV or FLAC.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import encode_audio
# The caption wordings live below data/ and models/ (the tiny tokenizer is trained on them too).
from ..caption_words import (BEEPS as _BEEPS, CHIRPS as _CHIRPS, CONNECTORS as _CONNECTORS, COUNTS as _COUNTS,
                             NOISES as _NOISES, OPENERS as _OPENERS, PITCHES as _PITCHES, SILENCE as _SILENCE)

SAMPLE_RATES = (16000, 22050, 44100)
N_REFERENCES = 5


@dataclass(frozen=True)
class SoundEvent:
    """One event of a clip: what it is (kind, variant), how long, and its count for beeps."""

    kind: str
    variant: str
    seconds: float
    count: int = 0

    def describe(self, rng: random.Random) -> str:
        if self.kind == "tone":
            return rng.choice(_PITCHES[self.variant][1])
        if self.kind == "chirp":
            return rng.choice(_CHIRPS[self.variant])
        if self.kind == "noise":
            return rng.choice(_NOISES[self.variant])
        if self.kind == "beeps":
            return rng.choice(_BEEPS).format(n=_COUNTS[self.count])
        return rng.choice(_SILENCE)


def _render_event(event: SoundEvent, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(event.seconds * sr)
    t = np.arange(n) / sr
    if event.kind == "tone":
        freq = _PITCHES[event.variant][0]
        wave = 0.5 * np.sin(2 * np.pi * freq * t)
    elif event.kind == "chirp":
        f0, f1 = (300.0, 2400.0) if event.variant == "rising" else (2400.0, 300.0)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(event.seconds, 1e-3)))
        wave = 0.5 * np.sin(phase)
    elif event.kind == "noise":
        white = rng.standard_normal(n)
        if event.variant == "white":
            wave = white
        else:
            # Shape the spectrum: 1/f (pink) or 1/f^2 (brown) power.
            spectrum = np.fft.rfft(white)
            f = np.fft.rfftfreq(n, 1 / sr)
            f[0] = f[1] if n > 1 else 1.0
            power = 1.0 if event.variant == "pink" else 2.0
            wave = np.fft.irfft(spectrum / f ** (power / 2), n)
        wave = 0.4 * wave / (np.abs(wave).max() + 1e-9)
    elif event.kind == "beeps":
        wave = np.zeros(n)
        slot = n // event.count
        on = int(0.6 * slot)
        for i in range(event.count):
            seg = np.arange(on) / sr
            wave[i * slot : i * slot + on] = 0.5 * np.sin(2 * np.pi * 1000.0 * seg)
    else:
        wave = 0.001 * rng.standard_normal(n)
    # 10 ms fades avoid clicks that would make every event sound like a beep.
    fade = min(int(0.01 * sr), n // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return wave


# A listener must be able to tell every event apart and count beeps: a clip holds at most one event per
# MIN_EVENT_SECONDS (a short clip holds fewer), and counted beeps start at least MIN_BEEP_SLOT_SECONDS apart
# (a short event counts fewer).
MIN_EVENT_SECONDS = 0.8
MIN_BEEP_SLOT_SECONDS = 0.25


def _random_events(rng: random.Random, total_seconds: float) -> list[SoundEvent]:
    n_events = min(rng.choice([1, 2, 2, 3]), max(1, int(total_seconds // MIN_EVENT_SECONDS)))
    shares = [rng.uniform(0.6, 1.4) for _ in range(n_events)]
    out: list[SoundEvent] = []
    for i, share in enumerate(shares):
        seconds = total_seconds * share / sum(shares)
        kind = rng.choice(["tone", "chirp", "noise", "beeps", "silence"])
        if kind == "silence" and (i == 0 or out[-1].kind == "silence"):
            kind = "tone"  # captions neither start with silence nor describe two pauses in a row
        if kind == "tone":
            out.append(SoundEvent("tone", rng.choice(list(_PITCHES)), seconds))
        elif kind == "chirp":
            out.append(SoundEvent("chirp", rng.choice(list(_CHIRPS)), seconds))
        elif kind == "noise":
            out.append(SoundEvent("noise", rng.choice(list(_NOISES)), seconds))
        elif kind == "beeps":
            countable = [c for c in _COUNTS if c * MIN_BEEP_SLOT_SECONDS <= seconds] or [min(_COUNTS)]
            out.append(SoundEvent("beeps", "", seconds, count=rng.choice(countable)))
        else:
            out.append(SoundEvent("silence", "", seconds))
    return out


def caption_for(events: list[SoundEvent], rng: random.Random) -> str:
    """One faithful description of ``events`` in a randomly chosen wording."""
    text = rng.choice(_OPENERS)
    for i, event in enumerate(events):
        if i:
            text += rng.choice(_CONNECTORS)
        text += event.describe(rng)
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class SyntheticClip:
    """A rendered clip: waveform (samples × channels), its rate, events and captions."""

    clip_id: str
    audio: np.ndarray
    sampling_rate: int
    events: tuple[SoundEvent, ...]
    captions: tuple[str, ...]


def sized_caption(events: list[SoundEvent], rng: random.Random, words: int) -> str:
    """A description of exactly ``words`` words: faithful wordings of ``events`` one after another, the last cut
    short (the lengths of a real caption mix, for benchmarks of padding; ``make_clip``'s ``caption_words``)."""
    out: list[str] = []
    while len(out) < words:
        out += caption_for(events, rng).split()
    return " ".join(out[:words]).rstrip(".,;") + "."


def make_clip(index: int, seed: int, min_seconds: float = 1.0, max_seconds: float = 10.0,
              caption_words: tuple[int, int] | None = None) -> SyntheticClip:
    """Render clip ``index`` of the dataset seeded by ``seed``: same arguments, same clip. ``caption_words``: each
    caption's word count drawn uniformly from this range (default: one natural wording, 3–20 words)."""
    rng = random.Random(seed * 1_000_003 + index)
    nrng = np.random.default_rng(seed * 1_000_003 + index)
    seconds = round(rng.uniform(min_seconds, max_seconds), 2)
    sr = rng.choice(SAMPLE_RATES)
    channels = rng.choice([1, 1, 2])
    events = _random_events(rng, seconds)
    wave = np.concatenate([_render_event(e, sr, nrng) for e in events]).astype(np.float32)
    if channels == 2:
        wave = np.stack([wave, 0.8 * wave], axis=1)
    if caption_words is None:
        captions = tuple(caption_for(events, rng) for _ in range(N_REFERENCES))
    else:
        words = random.Random(f"words-{seed}-{index}")  # the clip's audio and events stay the default's
        captions = tuple(sized_caption(events, words, words.randint(*caption_words)) for _ in range(N_REFERENCES))
    return SyntheticClip(f"synth{seed:03d}-{index:05d}", wave, sr, tuple(events), captions)


def write_synthetic_audiocaps(
    out_dir: str | Path,
    n_clips: int = 300,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    min_seconds: float = 1.0,
    max_seconds: float = 10.0,
    caption_words: tuple[int, int] | None = None,
) -> dict[str, int]:
    """Write train/validation/test parquet shards under ``out_dir/data``; return rows per split.

    Splits are cut from one clip sequence, so no clip is in two splits. Writing goes through
    ``datasets`` so that the parquet carries the ``Audio`` feature in its schema metadata,
    exactly as a Hub dataset does.
    """
    from datasets import Audio, Dataset, Features, Sequence, Value

    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    n_train = max(1, int(round(n_clips * split_fractions[0])))
    n_val = max(1, int(round(n_clips * split_fractions[1])))
    n_test = max(1, n_clips - n_train - n_val)
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val),
              "test": (n_train + n_val, n_train + n_val + n_test)}
    counts: dict[str, int] = {}
    for split, (start, stop) in bounds.items():
        rows: dict[str, list] = {"audiocap_id": [], "youtube_id": [], "start_time": [], "caption": [], "audio": [],
                                 "captions": []}
        for index in range(start, stop):
            clip = make_clip(index, seed, min_seconds, max_seconds, caption_words)
            fmt = "FLAC" if index % 3 == 2 else "WAV"
            rows["audiocap_id"].append(index)
            rows["youtube_id"].append(clip.clip_id)
            rows["start_time"].append(0)
            rows["caption"].append(clip.captions[0])
            rows["audio"].append({"bytes": encode_audio(clip.audio, clip.sampling_rate, fmt),
                                  "path": f"{clip.clip_id}.{fmt.lower()}"})
            rows["captions"].append(list(clip.captions))
        features = {"audiocap_id": Value("int64"), "youtube_id": Value("string"), "start_time": Value("int64"),
                    "caption": Value("string"), "audio": Audio(), "captions": Sequence(Value("string"))}
        Dataset.from_dict(rows, features=Features(features)).to_parquet(
            str(out / "data" / f"{split}-00000-of-00001.parquet"))
        counts[split] = stop - start
    return counts
