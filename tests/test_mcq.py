"""The multiple-choice task: answer extraction, MMAU-style rows, accuracy; the preference task's columns."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from audiotune.config import DataConfig
from audiotune.data.prepare import prepare_split
from audiotune.answers import extract_choice
from audiotune.tasks import McqTask
from audiotune.errors import DatasetSchemaError
from audiotune.tasks import score
from tests.conftest import tone

CHOICES = ["Dog barking", "Car horn", "Rain", "Hot dog vendor"]


@pytest.mark.parametrize("text,expected", [
    ("B", 1), ("(C)", 2), ("b.", 1), ("D) Hot dog vendor", 3), ("The answer is B.", 1), ("Answer: (A)", 0),
    ("<think>it honks</think><answer>B</answer>", 1), ("<answer>rain</answer>", 2), ("car horn", 1),
    ("I think it is a dog barking.", 0),  # "dog" alone is in two choices; the longer match decides
    ("rain or a car horn", None), ("", None), ("E", None), ("A dog", None), ("<answer></answer>", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, CHOICES) == expected


def test_mmau_style_rows(tmp_path, family):
    sf.write(tmp_path / "a.wav", tone(0.5), 16000)
    rows = [  # MMAU test-mini: audio_id path, question, choices, answer as the choice's text
        {"id": "m1", "audio_id": "a.wav", "question": "What do you hear?", "choices": CHOICES, "answer": "Rain"},
        {"id": "m2", "audio_id": "a.wav", "question": "What do you hear?", "choices": CHOICES, "answer": "(B)"},
        {"id": "m3", "audio_id": "a.wav", "question": "What do you hear?", "choices": CHOICES, "answer": 0},
        {"id": "m4", "audio_id": "a.wav", "question": "What do you hear?", "choices": CHOICES, "answer": "Snow"},
    ]
    manifest = tmp_path / "mmau.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data, build = prepare_split(DataConfig(dataset=str(manifest), task="mcq"), "train", family)
    assert isinstance(build.task, McqTask) and build.audio_column == "audio_id"
    examples = [build(data[i], i) for i in range(3)]
    assert [e.references for e in examples] == [["C", "Rain"], ["B", "Car horn"], ["A", "Dog barking"]]
    prompt = examples[0].messages[-1]["content"][-1]["text"]
    assert "(A) Dog barking" in prompt and "(D) Hot dog vendor" in prompt and prompt.startswith("What do you hear?")
    assert examples[0].meta["choices"] == CHOICES and examples[0].audios()[0].shape == (8000,)
    with pytest.raises(DatasetSchemaError, match="'Snow'.*none of the choices"):
        build(data[3], 3)


def test_mcq_accuracy():
    refs = {"a": ["C", "Rain"], "b": ["B", "Car horn"], "c": ["A", "Dog barking"], "d": ["D", "Hot dog vendor"]}
    predictions = {"a": "<answer>C</answer>", "b": "car horn", "c": "B", "d": "no idea"}
    corpus, per_clip = score("mcq", predictions, refs, choices={k: CHOICES for k in refs})
    assert (corpus["accuracy"], corpus["answered"]) == (0.5, 0.75)
    assert per_clip["a"]["accuracy"] == 1.0 and per_clip["c"]["accuracy"] == 0.0


def test_the_lmms_eval_mmau_number_beside_the_strict_one():
    """lmms-eval's MMAU scorer (EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks/mmau/utils.py,
    parse_multi_choice_response) reads "(X)" first, then a lone " X ", then "X.", and of several the lone one
    written last; where it reads nothing it guesses. Each expected letter below follows those rules by hand."""
    from audiotune.answers import lmms_eval_letter

    assert lmms_eval_letter("(C)", 4) == "C"
    assert lmms_eval_letter("The answer is B.", 4) == "B"  # the period is stripped, " B " stands alone
    assert lmms_eval_letter("B. Car horn", 4) == "B"  # no "(B)", no lone " B ": "B." decides
    assert lmms_eval_letter("A or D, I think D", 4) == "D"  # two lone letters: the last one
    assert lmms_eval_letter("<answer>C</answer>", 4) is None  # a guess in lmms-eval
    assert lmms_eval_letter("car horn", 4) is None
    refs = {"a": ["C", "Rain"], "b": ["B", "Car horn"], "c": ["A", "Dog barking"], "d": ["D", "Hot dog vendor"]}
    predictions = {"a": "(C)", "b": "The answer is B.", "c": "B. Car horn", "d": "A or D, I think D"}
    corpus, per_clip = score("mcq", predictions, refs, choices={k: CHOICES for k in refs})
    assert corpus["accuracy_lmms_eval"] == 0.75  # a, b, d right; c reads B
    # Strict: extract_choice reads d's leading "A" (wrong), so the two numbers differ on the same answers.
    assert corpus["accuracy"] == 0.5 and per_clip["d"] == {"accuracy": 0.0, "accuracy_lmms_eval": 1.0}
    # Where lmms-eval would guess, the per-clip verdict is absent and the corpus number is seeded: the same twice.
    guessed = {**predictions, "d": "no idea"}
    first = score("mcq", guessed, refs, choices={k: CHOICES for k in refs})
    assert "accuracy_lmms_eval" not in first[1]["d"] and first == score("mcq", guessed, refs,
                                                                         choices={k: CHOICES for k in refs})
    assert first[0]["accuracy_lmms_eval"] in (0.5, 0.75)  # a and b right, c wrong, d a guess


def test_preference_columns(tmp_path, family):
    sf.write(tmp_path / "a.wav", tone(0.5), 16000)
    rows = [{"audio": "a.wav", "prompt": "How many beeps?", "chosen": "three", "rejected": "two"},
            {"audio": "a.wav", "prompt": "How many beeps?", "chosen": "four", "rejected": " "}]
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data, build = prepare_split(DataConfig(dataset=str(manifest),
                                                      task="preference"), "train", family)
    example = build(data[0], 0)
    assert example.target == "three" and example.meta["rejected"] == "two"
    assert example.messages[-1]["content"][-1]["text"] == "How many beeps?"
    with pytest.raises(DatasetSchemaError, match="rejected"):
        build(data[1], 1)
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(json.dumps({"wav": "a.wav", "good": "yes", "bad": "no"}) + "\n")
    spec = DataConfig(dataset=str(renamed), task="preference", text_column="good",
                       rejected_column="bad", prompt="Is it a beep?")
    data, build = prepare_split(spec, "train", family)
    example = build(data[0], 0)
    assert (example.target, example.meta["rejected"]) == ("yes", "no")
    assert example.messages[-1]["content"][-1]["text"] == "Is it a beep?"  # no prompt column: --prompt


def test_lmms_lab_mmau_and_mmar_layouts(tmp_path, family):
    """lmms-lab's MMAU copy keeps ``choices`` as a JSON-encoded string and ``answer`` as the choice's text
    (EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks/mmau/utils.py``: ``json.loads(doc["choices"])``, the answer compared
    with the choice text); MMAR's choices carry their own letters ("A. Owl"). Both read as plain choices, through the
    real parquet path with an embedded Audio feature, as the Hub stores them."""
    import io

    from datasets import Audio, Dataset

    buffer = io.BytesIO()
    sf.write(buffer, tone(0.5), 16000, format="WAV")
    clip = {"bytes": buffer.getvalue(), "path": "a.wav"}
    rows = {"id": ["m1", "m2"], "audio": [clip, clip], "question": ["What do you hear?", "Which animal?"],
            "choices": [json.dumps(CHOICES), json.dumps(["A. Owl", "B. Crow", "C. Dog", "D. Cat"])],
            "answer": ["Rain", "C. Dog"], "task": ["sound", "sound"], "category": ["x", "y"],
            "sub-category": ["x1", "y1"], "difficulty": ["easy", "hard"]}
    folder = tmp_path / "mmau" / "data"
    folder.mkdir(parents=True)
    Dataset.from_dict(rows).cast_column("audio", Audio()).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    data, build = prepare_split(DataConfig(dataset=str(tmp_path / "mmau"),
                                                      task="mcq"), "test", family)
    mmau, mmar = build(data[0], 0), build(data[1], 1)
    assert mmau.meta["choices"] == CHOICES and mmau.references == ["C", "Rain"]
    assert mmar.meta["choices"] == ["Owl", "Crow", "Dog", "Cat"] and mmar.references == ["C", "Dog"]
    prompt = mmar.messages[-1]["content"][-1]["text"]
    assert "(A) Owl\n(B) Crow" in prompt and "A. Owl" not in prompt
    broken = McqTask()
    with pytest.raises(DatasetSchemaError, match="starts like a JSON list but does not parse"):
        broken.choices({"choices": '["Owl", "Crow"'}, "row 7")
    # A choice that merely begins with a capital and a period keeps it when the letters are not A, B, C… in order.
    assert broken.choices({"choices": ["B. Owl", "A. Crow"]}, "r") == ["B. Owl", "A. Crow"]
