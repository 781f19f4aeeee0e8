"""Examples → a model batch, with the loss on the assistant's tokens only.

The guide's ``apply_chat_template(..., output_labels=True)`` masks only audio placeholders and
padding, so the system prompt and the user's question are trained on too: the model spends capacity
learning to predict its own prompt. Here the label mask is built from the rendered conversation:
every token is ``-100`` except those inside an assistant turn, from just after the family's
assistant header up to and including the end-of-turn token (kept so the model learns to stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.facts import feature_extractor_of
from ..models.family import Family
from ..conversation import Example

IGNORE_INDEX = -100


def _find_subsequence(sequence: list[int], pattern: list[int], start: int) -> int:
    n = len(pattern)
    first = pattern[0]
    for i in range(start, len(sequence) - n + 1):
        if sequence[i] == first and sequence[i : i + n] == pattern:
            return i
    return -1


def assistant_label_mask(input_ids: torch.Tensor, header_ids: list[int], end_id: int,
                         with_header: bool = False) -> torch.Tensor:
    """Boolean mask of the tokens of every assistant turn (end-of-turn included; the header too when the model
    writes it itself, ``with_header``)."""
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, ids in enumerate(input_ids.tolist()):
        position = 0
        while True:
            start = _find_subsequence(ids, header_ids, position)
            if start < 0:
                break
            body = start + len(header_ids)
            try:
                end = ids.index(end_id, body)
            except ValueError:
                end = len(ids) - 1
            mask[row, start if with_header else body : end + 1] = True
            position = end + 1
    return mask


@dataclass
class ConversationCollator:
    """Render each example with the processor's chat template and build inputs (+ labels when training).

    ``training=True`` appends the assistant's answer and pads on the right; ``False`` renders the
    prompt with the generation header and pads on the left, as batched generation needs.
    """

    processor: Any
    family: Family
    training: bool = True
    # Where the feature extractor computes (the model's device when generating, :meth:`for_model`), where it takes a
    # ``device`` (Whisper's batched torch STFT does) and the family allows it (``features_on_device``). None: its
    # default, the CPU, as training's DataLoader workers need (a worker process must not touch the GPU).
    device: str | None = None
    # How the model runs its audio tower (models/encoder_frames.py): "valid" computes features only as far as it reads.
    encoder_frames: str = "window"

    def __post_init__(self) -> None:
        import inspect

        tokenizer = self.processor.tokenizer
        self.header_ids = token_ids_of(tokenizer, self.family.assistant_header)
        self.end_id = tokenizer.convert_tokens_to_ids(self.family.end_of_turn)
        self.extractor = feature_extractor_of(self.processor)
        self.extractor_takes_device = self.extractor is not None and self.family.features_on_device and \
            "device" in inspect.signature(self.extractor.__call__).parameters

    @classmethod
    def for_model(cls, processor, family: Family, model) -> "ConversationCollator":
        """The generation collator for ``model``: features computed on its device, as far as its tower reads."""
        from ..models.encoder_frames import encoder_frames_of

        return cls(processor, family, training=False, device=str(next(model.parameters()).device),
                   encoder_frames=encoder_frames_of(model))

    def audio_kwargs(self, audios: list) -> dict[str, Any]:
        """The feature extractor's options for one batch's clips: its device, and how far to pad them
        (``encoder_frames.feature_samples``; whole windows otherwise). The processor computes each clip's features
        once, batched, and counts its audio tokens from the same call's frame mask."""
        from ..models.encoder_frames import feature_samples

        options: dict[str, Any] = {}
        if not audios:
            return options
        if self.device not in (None, "cpu") and self.extractor_takes_device:  # the CPU is every extractor's default
            options["device"] = self.device
        span = feature_samples(self.family, self.extractor, [len(a) for a in audios], self.encoder_frames)
        if span is not None:
            options["max_length"] = span
        return options

    def _answer(self, example: Example) -> str:
        """The training target as the real model writes it (``Family.format_answer``)."""
        return self.family.format_answer(example.target, example.meta.get("language"))

    def _chat(self, example: Example) -> list[dict[str, Any]]:
        """The prompt, and when training the answer."""
        return example.conversation(self._answer(example)) if self.training else example.messages

    def render(self, examples: list[Example]) -> list[str]:
        if self.training and self.family.model_writes_header:  # the template renders no answer: append it
            prompts = self.processor.apply_chat_template([e.messages for e in examples], tokenize=False)
            return [prompt + self.family.assistant_header + self._answer(e) + self.family.end_of_turn
                    for prompt, e in zip(prompts, examples)]
        conversations = [self._chat(e) for e in examples]
        texts = self.processor.apply_chat_template(conversations, tokenize=False,
                                                   add_generation_prompt=not self.training)
        if self.training and not self.family.template_closes_turns:
            texts = [text + self.family.end_of_turn for text in texts]
        return texts

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        if self.family.processor_tokenizes_chat:
            batch = self._encode_through_chat_template(examples)
        else:
            texts = self.render(examples)
            audios = [self.family.prepare_audio(a) for e in examples for a in e.audios()]
            # Padding options go to the text side only: the audio side keeps its windows unless audio_kwargs cuts them.
            side = "right" if self.training else "left"
            batch = self.processor(text=texts, audio=audios or None,
                                   text_kwargs={"padding": True, "padding_side": side},
                                   audio_kwargs=self.audio_kwargs(audios), return_tensors="pt")
        # Every tensor the processor returns is a model input (features, their masks, per-family extras).
        batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        batch.update(self.family.model_inputs)
        if self.training:
            mask = assistant_label_mask(batch["input_ids"], self.header_ids, self.end_id,
                                        with_header=self.family.model_writes_header)
            mask &= batch["attention_mask"].bool()
            batch["labels"] = torch.where(mask, batch["input_ids"], torch.full_like(batch["input_ids"], IGNORE_INDEX))
        return batch

    def _encode_through_chat_template(self, examples: list[Example]):
        """Families whose processor only tokenises inside ``apply_chat_template`` (Voxtral's mistral-common
        backend): audio goes in as base64 WAV parts, text-only content as plain strings, and a system prompt is
        folded into the first user turn (Voxtral's tokenizer refuses a system turn next to audio)."""
        conversations = [_as_encoded_chat(self._chat(e), self.family.sampling_rate, self.family.prepare_audio)
                         for e in examples]
        audio = self.audio_kwargs([self.family.prepare_audio(a) for e in examples for a in e.audios()])
        return self.processor.apply_chat_template(conversations, tokenize=True, return_dict=True, return_tensors="pt",
                                                  **({"processor_kwargs": {"audio_kwargs": audio}} if audio else {}))


