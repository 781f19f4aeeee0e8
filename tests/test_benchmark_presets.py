"""Benchmark presets (#21): each runs offline on a copy written in its published layout, and scores as the field does.

Every fixture is parquet with the published features (MMAU's JSON-string choices and text answers, MMAR's lettered
choices, AIR-Bench's choice columns, LibriSpeech's ``gt``, AudioBench's ``context``/``instruction``/``answer``,
VocalSound's ``age_group``), in the folder layout the Hub stores, read through the real ``load_dataset`` path;
Clotho is the release's captions CSV and audio folder. Expected scores on hand-made predictions are worked out by
hand in each test.
"""

from __future__ import annotations

import io
import json

import pytest
import soundfile as sf
from datasets import Audio, Dataset, Features, Value

from audiotune.config import EvalConfig
from audiotune.errors import ConfigError, DatasetSchemaError
from audiotune.evaluate import run_evaluation, score_predictions
from audiotune.presets import BENCHMARKS
from tests.conftest import tone


def _wav(seconds: float, freq: float) -> dict:
    buffer = io.BytesIO()
    sf.write(buffer, tone(seconds, freq), 16000, format="WAV")
    return {"bytes": buffer.getvalue(), "path": f"{freq:g}.wav"}


def _parquet(folder, relative: str, rows: dict, features: dict) -> None:
    n = len(next(iter(rows.values())))
    rows = {"audio": [_wav(1.0 + i / 4, 300 + 100 * i) for i in range(n)], **rows}
    features = Features({"audio": Audio(sampling_rate=16000), **features})
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(path))


S = Value("string")


def _mmau(folder, split="test_mini"):
    _parquet(folder, f"data/{split}-00000-of-00001.parquet", {
        "id": ["m0", "m1", "m2", "m3"],
        "question": ["What plays?", "Who speaks?", "What genre?", "What animal?"],
        "choices": [json.dumps(c) for c in (["guitar", "piano", "drum", "flute"], ["a man", "a woman"],
                                            ["jazz", "rock", "pop", "folk"], ["dog", "cat", "cow", "owl"])],
        "answer": ["piano", "a woman", "jazz", "owl"], "dataset": ["d"] * 4,
        "task": ["music", "speech", "music", "sound"], "split": [split] * 4, "category": ["c"] * 4,
        "sub-category": ["s"] * 4, "difficulty": ["easy", "hard", "easy", "medium"]},
        {k: S for k in ("id", "question", "choices", "answer", "dataset", "task", "split", "category",
                        "sub-category", "difficulty")})


def _mmar(folder):
    _parquet(folder, "data/test-00000-of-00001.parquet", {
        "id": ["r0", "r1"], "question": ["Which bird?", "How many beats?"],
        "choices": [["A. Owl", "B. Crow", "C. Duck"], ["A. two", "B. three", "C. four", "D. five"]],
        "answer": ["A", "C"], "category": ["Signal", "Perception"], "subcategory": ["x", "y"],
        "modality": ["sound", "music"]},
        {"id": S, "question": S, "choices": [S], "answer": S, "category": S, "subcategory": S, "modality": S})


def _clotho_aqa(folder):
    _parquet(folder, "clotho_aqa/clotho_aqa_test_filtered-00000-of-00006.parquet",
             {"question": ["Is it raining?", "What animal barks?"], "answer": ["yes", "dog"]},
             {"question": S, "answer": S})


def _air_bench(folder, split):
    _parquet(folder, f"Foundation/{split}-00000-of-00001.parquet", {
        "path": ["a.wav", "b.wav"], "question": ["What is the sound?", "Is it loud?"],
        "choice_a": ["rain", "yes"], "choice_b": ["wind", "no"], "choice_c": ["fire", None],
        "choice_d": ["sea", None], "answer_gt": ["wind", "no"], "task_name": ["Sound_AQA", "Acoustic_Scene"],
        "dataset_name": ["clotho", "x"], "uniq_id": [11, 12]},
        {"path": S, "question": S, "choice_a": S, "choice_b": S, "choice_c": S, "choice_d": S, "answer_gt": S,
         "task_name": S, "dataset_name": S, "uniq_id": Value("int64")})


def _librispeech(folder, config):
    _parquet(folder, f"{config}/{config}-00000-of-00001.parquet", {
        "gt": ["HELLO WORLD", "MISTER QUILTER IS THE APOSTLE"], "prompt": ["p", "p"], "source": ["ls", "ls"],
        "task": ["asr_en", "asr_en"]}, {"gt": S, "prompt": S, "source": S, "task": S})


