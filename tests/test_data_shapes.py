"""The dataset shapes of the field, each in its real on-disk layout: detected, checked, trained and evaluated; segments
cut exactly; several clips in one conversation; each shape's own problems named by row while the good rows train.

The text fixtures are the examples of docs/data-formats.md (the blocks marked ``fixture``), so the page and the
tests cannot drift apart; the binary layouts (parquet as the Hub stores it, tar shards) are written here.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import re
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Audio, Dataset, Features, Value

from audiotune.config import DataConfig, EvalConfig

from audiotune.train_config import TrainConfig
from audiotune.data.check import check_dataset
from audiotune.data.collator import IGNORE_INDEX, ConversationCollator
from audiotune.data.examples import BadSampleLog, ExampleDataset
from audiotune.data.prepare import prepare_split
from audiotune.errors import AudioDecodeError, ConfigError, DatasetSchemaError
from audiotune.evaluate import run_evaluation
from audiotune.train import train
from tests.conftest import offline_entry

RATE = 16000
DOC = Path(__file__).resolve().parents[1] / "docs" / "data-formats.md"
# Each clip the doc's examples name: a tone of its own frequency and length.
CLIPS = {"clips/dog.wav": (1.4, 300.0), "clips/cough.wav": (1.2, 700.0), "dog.wav": (1.4, 300.0),
         "cough.wav": (1.2, 700.0)}
SEGMENT_FREQS = (200.0, 450.0, 900.0)  # clips/meeting.wav: 2 s of each, then 2 s of silence


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _meeting() -> np.ndarray:
    return np.concatenate([_tone(2.0, f) for f in SEGMENT_FREQS] + [np.zeros(2 * RATE, np.float32)])


def doc_fixtures() -> dict[str, str]:
    """``{file name: text}`` of every block in docs/data-formats.md preceded by ``<!-- fixture: NAME -->``."""
    found = re.findall(r"<!-- fixture: (\S+) -->\n```\w*\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return dict(found)


def _flac(wave: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, RATE, format="FLAC")
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _shard(path: Path, keys: list[str], texts: dict[str, str], skip_audio: tuple[str, ...] = ()) -> None:
    with tarfile.open(path, "w") as archive:
        for i, key in enumerate(keys):
            if key not in skip_audio:
                _add(archive, f"{key}.flac", _flac(_tone(1.0 + 0.1 * i, 250.0 + 50 * i)))
            _add(archive, f"{key}.json", json.dumps({"text": texts[key], "speaker": "s1"}).encode())


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, tuple[str, dict]]:
    """``{shape: (dataset path, extra config)}``, each in the layout its users have on disk."""
    root = tmp_path_factory.mktemp("shapes")
    (root / "clips").mkdir()
    (root / "development").mkdir()
    for name, (seconds, freq) in CLIPS.items():
        folder = root / ("development" if "/" not in name else "")
        sf.write(folder / name, _tone(seconds, freq), RATE)
    sf.write(root / "clips" / "meeting.wav", _meeting(), RATE)
    for name, text in doc_fixtures().items():
        (root / name).write_text(text)
    # AudioBench as the Hub stores it: one parquet shard per split, the audio embedded, nested other_attributes.
    (root / "audiobench" / "data").mkdir(parents=True)
    wav = {n: (root / n).read_bytes() for n in ("clips/dog.wav", "clips/cough.wav")}
    Dataset.from_dict(
        {"context": [{"bytes": wav["clips/dog.wav"], "path": "dog.wav"}, {"bytes": wav["clips/cough.wav"],
                                                                            "path": "cough.wav"}] * 2,
         "instruction": ["What animal is this?", "Who is coughing?"] * 2, "answer": ["A dog.", "A woman."] * 2,
         "other_attributes": [{"source": "synthetic", "index": str(i)} for i in range(4)]},
        features=Features({"context": Audio(sampling_rate=RATE), "instruction": Value("string"),
                           "answer": Value("string"), "other_attributes": {"source": Value("string"),
                                                                           "index": Value("string")}}),
    ).to_parquet(str(root / "audiobench" / "data" / "test-00000-of-00001.parquet"))
    (root / "shards").mkdir()
    texts = {f"{s}{k:04d}": f"utterance {s} {k}" for s in "ab" for k in range(4)}
    _shard(root / "shards" / "train-00000.tar", [f"a{k:04d}" for k in range(4)], texts)
    _shard(root / "shards" / "train-00001.tar", [f"b{k:04d}" for k in range(4)], texts)
    return {
        "chat-content-lists": (str(root / "messages.jsonl"), {}),
        "chat-sharegpt": (str(root / "sharegpt.jsonl"), {}),
        "audio-flamingo": (str(root / "af3.json"), {}),
        "nemo": (str(root / "nemo.jsonl"), {}),  # asr by itself: a NeMo manifest's text is a transcript
        "lhotse": (str(root / "cuts.jsonl"), {}),
        "clotho": (str(root / "clotho_captions_development.csv"), {"audio_dir": str(root / "development")}),
        "audiobench": (str(root / "audiobench"), {"split": "test"}),
        "webdataset": (str(root / "shards" / "train-*.tar"), {"task": "asr"}),
        "webdataset-streaming": (str(root / "shards" / "train-*.tar"), {"task": "asr", "streaming": True}),
    }


EXPECTED = {  # shape → (detected shape, task, headline metric)
    "chat-content-lists": ("chat", "chat", "CIDEr-D"), "chat-sharegpt": ("chat", "chat", "CIDEr-D"),
    "audio-flamingo": ("audio-flamingo", "chat", "CIDEr-D"), "nemo": ("nemo", "asr", "WER"),
    "lhotse": ("lhotse", "asr", "WER"),
    "clotho": ("clotho", "caption", "CIDEr-D"), "audiobench": ("audiobench", "qa", "accuracy"),
    "webdataset": ("webdataset", "asr", "WER"), "webdataset-streaming": ("webdataset", "asr", "WER"),
}


def _data(shapes, shape) -> tuple[str, str, dict]:
    dataset, extra = shapes[shape]
    extra = dict(extra)
    return dataset, extra.pop("split", "train"), extra


@pytest.mark.parametrize("shape", list(EXPECTED))
def test_every_shape_is_detected_and_passes_data_check(shapes, shape, cli):
    dataset, split, extra = _data(shapes, shape)
    report = check_dataset(DataConfig(dataset=dataset, **extra), split, offline_entry("af3"))
    assert report.fatal is None and not report.issues, report.issues
    assert (report.shape, report.task) == EXPECTED[shape][:2]
    assert report.usable_rows == report.rows >= 2
    args = ["data", "check", dataset, "--split", split, "--json"] + [a for k, v in extra.items() if k != "streaming"
                                                                      for a in (f"--{k.replace('_', '-')}", v)]
    code, out, _ = cli(*args)
    assert code == 0 and json.loads(out)["shape"] == EXPECTED[shape][0]


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(EXPECTED))
def test_every_shape_trains_and_evaluates(micro_af3, shapes, shape, tmp_path):
    dataset, split, extra = _data(shapes, shape)
    result = train(TrainConfig.from_flat(model=str(micro_af3), dataset=dataset, train_split=split,
                                         output_dir=str(tmp_path / "run"), eval_split=None, eval_take=None, max_steps=2,
                                         per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=2,
                                         eval_generate_take=0, **extra))
    assert result.steps == 2 and not result.skipped and np.isfinite(result.train_loss)
    report = run_evaluation(EvalConfig.from_flat(model=str(micro_af3), dataset=dataset, split=split,
                                                 out=str(tmp_path / "ev"), adapters=[str(tmp_path / "run")], take=2,
                                                 max_new_tokens=3, with_meteor=False, **extra))
    assert report.task == EXPECTED[shape][1] and EXPECTED[shape][2] in report.models[0].metrics
    assert len(report.models[0].predictions) == 2


# ---------------------------------------------------------------- each shape read right

def _examples(dataset: str, family=None, split: str = "train", **extra):
    rows, build = prepare_split(DataConfig(dataset=dataset, **extra), split, family or offline_entry("af3"))
    log = BadSampleLog(None)
    return ExampleDataset(rows, build, log).usable(), log.entries(), build


def _dominant(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / RATE)[spectrum.argmax()])


def test_nemo_rows_are_their_segments_cut_exactly(shapes):
    dataset, _, extra = _data(shapes, "nemo")
    examples, skipped, build = _examples(dataset, **extra)
    assert build.shape.name == "nemo" and not skipped
    meeting, _ = sf.read(Path(dataset).parent / "clips" / "meeting.wav", dtype="float32")
    for i, freq in enumerate(SEGMENT_FREQS):  # rows 0-2: [2i, 2i + 2) s of the 8 s file
        (clip,) = examples[i].audios()
        np.testing.assert_array_equal(clip, meeting[2 * i * RATE:(2 * i + 2) * RATE])
        assert abs(_dominant(clip) - freq) < 1.0 and examples[i].references == [
            ["good morning everyone", "let us begin", "first the budget"][i]]
    (whole,) = examples[3].audios()  # no offset: from the start, `duration` long (the whole 1.2 s clip)
    assert len(whole) == int(1.2 * RATE)


def test_lhotse_cuts_are_their_segments(shapes):
    dataset, _, _ = _data(shapes, "lhotse")
    examples, skipped, build = _examples(dataset)
    assert build.shape.name == "lhotse" and build.task.name == "asr" and not skipped
    meeting, _ = sf.read(Path(dataset).parent / "clips" / "meeting.wav", dtype="float32")
    for i, example in enumerate(examples):
        np.testing.assert_array_equal(example.audios()[0], meeting[2 * i * RATE:(2 * i + 2) * RATE])
        assert example.id == f"meeting-{i}"
    assert [e.references for e in examples] == [["good morning everyone"], ["let us begin"]]
    import gzip  # as CutSet.to_file writes cuts.jsonl.gz

    packed = Path(dataset).with_name("cuts.jsonl.gz")
    packed.write_bytes(gzip.compress(Path(dataset).read_bytes()))
    again, _, _ = _examples(str(packed))
    assert [(e.id, e.references) for e in again] == [(e.id, e.references) for e in examples]


def test_segment_problems_name_the_row_and_the_good_rows_still_train(micro_af3, tmp_path):
    sf.write(tmp_path / "talk.wav", _meeting(), RATE)
    rows = [{"audio_filepath": "talk.wav", "offset": 2.0 * i, "duration": 2.0, "text": f"part {i}", "id": f"p{i}"}
            for i in range(3)]
    rows += [{"audio_filepath": "talk.wav", "offset": 9.5, "duration": 1.0, "text": "late", "id": "past-end"},
             {"audio_filepath": "talk.wav", "offset": 7.0, "duration": 3.0, "text": "long", "id": "runs-over"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DataConfig(dataset=str(tmp_path / "m.jsonl"), id_column="id")
    issues = {i.id: i for i in check_dataset(spec, "train", offline_entry("af3")).issues}
    assert set(issues) == {"past-end", "runs-over"}
    assert "offset 9.500 s is past the end" in issues["past-end"].problem and "8.000 s long" in issues["past-end"].problem
    assert "ends past the end" in issues["runs-over"].problem
    result = train(TrainConfig.from_flat(model=str(micro_af3), dataset=str(tmp_path / "m.jsonl"), id_column="id",
                                         output_dir=str(tmp_path / "run"), eval_split=None, eval_take=None, max_steps=2,
                                         per_device_train_batch_size=3, gradient_accumulation_steps=1, save_steps=2,
                                         eval_generate_take=0, task="asr"))
    assert sorted(s["id"] for s in result.skipped) == ["past-end", "runs-over"] and result.steps == 2


def test_audio_flamingo_numbered_tags_place_each_clip(shapes, tmp_path):
    root = Path(shapes["audio-flamingo"][0]).parent
    records = [{"id": "two", "sound": ["clips/dog.wav", "clips/cough.wav"], "conversations": [
        {"from": "human", "value": "Is <sound-2> louder than <sound-1>?"}, {"from": "gpt", "value": "No."}]},
        {"id": "missing", "sound": ["clips/dog.wav"], "conversations": [
            {"from": "human", "value": "<sound-1> then <sound-2>?"}, {"from": "gpt", "value": "No."}]},
        {"id": "unused", "sound": ["clips/dog.wav", "clips/cough.wav"], "conversations": [
            {"from": "human", "value": "<sound-1>?"}, {"from": "gpt", "value": "No."}]}]
    (root / "two.json").write_text(json.dumps(records))
    examples, skipped, _ = _examples(str(root / "two.json"), offline_entry("qwen2audio"))
    (two,) = examples
    kinds = [(p["type"], p.get("text") or round(_dominant(p["audio"]))) for p in two.messages[0]["content"]]
    assert kinds == [("text", "Is"), ("audio", 700), ("text", "louder than"), ("audio", 300), ("text", "?")]
    problems = {s["id"]: s["message"] for s in skipped}
    assert "[2] do not exist" in problems["missing"] and "[2] are never used" in problems["unused"]


def test_content_parts_by_path_url_data_uri_base64_and_input_audio_decode_alike(tmp_path):
    wave = _tone(1.0, 500.0)
    sf.write(tmp_path / "clip.wav", wave, RATE)
    data = (tmp_path / "clip.wav").read_bytes()
    b64 = base64.b64encode(data).decode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/clip.wav"
        parts = [{"type": "audio", "path": "clip.wav"}, {"type": "audio", "url": url},
                 {"type": "audio", "url": f"data:audio/wav;base64,{b64}"}, {"type": "audio", "base64": b64},
                 {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
                 {"type": "audio_url", "audio_url": {"url": url}}, {"type": "audio", "audio": "clip.wav"}]
        rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": [part, {"type": "text", "text": "What?"}]},
                                              {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]}]}
                for i, part in enumerate(parts)]
        rows.append({"id": "dead-link", "messages": [
            {"role": "user", "content": [{"type": "audio", "url": url.replace("clip", "gone")}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]}]})
        rows.append({"id": "odd-key", "messages": [
            {"role": "user", "content": [{"type": "audio", "path": "clip.wav", "start": 1.0}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]}]})
        rows.append({"id": "odd-part", "messages": [
            {"role": "user", "content": [{"type": "video", "path": "clip.wav"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]}]})
        (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        examples, skipped, _ = _examples(str(tmp_path / "m.jsonl"), id_column="id")
    finally:
        server.shutdown()
    assert [e.id for e in examples] == [f"r{i}" for i in range(len(parts))]
    for example in examples:
        np.testing.assert_allclose(example.audios()[0], sf.read(tmp_path / "clip.wav", dtype="float32")[0], atol=0)
    problems = {s["id"]: s["message"] for s in skipped}
    assert "cannot fetch" in problems["dead-link"] and "404" in problems["dead-link"]
    assert "unknown key(s) ['start']" in problems["odd-key"]
    assert "unsupported part 'video'" in problems["odd-part"]


def test_named_format_checks_its_columns(shapes):
    dataset, _, _ = _data(shapes, "chat-content-lists")
    with pytest.raises(DatasetSchemaError, match="--format nemo needs the column"):
        prepare_split(DataConfig(dataset=dataset, format="nemo"), "train", offline_entry("af3"))
    with pytest.raises(ConfigError, match="--format 'sharegpt'"):
        DataConfig(dataset=dataset, format="sharegpt")


def test_clotho_keeps_all_five_captions_as_references(shapes):
    dataset, _, extra = _data(shapes, "clotho")
    examples, _, _ = _examples(dataset, **extra)
    assert examples[0].references == ["A dog barks twice.", "A dog is barking.", "Two barks from a dog.",
                                      "A dog barks outside.", "Barking of a dog."]
    assert examples[0].target == "A dog barks twice." and abs(_dominant(examples[0].audios()[0]) - 300) < 1


def test_audiobench_rows_become_questions(shapes):
    dataset, split, _ = _data(shapes, "audiobench")
    examples, _, build = _examples(dataset, split=split)
    assert build.task.name == "qa" and examples[1].references == ["A woman."]
    assert examples[1].messages[0]["content"][1] == {"type": "text", "text": "Who is coughing?"}


# ---------------------------------------------------------------- webdataset: a missing member, a shard cut short

@pytest.mark.parametrize("streaming", [False, True])
def test_broken_shards_cost_only_their_own_keys(micro_af3, tmp_path, streaming):
    texts = {f"{s}{k}": f"word {s}{k}" for s in "abc" for k in range(7)}
    _shard(tmp_path / "s-0.tar", [f"a{k}" for k in range(7)], texts, skip_audio=("a6",))  # a6: .json only
    _shard(tmp_path / "s-1.tar", [f"b{k}" for k in range(7)], texts)
    _shard(tmp_path / "s-2.tar", [f"c{k}" for k in range(7)], texts)
    with tarfile.open(tmp_path / "s-2.tar") as archive:
        cut = next(m for m in archive.getmembers() if m.name == "c3.flac")
    data = (tmp_path / "s-2.tar").read_bytes()
    (tmp_path / "s-2.tar").write_bytes(data[:cut.offset_data + cut.size // 2])  # a download that stopped in c3.flac
    dataset = str(tmp_path / "s-*.tar")
    report = check_dataset(DataConfig(dataset=dataset, task="asr",
                                                 streaming=streaming), "train", offline_entry("af3"))
    issues = {i.id: i.problem for i in report.issues}
    assert set(issues) == {"s-2.tar", "a6"}
    assert "key(s) c3 lost a member" in issues["s-2.tar"] and "after key 'c2'" in issues["s-2.tar"]
    assert "has no audio member (.flac)" in issues["a6"] and "s-0.tar" in issues["a6"]
    assert report.usable_rows == 6 + 7 + 3  # a0-a5, b0-b6, c0-c2
    # 3 steps of 8 read every one of the 17 rows (16 good) at least once
    result = train(TrainConfig.from_flat(model=str(micro_af3), dataset=dataset, task="asr", streaming=streaming,
                                         output_dir=str(tmp_path / "run"), eval_split=None, eval_take=None, max_steps=3,
                                         per_device_train_batch_size=8, gradient_accumulation_steps=1, save_steps=3,
                                         eval_generate_take=0))
    assert sorted(s["id"] for s in result.skipped) == ["a6", "c3"] and result.steps == 3


def test_the_salvaged_keys_are_the_complete_ones(tmp_path):
    texts = {f"c{k}": f"word c{k}" for k in range(5)}
    _shard(tmp_path / "s.tar", [f"c{k}" for k in range(5)], texts)
    with tarfile.open(tmp_path / "s.tar") as archive:
        cut = next(m for m in archive.getmembers() if m.name == "c2.json")
    (tmp_path / "s.tar").write_bytes((tmp_path / "s.tar").read_bytes()[:cut.offset_data + 1])
    examples, skipped, _ = _examples(str(tmp_path / "s.tar"), task="asr")
    assert [e.id for e in examples] == ["c0", "c1"] and [s["id"] for s in skipped] == ["c2"]
    assert [e.references for e in examples] == [["word c0"], ["word c1"]]


# ---------------------------------------------------------------- several clips in one conversation

@pytest.fixture(scope="module")
def micro_qwen2audio(tmp_path_factory) -> Path:
    from audiotune.models.tiny import build_tiny

    return build_tiny("qwen2audio", tmp_path_factory.mktemp("micro-q2a"), seed=0, preset="micro")


def _two_clip_manifest(folder: Path) -> Path:
    sf.write(folder / "low.wav", _tone(1.3, 300.0), RATE)
    sf.write(folder / "high.wav", _tone(2.1, 900.0), RATE)
    rows = [{"id": f"pair{i}", "messages": [  # a clip in each user turn: multi-turn audio
        {"role": "user", "content": [{"type": "text", "text": "First:"}, {"type": "audio", "path": "low.wav"},
                                     {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A low hum."}]},
        {"role": "user", "content": [{"type": "audio", "path": "high.wav"}, {"type": "text", "text": "And this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Higher, a whistle."}]}]} for i in range(4)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "pairs.jsonl"


@pytest.mark.slow
def test_two_clip_conversations_train_and_generate(micro_qwen2audio, tmp_path):
    from audiotune.generate import GenerationSettings, generate
    from audiotune.models.loading import load_model, load_processor, resolve_family

    manifest = _two_clip_manifest(tmp_path)
    family = resolve_family(str(micro_qwen2audio))
    assert family.max_audios >= 2
    examples, skipped, _ = _examples(str(manifest), family, id_column="id")
    assert not skipped and len(examples[0].audios()) == 2
    processor = load_processor(micro_qwen2audio)
    batch = ConversationCollator(processor, family, training=True)(examples[:2])
    audio_id = processor.tokenizer.convert_tokens_to_ids(family.audio_token)
    # The processor's own count for each clip alone (one clip, one prompt), summed, equals the two-clip row's.
    alone = [processor(text=[f"<|audio_bos|>{family.audio_token}<|audio_eos|>"], audio=[clip],
                       return_tensors="pt")["input_ids"] for clip in examples[0].audios()]
    per_clip = [int((ids == audio_id).sum()) for ids in alone]
    assert int((batch["input_ids"][0] == audio_id).sum()) == sum(per_clip) > 0
    assert per_clip == [family.audio_tokens(len(c) / RATE) for c in examples[0].audios()]
    # Labels: exactly the two assistant answers, each with its end-of-turn token.
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
    text = processor.tokenizer.decode(labelled)
    assert text == f"A low hum.{family.end_of_turn}Higher, a whistle.{family.end_of_turn}", text
    first, second = [m["content"] for m in examples[0].messages if m["role"] == "user"]
    assert [p["type"] for p in first] == ["text", "audio", "text"] and [p["type"] for p in second] == ["audio", "text"]

    result = train(TrainConfig.from_flat(model=str(micro_qwen2audio), dataset=str(manifest), id_column="id",
                                         output_dir=str(tmp_path / "run"), eval_split=None, eval_take=None, max_steps=2,
                                         per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=2,
                                         eval_generate_take=0))
    assert result.steps == 2 and not result.skipped and np.isfinite(result.train_loss)
    model, _ = load_model(str(micro_qwen2audio), adapter=str(tmp_path / "run"))
    answers = generate(model, processor, family, examples[:2], settings=GenerationSettings(max_new_tokens=3))
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_a_family_taking_one_clip_stops_before_training_and_check_lists_the_rows(micro_af3, tmp_path):
    manifest = _two_clip_manifest(tmp_path)
    with pytest.raises(ConfigError, match=r"4 conversation\(s\) hold more clips than af3 takes \(1 a conversation\)"):
        train(TrainConfig.from_flat(model=str(micro_af3), dataset=str(manifest), id_column="id",
                                    output_dir=str(tmp_path / "run"), eval_split=None, eval_take=None, max_steps=1))
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()
    from typer.testing import CliRunner

    from audiotune.cli import app

    listed = json.loads(CliRunner().invoke(app, ["models", "--json"]).output)  # where the error points
    assert {f["name"]: f["max_audios"] for f in listed}["af3"] == 1
    report = check_dataset(DataConfig(dataset=str(manifest), id_column="id"), "train", offline_entry("af3"))
    assert report.fatal == f"{manifest} [train]: no row is usable; see the issues."
    assert [(i.id, "this model takes at most 1" in i.problem) for i in report.issues] == [
        (f"pair{i}", True) for i in range(4)]


def test_tag_count_mismatch_names_the_row_and_the_rest_train(micro_af3, tmp_path):
    sf.write(tmp_path / "a.wav", _tone(1.0, 400.0), RATE)
    good = {"messages": [{"role": "user", "content": "<audio>What?"}, {"role": "assistant", "content": "A tone."}],
            "audios": ["a.wav"]}
    rows = [dict(good, id=f"g{i}") for i in range(3)]
    rows.append({"id": "two-tags", "messages": [{"role": "user", "content": "<audio><audio>What?"},
                                                {"role": "assistant", "content": "A tone."}], "audios": ["a.wav"]})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    issues = check_dataset(DataConfig(dataset=str(tmp_path / "m.jsonl"), id_column="id"), "train",
                           offline_entry("af3")).issues
    assert [(i.id, i.severity) for i in issues] == [("two-tags", "fails")]
    assert "2 audio tag(s) but 1 file(s) in 'audios'" in issues[0].problem
    result = train(TrainConfig.from_flat(model=str(micro_af3), dataset=str(tmp_path / "m.jsonl"), id_column="id",
                                         output_dir=str(tmp_path / "run"), eval_split=None, eval_take=None, max_steps=2,
                                         per_device_train_batch_size=3, gradient_accumulation_steps=1, save_steps=2,
                                         eval_generate_take=0))
    assert [s["id"] for s in result.skipped] == ["two-tags"] and result.steps == 2


def test_labels_cover_every_assistant_turn_of_a_content_list_conversation(shapes, micro_processor, family):
    dataset, _, _ = _data(shapes, "chat-content-lists")
    examples, _, _ = _examples(dataset)
    batch = ConversationCollator(micro_processor, family, training=True)([examples[1]])
    labels = batch["labels"][0]
    spans, current = [], []
    for token, label in zip(batch["input_ids"][0].tolist(), labels.tolist()):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    decoded = [micro_processor.tokenizer.decode(s) for s in spans]
    assert decoded == [f"A dog barking.{family.end_of_turn}", f"Twice.{family.end_of_turn}"]
    assert torch.equal(labels[labels != IGNORE_INDEX], batch["input_ids"][0][labels != IGNORE_INDEX])


def test_segment_decoding_refuses_bad_offsets(tmp_path):
    from audiotune.audio import decode_any

    sf.write(tmp_path / "x.flac", _tone(3.0, 300.0), RATE)
    wave, rate = decode_any({"path": str(tmp_path / "x.flac"), "offset": 1.0, "duration": 0.5}, "r")
    assert rate == RATE and wave.shape == (RATE // 2, 1)
    with pytest.raises(AudioDecodeError, match="offset must be >= 0"):
        decode_any({"path": str(tmp_path / "x.flac"), "offset": -1.0, "duration": 0.5}, "r")
    data = (tmp_path / "x.flac").read_bytes()  # bytes take the decode-then-cut path
    wave_b, _ = decode_any({"bytes": data, "offset": 1.0, "duration": 0.5}, "r")
    np.testing.assert_array_equal(wave_b, wave)
    with pytest.raises(AudioDecodeError, match="past the end"):
        decode_any({"bytes": data, "offset": 3.5}, "r")


def _several_clip_families() -> list:
    from audiotune.models.families import FAMILIES

    return [pytest.param(name, marks=pytest.mark.slow, id=name) for name, family in FAMILIES.items()
            if family.max_audios > 1 and not family.known_issue]


@pytest.mark.parametrize("name", _several_clip_families())
def test_families_taking_several_clips_place_each_one(name):
    """Each family whose registry entry says it takes several clips a conversation: a two-clip prompt gets the audio
    tokens of each clip (as its processor counts them for that clip alone), trains on the answer only, and
    generates."""
    from audiotune.generate import GenerationSettings, generate
    from audiotune.conversation import Example, prompt_messages
    from audiotune.models.loading import load_model, load_processor, resolve_family, to_model_inputs
    from audiotune.models.tiny import cached_tiny
    from tests.conftest import tone

    checkpoint = cached_tiny(name)
    family = resolve_family(str(checkpoint))
    processor = load_processor(checkpoint)
    rate = family.sampling_rate
    low, high = tone(1.0, 440, rate), tone(2.5, 880, rate)
    two = Example("two", [{"role": "user", "content": [
        {"type": "audio", "audio": low}, {"type": "text", "text": "and then"}, {"type": "audio", "audio": high},
        {"type": "text", "text": "Which is higher?"}]}], ["The second one."])
    audio_id = processor.tokenizer.convert_tokens_to_ids(family.audio_token)
    prompts = ConversationCollator(processor, family, training=False)

    def count(example) -> int:
        return int((prompts([example])["input_ids"] == audio_id).sum())

    alone = [count(Example(str(i), prompt_messages(clip, "Which is higher?"), ["x"])) for i, clip in
             enumerate((low, high))]
    assert count(two) == sum(alone) and min(alone) > 0  # (Voxtral and Gemma 3n give every clip the same count)
    batch = ConversationCollator(processor, family, training=True)([two])
    kept = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert processor.tokenizer.decode(kept[:-1]).strip() == "The second one." and audio_id not in kept
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        loss = model(**to_model_inputs(batch, model)).loss
    assert torch.isfinite(loss)
    (answer,) = generate(model, processor, family, [two], settings=GenerationSettings(max_new_tokens=3))
    assert isinstance(answer, str)


def test_length_estimates_read_each_shapes_clips(shapes):
    """Length grouping estimates a NeMo row from its segment (not the whole file) and a conversation from its
    clips, without decoding."""
    from audiotune.train import estimated_lengths

    dataset, _, extra = _data(shapes, "nemo")
    rows, build = prepare_split(DataConfig(dataset=dataset, **extra), "train", offline_entry("af3"))
    lengths = estimated_lengths(ExampleDataset(rows, build, BadSampleLog(None)), offline_entry("af3"))
    texts = ["good morning everyone", "let us begin", "first the budget", "excuse me"]
    audio = [offline_entry("af3").audio_tokens(s) for s in (2.0, 2.0, 2.0, 1.2)]
    assert lengths == [a + len(t) // 4 + 32 for a, t in zip(audio, texts)]
    dataset, _, _ = _data(shapes, "audio-flamingo")
    rows, build = prepare_split(DataConfig(dataset=dataset), "train", offline_entry("af3"))
    lengths = estimated_lengths(ExampleDataset(rows, build, BadSampleLog(None)), offline_entry("af3"))
    conversation = "<sound>\nWhat is making this sound? A dog barking."  # both turns' text, as written
    assert lengths[0] == offline_entry("af3").audio_tokens(1.4) + len(conversation) // 4 + 32
