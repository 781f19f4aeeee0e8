"""Batched generation for lists of (audio, prompt) examples, for any family, adapter or merged.

The guide generates one clip at a time. Here examples are sorted by audio length so each batch
pads little, rendered with the generation header, left-padded (decoder-only models continue from
the right edge), run under ``torch.inference_mode`` with the KV cache, and stopped at the
family's end-of-turn token. Greedy results are identical to one-at-a-time generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .data.collator import ConversationCollator
from .data.tasks import Example, prompt_messages
from .models.families import Family
from .models.loading import to_model_inputs


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of that size twice in an answer (transformers' generate kwarg)

    def as_kwargs(self) -> dict[str, Any]:
        kwargs = asdict(self)
        if not self.do_sample:
            kwargs.pop("temperature")
            kwargs.pop("top_p")
        if not self.no_repeat_ngram_size:
            kwargs.pop("no_repeat_ngram_size")  # off: the recorded settings stay as they were
        return kwargs


def examples_from_audio(audios: Sequence[np.ndarray], prompt: str, system_prompt: str | None = None,
                        ids: Sequence[str] | None = None) -> list[Example]:
    """Wrap decoded audios in prompt-only Examples (no references)."""
    ids = ids or [f"item {i}" for i in range(len(audios))]
    return [Example(id=i, messages=prompt_messages(a, prompt, system_prompt), references=[""])
            for i, a in zip(ids, audios)]


def stop_token_ids(processor, family: Family) -> list[int]:
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(family.end_of_turn)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _audio_length(example: Example) -> int:
    return sum(len(a) for a in example.audios())


@dataclass
class Generation:
    """One answer with what an API reports about it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens reached)
    tokens: list[int] = field(default_factory=list)  # the answer's token ids, end of turn excluded


@torch.inference_mode()
def generate_batch(model, processor, family: Family, examples: Sequence[Example],
                   settings: GenerationSettings | None = None, streamer=None) -> list[Generation]:
    """One ``model.generate`` call over ``examples`` (no sorting or splitting), with token accounting."""
    settings = settings or GenerationSettings()
    batch = ConversationCollator(processor, family, training=False)(list(examples))
    batch = to_model_inputs(batch, model)
    stop_ids = stop_token_ids(processor, family)
    pad_id = processor.tokenizer.pad_token_id
    output = model.generate(**batch, **settings.as_kwargs(), eos_token_id=stop_ids, pad_token_id=pad_id,
                            use_cache=True, streamer=streamer)
    new_tokens = output[:, batch["input_ids"].shape[1]:].tolist()
    prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
    results = []
    for tokens, prompt_length in zip(new_tokens, prompt_lengths):
        stop_at = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
        kept = tokens if stop_at is None else tokens[:stop_at]
        text = processor.tokenizer.decode(kept, skip_special_tokens=True).strip()
        results.append(Generation(text, int(prompt_length), len(kept) + (stop_at is not None),
                                  "stop" if stop_at is not None else "length", kept))
    return results


def generate(model, processor, family: Family, examples: Sequence[Example], batch_size: int = 16,
             settings: GenerationSettings | None = None,
             on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Answers for ``examples`` in their order; ``on_batch(n)`` is called after each batch of ``n``."""
    order = sorted(range(len(examples)), key=lambda i: _audio_length(examples[i]), reverse=True)
    answers: list[str] = [""] * len(examples)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, result in zip(chunk, generate_batch(model, processor, family, [examples[i] for i in chunk], settings)):
            answers[i] = result.text
        if on_batch:
            on_batch(len(chunk))
    return answers
