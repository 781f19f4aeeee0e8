"""Batched generation for lists of (audio, prompt) examples, for any family, adapter or merged.

The guide generates one clip at a time. Here examples are sorted by audio length so each batch
pads little, rendered with the generation header, left-padded (decoder-only models continue from
the right edge), run under ``torch.inference_mode`` with the KV cache, and stopped at the
family's end-of-turn token. Greedy results are identical to one-at-a-time generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import GenerationSettings  # noqa: F401  (re-exported: generate's settings)
from .data.collator import ConversationCollator
from .conversation import Example, prompt_messages
from .models.family import Family
from .models.loading import to_model_inputs
from .profiling import DETOKENISE, GENERATE_LOOP, TOKENISE, stage


@dataclass(frozen=True)
class RowSampling:
    """One row's own sampling in a shared batch: ``temperature`` 0 is greedy; ``seed`` makes the row reproducible."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


class PerRowSampler:
    """A logits processor that samples each row with its own temperature, top-p and random generator.

    ``generate`` then runs greedily and takes the one token left per row. Because a row's draws come
    from its own generator (one uniform number per step), a seeded request gets the same answer in a
    batch of any size and mix as alone, and requests with different settings share one batch.
    """

    def __init__(self, rows: Sequence[RowSampling], device: torch.device | str = "cpu") -> None:
        self.rows = list(rows)
        self.generators = []
        for row in self.rows:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(row.seed if row.seed is not None else int(torch.randint(2**62, (1,)).item()))
            self.generators.append(generator)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = scores.argmax(dim=-1)
        for i, row in enumerate(self.rows):
            if row.temperature <= 0:
                continue
            probs = torch.softmax(scores[i].float() / row.temperature, dim=-1)
            if row.top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
                ordered, order = probs.sort(descending=True)
                outside = ordered.cumsum(0) - ordered >= row.top_p
                ordered[outside] = 0
                probs = torch.zeros_like(probs).scatter_(0, order, ordered)
            cdf = probs.cumsum(0)
            u = torch.rand(1, generator=self.generators[i]).item() * cdf[-1].item()
            point = torch.tensor([u], dtype=cdf.dtype, device=cdf.device)
            chosen[i] = min(int(torch.searchsorted(cdf, point).item()), len(cdf) - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen.unsqueeze(1), 0.0)


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


def audio_length(example: Example) -> int:
    return sum(len(a) for a in example.audios())


def prompt_batch(model, processor, family: Family, examples: Sequence[Example]) -> dict[str, Any]:
    """``examples``' prompts as ``model``'s inputs, on its device: each clip's features computed once, batched, on
    that device, and only as far as its audio tower reads them (``ConversationCollator.for_model``)."""
    return to_model_inputs(ConversationCollator.for_model(processor, family, model)(list(examples)), model)


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
                   settings: GenerationSettings | None = None, streamer=None,
                   rows: Sequence[RowSampling] | None = None, inputs: dict[str, Any] | None = None) -> list[Generation]:
    """One ``model.generate`` call over ``examples`` (no sorting or splitting), with token accounting.

    ``rows``: each example's own sampling (see :class:`PerRowSampler`); then ``settings`` gives only the length.
    ``inputs``: the examples already collated for the model (default: :func:`prompt_batch`).
    """
    settings = settings or GenerationSettings()
    extra: dict[str, Any] = {}
    if rows is not None and any(r.temperature > 0 for r in rows):
        settings = GenerationSettings(max_new_tokens=settings.max_new_tokens,  # the rows sample: generate is greedy
                                      repetition_penalty=settings.repetition_penalty,
                                      no_repeat_ngram_size=settings.no_repeat_ngram_size)
        from transformers import LogitsProcessorList

        extra["logits_processor"] = LogitsProcessorList([PerRowSampler(rows)])
    with stage(TOKENISE):  # feature extraction inside it is timed on its own (profiling.instrument)
        batch = inputs if inputs is not None else prompt_batch(model, processor, family, examples)
    stop_ids = stop_token_ids(processor, family)
    pad_id = processor.tokenizer.pad_token_id
    with stage(GENERATE_LOOP):  # the model's forwards inside it are timed apart (profiling.instrument)
        output = model.generate(**batch, **settings.as_kwargs(), eos_token_id=stop_ids, pad_token_id=pad_id,
                                use_cache=True, streamer=streamer, **extra)
    new_tokens = output[:, batch["input_ids"].shape[1]:].tolist()
    prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
    results = []
    with stage(DETOKENISE):
        for tokens, prompt_length in zip(new_tokens, prompt_lengths):
            stop_at = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
            kept = tokens if stop_at is None else tokens[:stop_at]
            text = family.parse_answer(processor.tokenizer.decode(kept, skip_special_tokens=True).strip())
            results.append(Generation(text, int(prompt_length), len(kept) + (stop_at is not None),
                                      "stop" if stop_at is not None else "length", kept))
    return results


def generate(model, processor, family: Family, examples: Sequence[Example], batch_size: int = 16,
             settings: GenerationSettings | None = None,
             on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Answers for ``examples`` in their order; ``on_batch(n)`` is called after each batch of ``n``."""
    order = sorted(range(len(examples)), key=lambda i: audio_length(examples[i]), reverse=True)
    answers: list[str] = [""] * len(examples)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, result in zip(chunk, generate_batch(model, processor, family, [examples[i] for i in chunk], settings)):
            answers[i] = result.text
        if on_batch:
            on_batch(len(chunk))
    return answers