def _audiocaps(folder):
    _parquet(folder, "data/test-00000-of-00001.parquet", {
        "instruction": ["Caption it.", "Caption it."], "answer": ["a dog barks", "rain falls on a roof"]},
        {"instruction": S, "answer": S})
    table = Dataset.from_parquet(str(folder / "data/test-00000-of-00001.parquet"))
    table.rename_column("audio", "context").to_parquet(str(folder / "data/test-00000-of-00001.parquet"))


def _clotho_release(folder):
    (folder / "evaluation").mkdir(parents=True)
    lines = ["file_name,caption_1,caption_2,caption_3,caption_4,caption_5"]
    for i in range(2):
        sf.write(folder / "evaluation" / f"clip{i}.wav", tone(1.5, 500 + 200 * i), 16000)
        lines.append(f"clip{i}.wav," + ",".join(f"caption {i} take {k}" for k in range(5)))
    (folder / "clotho_captions_evaluation.csv").write_text("\n".join(lines) + "\n")


def _vocalsound(folder):
    _parquet(folder, "data/test-00000-of-00001.parquet", {
        "spk_id": ["f0001", "m0002", "f0003"], "answer": ["Cough", "Laughter", "Sneeze"], "age_group": [1, 2, 1]},
        {"spk_id": S, "answer": S, "age_group": Value("int64")})


FIXTURES = {
    "mmau-test-mini": _mmau, "mmau-test": lambda f: _mmau(f, "test"), "mmar": _mmar, "clotho-aqa": _clotho_aqa,
    "air-bench-foundation-sound": lambda f: _air_bench(f, "sound"),
    "air-bench-foundation-music": lambda f: _air_bench(f, "music"),
    "air-bench-foundation-speech": lambda f: _air_bench(f, "speech"),
    "librispeech-test-clean": lambda f: _librispeech(f, "librispeech_test_clean"),
    "librispeech-test-other": lambda f: _librispeech(f, "librispeech_test_other"),
    "audiocaps-test": _audiocaps, "clotho-v2-eval": _clotho_release, "vocalsound-test": _vocalsound,
}
EXPECTED_METRIC = {"mcq": "accuracy", "qa": "accuracy", "asr": "WER", "caption": "CIDEr-D", "classify": "accuracy"}


def test_every_preset_has_a_fixture_in_its_published_layout():
    assert set(FIXTURES) == set(BENCHMARKS)


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark-copies")
    for name, write in FIXTURES.items():
        write(root / name)
    return root


@pytest.mark.parametrize("name", list(FIXTURES))
def test_each_preset_runs_offline_on_a_copy_in_its_layout(name, copies, micro_af3, tmp_path):
    bench = BENCHMARKS[name]
    cfg = EvalConfig.from_flat(model=str(micro_af3), benchmark=name, dataset=str(copies / name), out=str(tmp_path),
                               max_new_tokens=3, with_meteor=False)
    report = run_evaluation(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert metrics["task"] == bench.task and metrics["benchmark"] == name and not report.skipped
    assert metrics["rows"] == len(rows) >= 2 and EXPECTED_METRIC[bench.task] in metrics["models"]["base"]
    first = rows[0]["prompt"]
    prompt_head = bench.prompt.split("{")[0]
    assert first.startswith(prompt_head) if prompt_head else first  # the preset's prompt was sent
    if bench.breakdown:
        assert set(metrics["breakdown"]["base"]) == set(bench.breakdown)
        assert sum(g["n"] for g in metrics["breakdown"]["base"][bench.breakdown[0]].values()) == len(rows)


def test_mmau_prompt_and_scores_as_lmms_eval_and_strictly(copies, tmp_path):
    """Four MMAU rows, answered by hand: B (piano: right), "(A) a man" (wrong), "jazz" by its text (right),
    nothing readable (wrong strictly; lmms-eval would guess, so harness_correct is null)."""
    predictions = tmp_path / "answers.jsonl"
    predictions.write_text("".join(json.dumps({"id": i, "prediction": p}) + "\n" for i, p in (
        ("m0", "B"), ("m1", "(A) a man"), ("m2", "It is jazz."), ("m3", "no idea"))))
    score_predictions(EvalConfig.from_flat(benchmark="mmau-test-mini", dataset=str(copies / "mmau-test-mini"),
                                           out=str(tmp_path / "scored")), predictions)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "scored" / "predictions.jsonl").read_text().splitlines())}
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert rows["m0"]["prompt"] == ("What plays?\nA. guitar\nB. piano\nC. drum\nD. flute\n"
                                    "Answer with the option's letter from the given choices directly.")
    assert [rows[i]["parsed"] for i in ("m0", "m1", "m2", "m3")] == ["B", "A", "A", None]
    assert [rows[i]["correct"] for i in ("m0", "m1", "m2", "m3")] == [True, False, True, False]
    assert [rows[i]["harness_correct"] for i in ("m0", "m1", "m3")] == [True, False, None]
    assert metrics["models"]["model"]["accuracy"] == 0.5 and metrics["models"]["model"]["answered"] == 0.75
    assert metrics["breakdown"]["model"]["task"] == {"music": {"n": 2.0, "accuracy": 1.0},
                                                     "speech": {"n": 1.0, "accuracy": 0.0},
                                                     "sound": {"n": 1.0, "accuracy": 0.0}}
    assert metrics["breakdown"]["model"]["difficulty"]["easy"] == {"n": 2.0, "accuracy": 1.0}


