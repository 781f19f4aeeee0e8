"""A task is one object: the registry names config's tasks, each task scores its own headline, and a task defined
here (one class, registered) reaches column detection, scoring, headline lookup, eval's rows and rewards without
any other module changing. Expected values are worked out by hand in the comments."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from audiotune import config
from audiotune.conversation import Example, prompt_messages
from audiotune.data.prepare import make_task_for
from audiotune.data.shapes import detect_shape
from audiotune.errors import ConfigError, DatasetSchemaError
from audiotune.tasks import (TASKS, ChatTask, ScoreOptions, Task, headline_metric, make_task, metric_names, register,
                             score, task_class)

# Captions of four words or more: CIDEr-D (n-grams 1..4, times 10) of a caption equal to its only reference is 10
# (cosine 1 at every n, no length penalty); one sharing no word with its reference scores 0. Corpus: (10 + 0) / 2.
CAPTIONS = ({"a": "a dog barks loudly outside", "b": "engine humming nearby"},
            {"a": ["a dog barks loudly outside"], "b": ["rain falls on a tin roof"]}, 5.0)
# Two answers, one right: accuracy 1/2 (classify and qa compare normalised text: "The Dog." reads "dog").
ANSWERS = ({"a": "The Dog.", "b": "cat"}, {"a": ["dog"], "b": ["bird"]}, 0.5)
# mcq: "B" picks choice B (right), "(A)" picks A where C is right: accuracy 1/2.
CHOICES = ["owl", "dog", "rain"]
LETTERS = ({"a": "B", "b": "(A)"}, {"a": ["B", "dog"], "b": ["C", "rain"]}, 0.5)
# asr: "the cat sat" is exact (0 errors of 3 words), "a dog" misses "ran" (1 of 3): corpus WER 1/6.
TRANSCRIPTS = ({"a": "the cat sat", "b": "a dog"}, {"a": ["the cat sat"], "b": ["a dog ran"]}, 1 / 6)
BY_HAND = {"caption": CAPTIONS, "chat": CAPTIONS, "preference": CAPTIONS, "qa": ANSWERS, "classify": ANSWERS,
           "mcq": LETTERS, "asr": TRANSCRIPTS}


def test_registry_names_the_config_literal():
    assert tuple(TASKS) == config.TASKS
    assert set(BY_HAND) == set(TASKS)  # every task is scored below


@pytest.mark.parametrize("name", list(BY_HAND))
def test_each_task_scores_its_headline(name):
    cls = task_class(name)
    assert cls.name == name and cls.headline in cls.metrics
    predictions, references, expected = BY_HAND[name]
    corpus, per_clip = cls.score(predictions, references,
                                 ScoreOptions(with_meteor=False, choices={k: CHOICES for k in predictions}))
    assert corpus[cls.headline] == pytest.approx(expected, abs=1e-6)
    assert set(per_clip) == set(predictions)
    assert headline_metric(name) == cls.headline and metric_names(name, list(corpus))[0] == cls.metrics[0]


def test_unknown_task_is_an_error_listing_the_names():
    with pytest.raises(ConfigError, match="Unknown task 'yesno'; choose one of caption, asr, qa"):
        task_class("yesno")


@dataclass(frozen=True)
class YesNoTask(Task):
    """A task written for this test alone: is anyone speaking? Right when the answer's yes/no is the row's."""

    prompt: str = "Is anyone speaking? Answer yes or no."
    text_column: str = "yes_or_no"

    name = "yesno"
    text_columns = ("yes_or_no", "speech")
    metrics = ("accuracy",)
    headline = "accuracy"
    has_right_answer = True
    default_rewards = ("accuracy",)
    verifiable = True

    @classmethod
    def parse(cls, answer, example):
        return "yes" if answer.strip().lower().startswith("yes") else "no"

    @classmethod
    def score(cls, predictions, references, options=None):
        per_clip = {k: {"accuracy": float(cls.parse(p, None) == references[k][0])} for k, p in predictions.items()}
        return {"accuracy": sum(v["accuracy"] for v in per_clip.values()) / len(per_clip)}, per_clip


@pytest.fixture
def yesno():
    register(YesNoTask)
    yield YesNoTask
    del TASKS["yesno"]


def test_a_task_added_in_one_module_reaches_every_caller(yesno):
    from audiotune.evaluate import score_answers
    from audiotune.generate import GenerationSettings
    from audiotune.rl.rewards import accuracy_reward, build_rewards

    with pytest.raises(ConfigError, match="that name is taken"):
        register(YesNoTask)
    # make_task: the run's settings it has fields for, the rest ignored
    task = make_task("yesno", prompt=None, text_column="speech", labels=("x",), question_column="q")
    assert isinstance(task, YesNoTask) and task.text_column == "speech" and task.prompt == YesNoTask.prompt
    # column detection in data/prepare reads the class: "speech" is the task's second candidate
    spec = SimpleNamespace(task="yesno", dataset="d", text_column=None, references_column=None, labels=None,
                           prompt=None, system_prompt=None)
    columns = ["audio", "speech"]
    found = make_task_for(spec, None, "d", detect_shape(columns, "auto", "d"), columns)
    assert isinstance(found, YesNoTask) and found.text_column == "speech"
    # scoring and the headline: "Yes, someone talks" reads yes (right), "no" where yes is right (wrong): 1/2
    predictions, references = {"a": "Yes, someone talks", "b": "no"}, {"a": ["yes"], "b": ["yes"]}
    assert score("yesno", predictions, references)[0] == {"accuracy": 0.5}
    assert headline_metric("yesno") == "accuracy" and metric_names("yesno", ["BLEU-1", "accuracy"]) == ["accuracy"]
    # eval's rows: the class's parse, and a verdict because the task has a right answer
    examples = [Example(k, prompt_messages(None, task.prompt), references[k]) for k in predictions]
    metrics, rows = score_answers(examples, [predictions[e.id] for e in examples], "yesno", GenerationSettings(),
                                  config.EvalConfig())
    assert metrics == {"accuracy": 0.5}
    verdicts = [(r["parsed"], r["correct"], r["harness_correct"]) for r in rows]
    assert verdicts == [("yes", True, None), ("no", False, None)]
    # GRPO: its default rewards, and the accuracy reward judges by the task (the base's normalised match)
    assert [r.name for r in build_rewards(None, None, "yesno")] == ["accuracy"]
    assert accuracy_reward(["q"] * 2, ["<answer>Yes</answer>", "no"], [["yes"], ["yes"]], task=["yesno"] * 2) == [1, 0]


def test_prepare_reads_extra_columns_from_the_task():
    spec = SimpleNamespace(dataset="d", text_column=None, references_column=None, labels=None, prompt=None,
                           system_prompt=None, question_column=None, choices_column=None, rejected_column=None)
    mcq_columns = ["audio", "query", "options", "correct_answer"]
    mcq = make_task_for(SimpleNamespace(**vars(spec), task="mcq"), None, "d",
                        detect_shape(mcq_columns, "auto", "d"), mcq_columns)
    assert (mcq.question_column, mcq.choices_column, mcq.text_column) == ("query", "options", "correct_answer")
    # preference: the prompt column is optional; absent, the field is None (every row gets --prompt)
    pairs = ["audio", "chosen", "rejected_response"]
    pref = make_task_for(SimpleNamespace(**vars(spec), task="preference"), None, "d",
                         detect_shape(pairs, "auto", "d"), pairs)
    assert (pref.question_column, pref.rejected_column, pref.text_column) == (None, "rejected_response", "chosen")
    no_choices = ["audio", "question", "answer"]
    with pytest.raises(DatasetSchemaError, match="cannot find the choices column"):
        make_task_for(SimpleNamespace(**vars(spec), task="mcq"), None, "d", detect_shape(no_choices, "auto", "d"),
                      no_choices)


def test_grpo_verifiability_comes_from_the_class(monkeypatch, tmp_path):
    from audiotune.train_config import TrainConfig

    def grpo(task: str) -> TrainConfig:
        return TrainConfig.from_flat(model="m", dataset="d", output_dir=str(tmp_path), method="grpo", task=task)

    with pytest.raises(ConfigError, match="verifiable answers, not chat: use caption, asr, qa, classify, mcq.$"):
        grpo("chat").validate()
    grpo("asr").validate()
    monkeypatch.setattr(ChatTask, "verifiable", True)
    grpo("chat").validate()
