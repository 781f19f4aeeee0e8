"""The synthetic dataset is stored like the Hub's AudioCaps, and the guide's data calls work on it."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
from datasets import Audio, load_dataset

from audiotune.data.synthetic import make_clip


def test_guides_streaming_calls(synth_data):
    train = load_dataset(str(synth_data), split="train", streaming=True)
    train = train.cast_column("audio", Audio(sampling_rate=16000))
    rows = list(train.take(3))
    assert len(rows) == 3
    for row in rows:
        audio = row["audio"]
        assert audio["sampling_rate"] == 16000 and audio["array"].ndim == 1
        assert isinstance(row["caption"], str) and row["caption"]
    assert len(list(load_dataset(str(synth_data), split="train", streaming=True).skip(30).take(5))) == 5


def test_parquet_builder_and_schema(synth_data):
    test = load_dataset("parquet", data_files={"test": str(synth_data / "data" / "test-*.parquet")}, split="test")
    assert set(test.column_names) >= {"audio", "caption", "captions", "youtube_id", "audiocap_id"}
    assert isinstance(test.features["audio"], Audio)
    assert all(len(refs) == 5 and refs[0] == cap for refs, cap in zip(test["captions"], test["caption"]))
    raw = test.cast_column("audio", Audio(decode=False))[0]["audio"]
    assert set(raw) == {"bytes", "path"} and raw["bytes"]


def test_splits_are_disjoint_and_rates_channels_mixed(synth_data):
    splits = {s: load_dataset(str(synth_data), split=s) for s in ("train", "validation", "test")}
    ids = [set(d["youtube_id"]) for d in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    raw = splits["train"].cast_column("audio", Audio(decode=False))
    infos = [sf.info(io.BytesIO(r["audio"]["bytes"])) for r in raw]
    assert len({i.samplerate for i in infos}) >= 2 and {i.channels for i in infos} == {1, 2}
    assert all(1.0 <= i.duration <= 3.01 for i in infos)


def test_clips_are_deterministic_and_captions_describe_events():
    a, b = make_clip(5, seed=2), make_clip(5, seed=2)
    assert np.array_equal(a.audio, b.audio) and a.captions == b.captions
    tones = [make_clip(i, seed=9) for i in range(40)]
    for clip in tones:
        if len(clip.events) == 1 and clip.events[0].kind == "beeps":
            word = {2: "two", 3: "three", 4: "four", 5: "five"}[clip.events[0].count]
            assert all(word in c.lower() for c in clip.captions)
    full = [make_clip(i, seed=0) for i in range(30)]
    durations = [len(c.audio) / c.sampling_rate for c in full]
    assert min(durations) >= 1.0 and max(durations) <= 10.0


def test_events_are_long_enough_to_tell_apart():
    """A perfect listener can name and count every event: no more than one event per 0.8 s of clip, and
    counted beeps at least 0.25 s apart, so short clips hold fewer events and short beep runs fewer beeps."""
    from audiotune.data.synthetic import MIN_BEEP_SLOT_SECONDS, MIN_EVENT_SECONDS

    clips = [make_clip(i, seed=3, min_seconds=1.0, max_seconds=4.0) for i in range(120)]
    assert {len(c.events) for c in clips} == {1, 2, 3}
    for clip in clips:
        seconds = len(clip.audio) / clip.sampling_rate
        assert len(clip.events) <= max(1, int(seconds // MIN_EVENT_SECONDS)), clip.clip_id
        for event in clip.events:
            if event.kind == "beeps" and event.count > 2:
                assert event.seconds / event.count >= MIN_BEEP_SLOT_SECONDS, clip.clip_id
    assert any(len(c.events) == 1 for c in clips if len(c.audio) / c.sampling_rate < 1.6)


def test_caption_words_sizes_captions_and_keeps_the_audio():
    """The packing benchmark's length mix: each caption has a word count drawn from the range, the clip's audio and
    events are those of the default clip, and the default captions are unchanged by the option's existence."""
    counts = []
    for index in range(30):
        sized, plain = make_clip(index, 5, 1.0, 30.0, caption_words=(3, 60)), make_clip(index, 5, 1.0, 30.0)
        np.testing.assert_array_equal(sized.audio, plain.audio)
        assert sized.events == plain.events and sized.captions != plain.captions
        counts += [len(caption.split()) for caption in sized.captions]
        assert all(caption.endswith(".") for caption in sized.captions)
    assert min(counts) >= 3 and max(counts) <= 60 and max(counts) - min(counts) > 40
    assert make_clip(0, 5).captions == make_clip(0, 5, caption_words=None).captions
