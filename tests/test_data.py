"""Every source shape and task, the bad-input corpus through `data check`, and streaming with workers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Audio, ClassLabel, Dataset, Features, Value

from audiotune.config import DataConfig
from audiotune.train_config import TrainConfig
from audiotune.data.check import check_dataset
from audiotune.data.examples import BadSampleLog, ExampleStream, streaming_workers
from audiotune.data.prepare import prepare_split
from audiotune.errors import DatasetSchemaError
from audiotune.evaluate import EvalConfig, group_references, run_evaluation
from audiotune.train import train
from tests.conftest import offline_entry, tone


def _wav(path, seconds=1.0, freq=440, rate=16000, channels=1, subtype="PCM_16"):
    wave = tone(seconds, freq, rate)
    if channels > 1:
        wave = np.stack([wave] * channels, axis=1)
    sf.write(path, wave, rate, subtype=subtype)
    return path


# ---------------------------------------------------------------- the bad-input corpus

@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "clips").mkdir()
    _wav(root / "clips" / "good.wav")
    good = (root / "clips" / "good.wav").read_bytes()
    (root / "clips" / "truncated.wav").write_bytes(good[: len(good) // 2])
    (root / "clips" / "zero.wav").write_bytes(b"")
    (root / "clips" / "text.wav").write_text("this is not audio\n" * 20)
    (root / "clips" / "random.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    nan = tone(1.0).astype(np.float32)
    nan[100:200] = np.nan
    sf.write(root / "clips" / "nan.wav", nan, 16000, subtype="FLOAT")
    _wav(root / "clips" / "eight.wav", 0.5, rate=96000, channels=8)
    _wav(root / "clips" / "stereo8k.wav", 1.0, rate=8000, channels=2)
    sf.write(root / "clips" / "long.flac", np.zeros(15 * 60 * 8000, dtype=np.float32), 8000)  # 15 minutes
    rows = [
        ("good", "clips/good.wav", "A tone."), ("truncated", "clips/truncated.wav", "A tone."),
        ("zero", "clips/zero.wav", "A tone."), ("text", "clips/text.wav", "A tone."),
        ("random", "clips/random.mp3", "A tone."), ("nan", "clips/nan.wav", "A tone."),
        ("eight", "clips/eight.wav", "A tone."), ("stereo8k", "clips/stereo8k.wav", "A tone."),
        ("long", "clips/long.flac", "Silence."), ("missing", "clips/missing.wav", "A tone."),
        ("empty-caption", "clips/good.wav", ""), ("blank-caption", "clips/good.wav", "   "),
    ]
    with (root / "manifest.jsonl").open("w") as handle:
        for clip_id, path, caption in rows:
            handle.write(json.dumps({"id": clip_id, "audio_path": path, "caption": caption}) + "\n")
    return root


EXPECTED = {
    "truncated": ("fails", "truncated WAV"), "zero": ("fails", "empty"), "text": ("fails", "cannot decode"),
    "random": ("fails", "cannot decode"), "nan": ("fails", "NaN"), "missing": ("fails", "does not exist"),
    "empty-caption": ("fails", "empty or only whitespace"), "blank-caption": ("fails", "empty or only whitespace"),
    "long": ("altered", "keeping the first 600 s"),
}


def test_data_check_reports_the_bad_input_corpus(bad_corpus):
    spec = DataConfig(dataset=str(bad_corpus / "manifest.jsonl"), id_column="id")
    report = check_dataset(spec, "train", offline_entry("af3"))
    assert report.rows == 12 and report.exit_code == 1 and report.fatal is None
    found = {}
    for issue in report.issues:
        found.setdefault(issue.id, []).append(issue)
    for clip_id, (severity, text) in EXPECTED.items():
        assert clip_id in found, clip_id
        issue = found[clip_id][0]
        assert issue.severity == severity and text in issue.problem, (clip_id, issue)
        assert clip_id in issue.problem or clip_id in str(issue.file)  # the item is named
    assert found["long"][-1].severity == "warning"  # all-silent is flagged too
    assert not {"good", "eight", "stereo8k"} & set(found)
    assert report.usable_rows == 4  # good, eight, stereo8k, long (kept, cut at 600 s)
    assert {96000, 8000, 16000} <= set(report.sample_rates) and {1, 2, 8} <= set(report.channels)
    summary = report.summary()
    assert summary["duration_histogram"][">600 s"] == 1 and summary["audio_tokens"]["max"] == 15000


def test_data_check_cli_json_and_exit_codes(bad_corpus, tmp_path, cli):
    code, out, _ = cli("data", "check", bad_corpus / "manifest.jsonl", "--id-column", "id", "--json")
    assert code == 1
    summary = json.loads(out)
    assert summary["rows"] == 12 and len([i for i in summary["issues"] if i["severity"] == "fails"]) == 8
    code, out, _ = cli("data", "check", bad_corpus / "manifest.jsonl", "--id-column", "id")
    assert code == 1 and "truncated" in out and "durations" in out
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_path": "x.wav", "label_text": "a"}) + "\n")
    code, _, err = cli("data", "check", tmp_path / "m.jsonl")
    assert code == 2 and "cannot find the text column" in err


def test_wrong_type_and_empty_dataset(tmp_path):
    _wav(tmp_path / "a.wav")
    Dataset.from_dict({"audio": [str(tmp_path / "a.wav")] * 2, "caption": [3, 4]}).to_parquet(str(tmp_path / "w.parquet"))
    report = check_dataset(DataConfig(dataset=str(tmp_path / "w.parquet")), "train", offline_entry("af3"))
    assert report.exit_code == 2 and all("must hold text" in i.problem for i in report.issues)
    Dataset.from_dict({"audio": [], "caption": []}, features=Features({"audio": Value("string"),
                                                                       "caption": Value("string")})).to_parquet(
        str(tmp_path / "e.parquet"))
    empty = check_dataset(DataConfig(dataset=str(tmp_path / "e.parquet")), "train", offline_entry("af3"))
    assert empty.exit_code == 2 and "empty" in empty.fatal


# ---------------------------------------------------------------- every source shape and task

def _shape(tmp_path, shape: str) -> tuple[str, dict]:
    clips = tmp_path / "clips"
    clips.mkdir(exist_ok=True)
    for i in range(6):
        _wav(clips / f"c{i}.wav", 1.0 + 0.2 * i, 200 + 100 * i)
    if shape == "jsonl-relative-caption":
        with (tmp_path / "m.jsonl").open("w") as handle:
            for i in range(6):
                handle.write(json.dumps({"audio_path": f"clips/c{i}.wav", "text": f"tone number {i}"}) + "\n")
        return str(tmp_path / "m.jsonl"), {"task": "caption"}
    if shape == "csv-absolute-asr":
        with (tmp_path / "m.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "transcript"])
            for i in range(6):
                writer.writerow([str(clips / f"c{i}.wav"), f"say {i}"])
        return str(tmp_path / "m.csv"), {"task": "asr"}
    if shape == "audiofolder-caption":
        with (clips / "metadata.csv").open("w") as handle:
            handle.write("file_name,caption\n" + "".join(f"c{i}.wav,a tone {i}\n" for i in range(6)))
        return str(clips), {"task": "caption"}
    if shape == "sharegpt-chat":
        with (tmp_path / "chat.jsonl").open("w") as handle:
            for i in range(6):
                handle.write(json.dumps({
                    "messages": [{"role": "user", "content": "<audio>What is this?"},
                                 {"role": "assistant", "content": "A tone."},
                                 {"role": "user", "content": "Describe it again, with its number."},
                                 {"role": "assistant", "content": f"Another tone, number {i}."}],
                    "audios": [f"clips/c{i}.wav"]}) + "\n")
        return str(tmp_path / "chat.jsonl"), {"task": "caption"}  # auto-detected as chat
    if shape == "parquet-embedded-classify":
        audio = [{"bytes": (clips / f"c{i}.wav").read_bytes(), "path": None} for i in range(6)]
        Dataset.from_dict({"audio": audio, "label": [i % 2 for i in range(6)]},
                          features=Features({"audio": Audio(), "label": ClassLabel(names=["low", "high"])})
                          ).to_parquet(str(tmp_path / "c.parquet"))
        return str(tmp_path / "c.parquet"), {"task": "classify"}
    if shape == "arrow-caption":
        audio = [{"bytes": (clips / f"c{i}.wav").read_bytes(), "path": f"c{i}.wav"} for i in range(6)]
        Dataset.from_dict({"audio": audio, "caption": [f"tone {i}" for i in range(6)]},
                          features=Features({"audio": Audio(), "caption": Value("string")})
                          ).save_to_disk(str(tmp_path / "saved"))
        return str(next((tmp_path / "saved").glob("*.arrow"))), {"task": "caption"}
    if shape == "jsonl-qa":
        with (tmp_path / "qa.jsonl").open("w") as handle:
            for i in range(6):
                handle.write(json.dumps({"audio": f"clips/c{i}.wav", "question": "How many tones?",
                                         "answer": "one"}) + "\n")
        return str(tmp_path / "qa.jsonl"), {"task": "qa"}
    raise ValueError(shape)


SHAPES = ["jsonl-relative-caption", "csv-absolute-asr", "audiofolder-caption", "sharegpt-chat",
          "parquet-embedded-classify", "arrow-caption", "jsonl-qa"]


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_trains_and_evaluates(micro_af3, tmp_path, shape):
    dataset, extra = _shape(tmp_path, shape)
    result = train(TrainConfig.from_flat(model=str(micro_af3), dataset=dataset, output_dir=str(tmp_path / "run"),
                                         eval_split=None, eval_take=None, max_steps=2, per_device_train_batch_size=2,
                                         gradient_accumulation_steps=1, save_steps=2, eval_generate_take=0, **extra))
    assert result.steps == 2 and not result.skipped and np.isfinite(result.train_loss)
    report = run_evaluation(EvalConfig.from_flat(model=str(micro_af3), dataset=dataset, split="train",
                                                 out=str(tmp_path / "ev"), adapters=[str(tmp_path / "run")], take=3,
                                                 max_new_tokens=4, with_meteor=False, **extra))
    expected = {"caption": "CIDEr-D", "asr": "WER", "classify": "accuracy", "qa": "accuracy"}[extra["task"]]
    assert expected in report.models[0].metrics and len(report.models[0].predictions) == 3
    if shape == "sharegpt-chat":
        assert report.task == "chat"
        assert report.models[0].predictions[0]["references"][0].startswith("Another tone")


def test_chat_examples_keep_turns_and_audio_order(tmp_path):
    dataset, _ = _shape(tmp_path, "sharegpt-chat")
    rows, build = prepare_split(DataConfig(dataset=dataset), "train", offline_entry("af3"))
    assert build.task.name == "chat"
    example = build(rows[0], 0)
    roles = [m["role"] for m in example.messages]
    assert roles == ["user", "assistant", "user"] and example.references == ["Another tone, number 0."]
    (audio,) = example.audios()
    assert len(audio) == 16000 and example.messages[0]["content"][0]["type"] == "audio"
    assert example.messages[0]["content"][1] == {"type": "text", "text": "What is this?"}
    untagged = dict(rows[0], messages=[{"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "A."}])
    assert build(untagged, 0).messages[0]["content"][0]["type"] == "audio"  # placed before the first user text
    mismatch = dict(rows[0], audios=[])
    with pytest.raises(DatasetSchemaError, match="1 audio tag"):
        build(mismatch, 0)
    two = dict(rows[0], audios=[rows[0]["audios"][0]] * 2,
               messages=[{"role": "user", "content": "<audio><audio>Compare."}, {"role": "assistant", "content": "Same."}])
    with pytest.raises(DatasetSchemaError, match="takes at most 1"):
        build(two, 0)


def test_rows_sharing_a_clip_id_become_one_clip_with_all_references(tmp_path):
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.wav", freq=880)
    rows = [{"id": "a", "audio": "a.wav", "caption": c} for c in ("one", "two", "three")]
    rows += [{"id": "b", "audio": "b.wav", "caption": c} for c in ("four", "five")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows_ds, build = prepare_split(DataConfig(dataset=str(tmp_path / "m.jsonl"), id_column="id"), "train",
                                   offline_entry("af3"))
    grouped = group_references([build(rows_ds[i], i) for i in range(len(rows_ds))])
    assert [(e.id, e.references) for e in grouped] == [("a", ["one", "two", "three"]), ("b", ["four", "five"])]


# ---------------------------------------------------------------- parallel preparation

@pytest.mark.parametrize("files", [1, 4])
def test_streaming_workers_see_every_row_once(tmp_path, files):
    _wav(tmp_path / "a.wav")
    for f in range(files):
        rows = {"id": [f"f{f}-{i}" for i in range(12 // files)], "audio": [str(tmp_path / "a.wav")] * (12 // files),
                "caption": ["A tone."] * (12 // files)}
        Dataset.from_dict(rows).to_parquet(str(tmp_path / f"part-{f}.parquet"))
    spec = DataConfig(dataset=str(tmp_path / "part-*.parquet"), streaming=True, id_column="id")
    rows, build = prepare_split(spec, "train", offline_entry("af3"))
    stream = ExampleStream(rows, build, BadSampleLog(None))
    workers = streaming_workers(rows, 2)
    assert workers == min(2, files)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=lambda e: e)
    ids = [example.id for example in loader]
    assert sorted(ids) == sorted(f"f{f}-{i}" for f in range(files) for i in range(12 // files))  # once each


@pytest.mark.slow
def test_streaming_training_with_workers(micro_af3, tmp_path):
    for f in range(2):
        _wav(tmp_path / f"a{f}.wav", 1.0, 300 + 200 * f)
        Dataset.from_dict({"audio": [str(tmp_path / f"a{f}.wav")] * 4, "caption": [f"tone {f}"] * 4}).to_parquet(
            str(tmp_path / f"part-{f}.parquet"))
    result = train(TrainConfig.from_flat(model=str(micro_af3), dataset=str(tmp_path / "part-*.parquet"), streaming=True,
                                         dataloader_num_workers=2, output_dir=str(tmp_path / "run"), eval_split=None,
                                         eval_take=None, max_steps=3, per_device_train_batch_size=2,
                                         gradient_accumulation_steps=1, save_steps=3, eval_generate_take=0))
    assert result.steps == 3 and np.isfinite(result.train_loss) and not result.skipped
