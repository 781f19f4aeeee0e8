"""GRPO rewards: built-ins per task, empty or malformed completions, user functions (and their failures)."""

from __future__ import annotations

import math

import pytest

from audiotune.errors import ConfigError, RewardError
from audiotune.rl.rewards import accuracy_reward, build_rewards, format_reward, wer_reward

MALFORMED = ["", "   ", None, "<answer></answer>", "<answer>", "</answer>B", "\x00\ufffd", "A" * 5000, 7]


def test_accuracy_reward_per_task():
    refs = [["B", "three"]] * 6
    completions = ["B", "(B) three", "<think>3 beeps</think><answer>B</answer>", "three", "C", "two"]
    rewards = accuracy_reward([""] * 6, completions, references=refs, task=["mcq"] * 6,
                              choices=[["two", "three", "four", "five"]] * 6)
    assert rewards == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    classify = accuracy_reward([""] * 4, ["Dog.", "a dog", "<answer>the DOG</answer>", "cat"],
                               references=[["dog"]] * 4, task=["classify"] * 4)
    assert classify == [1.0, 1.0, 1.0, 0.0]


def test_format_and_wer_rewards():
    assert format_reward([], ["<answer>B</answer>", "<think>hm</think>\n<answer> two </answer>", "B",
                              "<answer> </answer>", "<answer>B</answer> trailing"]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    wer = wer_reward([""] * 3, ["the cat sat", "The cat, sat!", "dog sat on mat twice over"],
                     references=[["the cat sat"]] * 3)
    assert wer[0] == 1.0 and wer[1] == 1.0 and wer[2] == 0.0  # WER above 1 is floored at 0


@pytest.mark.parametrize("task,name", [("mcq", "accuracy"), ("classify", "accuracy"), ("qa", "accuracy"),
                                       ("asr", "wer"), ("mcq", "format")])
def test_malformed_completions_score_zero(task, name):
    reward = build_rewards([name], None, task)[0]
    n = len(MALFORMED)
    values = reward([""] * n, MALFORMED, references=[["B", "three"]] * n, task=[task] * n,
                    choices=[["two", "three"]] * n)
    if name == "wer":  # Whisper's normaliser drops <…> spans (annotations such as <unk>): "</answer>B" reads "b"
        assert values[MALFORMED.index("</answer>B")] == 1.0
        values[MALFORMED.index("</answer>B")] = 0.0
    assert values == [0.0] * n


def test_caption_rewards_handle_empty_completions():
    reward = build_rewards(["cider"], None, "caption")[0]
    # document frequencies come from the batch's references: two prompts, so an n-gram of one is informative
    values = reward(["Describe."] * 4, ["a dog barks loudly", "", None, "a cat meows"],
                    references=[["a dog barks loudly", "a dog is barking"]] * 2 + [["a cat meows"]] * 2)
    assert values[0] > 0 and values[3] > 0 and values[1:3] == [0.0, 0.0]


def test_user_reward_gets_row_fields_and_weights(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def by_count(prompts, completions, count, references, **kw):\n"
        "    return [float(str(c).count('beep') == n) for c, n in zip(completions, count)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = build_rewards(["my_rewards:by_count", "accuracy"], [0.5, 2.0], "classify")
    assert [r.weight for r in rewards] == [0.5, 2.0] and rewards[0].user
    assert rewards[0](["q", "q"], ["beep beep", "beep"], count=[2, 2], references=[["two"]] * 2) == [1.0, 0.0]
    by_path = build_rewards([f"{tmp_path / 'my_rewards.py'}:by_count"], None, "classify")[0]
    assert by_path(["q"], ["beep"], count=[1], references=[["one"]]) == [1.0]


def test_user_reward_failures_name_the_function(tmp_path, monkeypatch):
    (tmp_path / "broken_rewards.py").write_text(
        "def explode(prompts, completions, **kw):\n    raise KeyError('label')\n"
        "def short(prompts, completions, **kw):\n    return [1.0]\n"
        "def words(prompts, completions, **kw):\n    return ['good' for _ in completions]\n"
        "def nan(prompts, completions, **kw):\n    return [float('nan') for _ in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    explode = build_rewards(["broken_rewards:explode"], None, "mcq")[0]
    with pytest.raises(RewardError, match=r"'broken_rewards:explode' raised KeyError"):
        explode(["q"], ["B"], references=[["B"]])
    with pytest.raises(RewardError, match="returned 1 values for 2 completions"):
        build_rewards(["broken_rewards:short"], None, "mcq")[0](["q"] * 2, ["B", "C"], references=[["B"]] * 2)
    with pytest.raises(RewardError, match="broken_rewards:words.*list of floats"):
        build_rewards(["broken_rewards:words"], None, "mcq")[0](["q"], ["B"], references=[["B"]])
    assert build_rewards(["broken_rewards:nan"], None, "mcq")[0](["q"], ["B"], references=[["B"]]) == [0.0]
    with pytest.raises(ConfigError, match="no function 'missing'"):
        build_rewards(["broken_rewards:missing"], None, "mcq")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        build_rewards(["no_such_module:f"], None, "mcq")
    with pytest.raises(ConfigError, match="built-in"):
        build_rewards(["typo"], None, "mcq")
    with pytest.raises(ConfigError, match="one weight per reward"):
        build_rewards(["accuracy", "format"], [1.0], "mcq")
    assert math.isclose(build_rewards(None, None, "asr")[0].weight, 1.0)