def token_ids_of(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` as it appears in a rendered conversation: one id when it is a single (special) token
    (mistral-common never parses special tokens out of text), else its encoding."""
    try:
        single = tokenizer.convert_tokens_to_ids(text)
    except (KeyError, ValueError):
        single = None
    if isinstance(single, int) and single >= 0 and single != tokenizer.unk_token_id:
        return [single]
    return tokenizer.encode(text, add_special_tokens=False)


def _wav_base64(wave, rate: int) -> str:
    import base64

    from ..audio import encode_audio

    return base64.b64encode(encode_audio(wave, rate, subtype="FLOAT")).decode("ascii")


def _as_encoded_chat(messages: list[dict[str, Any]], rate: int, prepare_audio) -> list[dict[str, Any]]:
    system = " ".join(part["text"] for m in messages if m["role"] == "system"
                      for part in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]))
    converted: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "system":
            continue
        content = message["content"]
        if isinstance(content, list):
            parts = [{"type": "audio", "base64": _wav_base64(prepare_audio(part["audio"]), rate)}
                     if part.get("type") == "audio" else part for part in content]
            if all(part.get("type") == "text" for part in parts):
                content = "".join(part["text"] for part in parts)
            else:
                content = parts
        if system and message["role"] == "user" and not any(m["role"] == "user" for m in converted):
            if isinstance(content, str):
                content = f"{system}\n\n{content}"
            else:
                content = [{"type": "text", "text": f"{system}\n\n"}, *content]
        converted.append({"role": message["role"], "content": content})
    return converted