def test_vocalsound_strict_and_as_lmms_eval_reads_it(copies, tmp_path):
    """"It is a cough." names Cough: lmms-eval's keyword reading counts it, the strict label match does not;
    "laughter" is right both ways; "a sneeze or a cough" is wrong for lmms-eval (its first keyword, laughter,
    sniff, throat, cough…, is cough) and strictly."""
    predictions = tmp_path / "answers.jsonl"
    predictions.write_text("".join(json.dumps({"id": str(i), "prediction": p}) + "\n" for i, p in enumerate(
        ("It is a cough.", "laughter", "a sneeze or a cough"))))
    score_predictions(EvalConfig.from_flat(benchmark="vocalsound-test", dataset=str(copies / "vocalsound-test"),
                                           out=str(tmp_path / "scored")), predictions)
    rows = [json.loads(line) for line in (tmp_path / "scored" / "predictions.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [False, True, False]
    assert [r["harness_correct"] for r in rows] == [True, True, False]
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())["models"]["model"]
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["accuracy_lmms_eval"] == pytest.approx(2 / 3)


def test_librispeech_wer_after_whispers_normaliser(copies, tmp_path):
    """"hello, world!" is HELLO WORLD once normalised (0 errors of 2 words); "mr quilter is the apostle" against
    MISTER QUILTER IS THE APOSTLE: Whisper's normaliser writes both titles as "mister" (0 of 5). An inserted word
    in the second makes 1 error in 7 words."""
    for answers, wer in ((("hello, world!", "Mr. Quilter is the apostle"), 0.0),
                         (("hello, world!", "Mr. Quilter is the apostle too"), 1 / 7)):
        predictions = tmp_path / "answers.jsonl"
        predictions.write_text("".join(json.dumps({"id": str(i), "prediction": p}) + "\n"
                                       for i, p in enumerate(answers)))
        out = tmp_path / f"scored-{wer:.3f}"
        score_predictions(EvalConfig.from_flat(benchmark="librispeech-test-clean", dataset=str(copies /
                                               "librispeech-test-clean"), out=str(out)), predictions)
        assert json.loads((out / "metrics.json").read_text())["models"]["model"]["WER"] == pytest.approx(wer)


def test_score_refuses_predictions_that_do_not_match_the_split(copies, tmp_path):
    predictions = tmp_path / "answers.jsonl"
    predictions.write_text(json.dumps({"id": "m0", "prediction": "B"}) + "\n")
    cfg = EvalConfig.from_flat(benchmark="mmau-test-mini", dataset=str(copies / "mmau-test-mini"),
                               out=str(tmp_path / "x"))
    with pytest.raises(DatasetSchemaError, match="no prediction for 3 row"):
        score_predictions(cfg, predictions)
    predictions.write_text(json.dumps({"id": "m9", "prediction": "B"}) + "\n")
    with pytest.raises(DatasetSchemaError, match=r"ids that are not in .*\(first: 'm9'\)"):
        score_predictions(cfg, predictions)
    with pytest.raises(ConfigError, match="--benchmark 'mmau': no such preset"):
        score_predictions(EvalConfig.from_flat(benchmark="mmau", out=str(tmp_path / "y")), predictions)
