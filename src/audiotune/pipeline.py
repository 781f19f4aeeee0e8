"""The ``audio-text-to-text`` task for transformers' ``pipeline()``.

transformers (5.2x) ships no such task: the guide's ``pipeline("audio-text-to-text", ...)`` raises
``KeyError: Unknown task``. Importing :mod:`audiotune` registers this class under that name, so the
guide's call works with a merged model or a ``PeftModel`` and its processor.

Accepted inputs: a waveform (at the family's rate), ``(array, rate)``, ``{"array"|"raw",
"sampling_rate"}``, a file path, or chat messages (multi-turn, audio parts inside ``content``).
The prompt for non-chat inputs is ``prompt=`` (default "Describe the audio."). Output:
``[{"generated_text": str}]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .audio import decode_any, load_audio
from .data.collator import ConversationCollator
from .data.tasks import Example, prompt_messages
from .generate import stop_token_ids
from .models.families import family_for_config
from .models.loading import to_model_inputs

TASK = "audio-text-to-text"
DEFAULT_PROMPT = "Describe the audio."


class _Chat:
    """Marks a list of messages as one conversation, so the base pipeline does not iterate over it."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages


class AudioTextToTextPipeline(Pipeline):
    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = getattr(self.model, "config", None)
        self.family = family_for_config(config)

    def _sanitize_parameters(self, prompt=None, system_prompt=None, generate_kwargs=None, max_new_tokens=None,
                             **kwargs):
        preprocess: dict[str, Any] = {}
        if prompt is not None:
            preprocess["prompt"] = prompt
        if system_prompt is not None:
            preprocess["system_prompt"] = system_prompt
        forward = dict(generate_kwargs or {})
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        return preprocess, forward, {}

    def __call__(self, inputs: Any = None, **kwargs):
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) and "role" in inputs[0]:
            return super().__call__(_Chat(inputs), **kwargs)
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], list):
            return super().__call__([_Chat(chat) for chat in inputs], **kwargs)
        return super().__call__(inputs, **kwargs)

    def _conversation(self, inputs: Any, prompt: str, system_prompt: str | None) -> list[dict[str, Any]]:
        rate = self.family.sampling_rate
        if isinstance(inputs, _Chat):
            return [self._decode_message(m) for m in inputs.messages]
        if isinstance(inputs, dict) and "raw" in inputs and "array" not in inputs:
            inputs = {"array": inputs["raw"], "sampling_rate": inputs["sampling_rate"]}
        audio = load_audio(inputs, rate, "pipeline input")
        return prompt_messages(audio, prompt, system_prompt)

    def _decode_message(self, message: dict[str, Any]) -> dict[str, Any]:
        if isinstance(message.get("content"), str):
            return {"role": message["role"], "content": [{"type": "text", "text": message["content"]}]}
        parts = []
        for part in message["content"]:
            if part.get("type") == "audio":
                source = next((part[k] for k in ("audio", "array", "path", "url") if part.get(k) is not None), None)
                if isinstance(source, np.ndarray) and part.get("sampling_rate"):
                    source = (source, part["sampling_rate"])
                audio = load_audio(source, self.family.sampling_rate, f"{message['role']} audio")
                parts.append({"type": "audio", "audio": audio})
            else:
                parts.append(part)
        return {"role": message["role"], "content": parts}

    def preprocess(self, inputs, prompt: str = DEFAULT_PROMPT, system_prompt: str | None = None):
        messages = self._conversation(inputs, prompt, system_prompt)
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        example = Example(id="pipeline input", messages=messages, references=[""])
        return ConversationCollator(self.processor, self.family, training=False)([example])

    def _forward(self, model_inputs, **generate_kwargs):
        model_inputs = to_model_inputs(model_inputs, self.model)
        generate_kwargs.setdefault("eos_token_id", stop_token_ids(self.processor, self.family))
        generate_kwargs.setdefault("pad_token_id", self.processor.tokenizer.pad_token_id)
        with torch.inference_mode():
            sequences = self.model.generate(**model_inputs, **generate_kwargs)
        return {"new_tokens": sequences[:, model_inputs["input_ids"].shape[1]:]}

    def postprocess(self, model_outputs, **kwargs):
        texts = self.processor.tokenizer.batch_decode(model_outputs["new_tokens"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


def register() -> None:
    """Register the task with transformers (idempotent: importing audiotune calls this once)."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AudioTextToTextPipeline, pt_model=(), type="multimodal")


__all__ = ["AudioTextToTextPipeline", "register", "TASK", "decode_any"]
