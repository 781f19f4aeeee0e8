"""Data preparation throughput: decode + resample (+ features) per clip, the guide's path vs audiotune's.

Guide: ``load_dataset(..., streaming=True).cast_column("audio", Audio(sampling_rate=16000))`` (torchcodec/ffmpeg
decodes and resamples) and ``processor.apply_chat_template(..., output_labels=True)`` in the collator.
audiotune: rows with undecoded audio, soundfile + soxr, the assistant-only-label collator.
Same synthetic clips (1–10 s at 16/22.05/44.1 kHz, mono and stereo, WAV and FLAC), alternated in one run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


def run(clips: int = 96, batch_size: int = 8, repeats: int = 3) -> dict:
    from datasets import Audio, load_dataset

    from audiotune.config import DataConfig
    from audiotune.data.collator import ConversationCollator
    from audiotune.data.examples import BadSampleLog, ExampleStream
    from audiotune.data.prepare import prepare_split
    from audiotune.data.synthetic import write_synthetic_audiocaps
    from audiotune.models.families import AUDIO_FLAMINGO_3
    from audiotune.models.loading import load_processor, offline_facts
    from audiotune.models.tiny import build_tiny

    af3 = offline_facts(AUDIO_FLAMINGO_3)  # the data code reads its rate, window and audio tokens

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_synthetic_audiocaps(data, n_clips=int(clips / 0.8) + 2, seed=3)
        processor = load_processor(build_tiny("af3", Path(tmp) / "tiny"))

        def guide_decode():
            rows = load_dataset(str(data), split="train", streaming=True).cast_column("audio", Audio(sampling_rate=16000))
            return [row["audio"]["array"] for row in rows.take(clips)]

        def ours_decode():
            rows, build = prepare_split(DataConfig(dataset=str(data), streaming=True), "train", af3)
            return [e.audios()[0] for e in ExampleStream(rows.take(clips), build, BadSampleLog(None))]

        def guide_full():
            rows = load_dataset(str(data), split="train", streaming=True).cast_column("audio", Audio(sampling_rate=16000))
            batch = []
            for row in rows.take(clips):
                batch.append([{"role": "user", "content": [{"type": "text", "text": "Describe the audio."},
                                                           {"type": "audio", "audio": row["audio"]["array"]}]},
                              {"role": "assistant", "content": [{"type": "text", "text": row["caption"]}]}])
                if len(batch) == batch_size:
                    processor.apply_chat_template(batch, tokenize=True, add_generation_prompt=False, return_dict=True,
                                                  output_labels=True)
                    batch = []

        def ours_full():
            rows, build = prepare_split(DataConfig(dataset=str(data), streaming=True), "train", af3)
            collate = ConversationCollator(processor, af3, training=True)
            batch = []
            for example in ExampleStream(rows.take(clips), build, BadSampleLog(None)):
                batch.append(example)
                if len(batch) == batch_size:
                    collate(batch)
                    batch = []

        times: dict[str, list[float]] = {k: [] for k in ("guide decode", "ours decode", "guide full", "ours full")}
        same_length = len(guide_decode()) == len(ours_decode())  # warm-up, and a sanity check
        for _ in range(repeats):
            for name, fn in (("guide decode", guide_decode), ("ours decode", ours_decode),
                             ("guide full", guide_full), ("ours full", ours_full)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    rate = {k: clips / statistics.median(v) for k, v in times.items()}
    return {"clips": clips, "batch_size": batch_size, "repeats": repeats, "clips_per_s": rate, "same_count": same_length,
            "decode_ratio": rate["ours decode"] / rate["guide decode"],
            "full_ratio": rate["ours full"] / rate["guide full"]}
