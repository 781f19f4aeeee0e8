"""Verifiable rewards for GRPO: built in per task, or the user's own ``module:function``.

Every reward has TRL's signature: ``reward(prompts, completions, **fields) -> list[float]``, one float per
completion. ``fields`` are lists aligned with the completions: ``references`` (each row's reference answers),
``choices`` (mcq), ``task``, and every column of the dataset row except the audio. Built-ins score what they
cannot read (an empty, truncated or malformed completion) as 0 and never raise; a user function that raises or
returns the wrong thing stops the run with a :class:`~audiotune.errors.RewardError` naming it.

Built-ins: ``accuracy`` (classify/qa: the normalised answer equals a reference; mcq: the picked choice is the
right one), ``wer`` (``1 - WER``, floored at 0, for asr), ``cider`` and ``meteor`` (per completion, caption; they
need Java like the caption metrics), ``format`` (the answer sits in ``<answer>…</answer>``, after optional
``<think>…</think>`` reasoning). Answers inside ``<answer>`` tags are read from the tags.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..answers import answer_span, transcript_normalizer
from ..errors import ConfigError, RewardError
from ..tasks import TASKS, Task, task_class

logger = logging.getLogger(__name__)

RewardFunction = Callable[..., list[float]]
_FORMAT = re.compile(r"^\s*(?:<think>.*?</think>\s*)?<answer>(?P<answer>.+?)</answer>\s*$", re.DOTALL)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def accuracy_reward(prompts: Sequence[str], completions: Sequence[str], references: Sequence[list[str]],
                    task: Sequence[str] | None = None, choices: Sequence[list[str] | None] | None = None,
                    **_: Any) -> list[float]:
    """1 for a right answer, else 0, as the row's task judges it (:meth:`Task.is_right`: mcq, the choice picked;
    otherwise the normalised answer); without a known task, the normalised answer."""
    out = []
    for i, completion in enumerate(completions):
        judge = TASKS.get(task[i], Task) if task is not None else Task
        out.append(float(judge.is_right(_text(completion), references[i] or [], choices[i] if choices else None)))
    return out


def format_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1 when the completion is ``[<think>…</think>] <answer>…</answer>`` with a non-empty answer, else 0."""
    return [float(bool((m := _FORMAT.match(_text(c))) and m.group("answer").strip())) for c in completions]


def wer_reward(prompts: Sequence[str], completions: Sequence[str], references: Sequence[list[str]],
               **_: Any) -> list[float]:
    """``max(0, 1 - WER)`` against the first reference after the default ASR normalisation of the metrics
    (Whisper's English normaliser), so the reward rises exactly when ``audiotune eval``'s WER falls."""
    import jiwer

    normalize = transcript_normalizer()
    out = []
    for completion, refs in zip(completions, references):
        ref = normalize(refs[0]) if refs else ""
        hyp = normalize(answer_span(_text(completion)))
        out.append(max(0.0, 1.0 - float(jiwer.wer(ref, hyp))) if ref and hyp else 0.0)
    return out


def _caption_scores(completions: Sequence[str], references: Sequence[list[str]], metric: str) -> list[float]:
    from ..metrics import caption_metrics, ptb_tokenize

    answers = {str(i): answer_span(_text(c)) for i, c in enumerate(completions)}
    scored = {k: v for k, v in answers.items() if v.strip() and references[int(k)]}
    out = [0.0] * len(completions)
    if not scored:
        return out
    refs = {k: list(references[int(k)]) for k in scored}
    if metric == "CIDEr-D":
        _, per_clip = caption_metrics(scored, refs, with_meteor=False, spice_models=None, notices=[])
        values = {k: per_clip[k]["CIDEr-D"] for k in scored}
    else:
        from pycocoevalcap.meteor.meteor import Meteor

        res = ptb_tokenize({k: [v] for k, v in scored.items()})
        gts = ptb_tokenize(refs)
        keys = sorted(scored)
        _, each = Meteor().compute_score({k: gts[k] for k in keys},
                                         {k: [res[k][0] or "<empty>"] for k in keys})
        values = dict(zip(keys, (float(v) for v in each)))
    for k, v in values.items():
        out[int(k)] = float(v)
    return out


def cider_reward(prompts: Sequence[str], completions: Sequence[str], references: Sequence[list[str]],
                 **_: Any) -> list[float]:
    """Per-completion CIDEr-D against the row's references. Document frequencies come from this batch's references,
    so a batch needs at least two prompts (with one, every n-gram is in every document and CIDEr-D is 0)."""
    return _caption_scores(completions, references, "CIDEr-D")


def meteor_reward(prompts: Sequence[str], completions: Sequence[str], references: Sequence[list[str]],
                  **_: Any) -> list[float]:
    """Per-completion METEOR against the row's references."""
    return _caption_scores(completions, references, "METEOR")


BUILT_IN: dict[str, RewardFunction] = {"accuracy": accuracy_reward, "format": format_reward, "wer": wer_reward,
                                       "cider": cider_reward, "meteor": meteor_reward}


def load_user_reward(spec: str) -> RewardFunction:
    """``module:function`` (an importable module, or a ``path/to/file.py``) → the function; a clear error if not."""
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise ConfigError(f"reward {spec!r}: name a built-in ({', '.join(BUILT_IN)}) or a Python function as "
                          "module:function (e.g. my_rewards:length_bonus, or path/to/rewards.py:score).")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.exists():
                raise ConfigError(f"reward {spec!r}: no file {path}.")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules.setdefault(path.stem, module)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - any import failure is the user's to fix; say which and why
        raise ConfigError(f"reward {spec!r}: cannot import {module_name!r}: {type(error).__name__}: {error}. "
                          "Put the module on PYTHONPATH (or pass a .py file path).") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"reward {spec!r}: {module_name} has no function {function_name!r}.")
    return function


@dataclass
class Reward:
    name: str
    function: RewardFunction
    weight: float = 1.0
    user: bool = False

    def __call__(self, prompts: list[str], completions: list[str], **fields: Any) -> list[float]:
        try:
            values = self.function(prompts=prompts, completions=completions, **fields)
        except Exception as error:  # noqa: BLE001 - re-raised with the reward's name and what to do
            if not self.user:
                raise
            raise RewardError(f"reward function {self.name!r} raised {type(error).__name__}: {error}. "
                              "Fix the function (it receives prompts, completions and the row fields as lists "
                              "and must return one float per completion).") from error
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError) as error:
            raise RewardError(f"reward function {self.name!r} returned {values!r:.200}; it must return a list "
                              f"of floats, one per completion.") from error
        if len(values) != len(completions):
            raise RewardError(f"reward function {self.name!r} returned {len(values)} values for "
                              f"{len(completions)} completions; return one float per completion.")
        return [v if math.isfinite(v) else 0.0 for v in values]


def build_rewards(names: Sequence[str] | None, weights: Sequence[float] | None, task: str) -> list[Reward]:
    """The run's rewards: ``names`` (built-ins or ``module:function``), else the task's default."""
    names = list(names or task_class(task).default_rewards)
    if not names:
        raise ConfigError(f"--task {task} has no built-in reward: pass --rewards module:function.")
    if weights is not None and len(weights) != len(names):
        raise ConfigError(f"--reward-weights has {len(weights)} value(s) for {len(names)} reward(s) {names}; "
                          "give one weight per reward.")
    rewards = []
    for i, name in enumerate(names):
        weight = float(weights[i]) if weights is not None else 1.0
        if name in BUILT_IN:
            rewards.append(Reward(name, BUILT_IN[name], weight))
        else:
            rewards.append(Reward(name, load_user_reward(name), weight, user=True))
    return rewards
