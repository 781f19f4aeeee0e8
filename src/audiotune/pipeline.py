"""The ``audio-text-to-text`` task for transformers' ``pipeline()``.

transformers (5.2x) ships no such task: the guide's ``pipeline("audio-text-to-text", ...)`` raises
``KeyError: Unknown task``. Importing :mod:`audiotune` registers this class under that name, so the
guide's call works with a merged model or a ``PeftModel`` and its processor.

Accepted inputs: a waveform (at the family's rate), ``(array, rate)``, ``{"array"|"raw",
"sampling_rate"}``, a file path, or chat messages (multi-turn, audio parts inside ``content``).
The prompt for non-chat inputs is ``prompt=`` (default "Describe the audio."). Output:
``[{"generated_text": str}]``.

One bad clip never costs the others. Given a list (or a dataset/generator), the pipeline returns one
output per input, in order; an input whose audio cannot be used (missing file, corrupt or truncated
audio, NaN samples) gets an error record instead of an answer::

    [{"generated_text": None, "error": "clip.wav: truncated WAV: ...", "error_type": "AudioDecodeError"}]

so ``zip(inputs, outputs)`` stays aligned. When every item of a list fails the pipeline raises the
first item's error, as it does for one bad input (nothing was produced, and a wrong folder or rate
should not pass silently). ``on_bad_input="fail"`` raises at the first bad item instead;
``on_bad_input="skip"`` given explicitly returns error records even when every item fails.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from . import errors
from .audio import decode_any, load_audio
from .data.collator import ConversationCollator
from .conversation import Example, prompt_messages
from .generate import stop_token_ids
from .models.facts import bind
from .models.families import family_for_config
from .models.loading import to_model_inputs

logger = logging.getLogger(__name__)

TASK = "audio-text-to-text"
DEFAULT_PROMPT = "Describe the audio."
_ERROR = "audiotune_error"  # marks a preprocessed item whose audio failed, carried to postprocess


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
        self.family = bind(family_for_config(config), config, processor=self.processor, model=self.model)

    def _sanitize_parameters(self, prompt=None, system_prompt=None, generate_kwargs=None, max_new_tokens=None,
                             on_bad_input=None, **kwargs):
        preprocess: dict[str, Any] = {}
        if prompt is not None:
            preprocess["prompt"] = prompt
        if system_prompt is not None:
            preprocess["system_prompt"] = system_prompt
        if on_bad_input is not None:
            if on_bad_input not in ("skip", "fail"):
                raise errors.ConfigError(f"on_bad_input={on_bad_input!r}: choose 'skip' or 'fail'.")
            preprocess["on_bad_input"] = on_bad_input
        forward = dict(generate_kwargs or {})
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        return preprocess, forward, {}

    def __call__(self, inputs: Any = None, **kwargs):
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) and "role" in inputs[0]:
            return super().__call__(_Chat(inputs), **kwargs)  # one conversation: a bad audio raises
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], list):
            inputs = [_Chat(chat) for chat in inputs]
        defaulted = "on_bad_input" not in kwargs and "on_bad_input" not in self._preprocess_params
        if (isinstance(inputs, list) or _is_stream(inputs)) and defaulted:
            kwargs["on_bad_input"] = "skip"  # many items (a tuple is one clip): a bad one gets an error record
        outputs = super().__call__(inputs, **kwargs)
        if defaulted and isinstance(outputs, list) and outputs and all(_failed(o) for o in outputs):
            first = outputs[0][0]
            raise getattr(errors, first["error_type"], errors.AudiotuneError)(
                first["error"] if len(outputs) == 1 else f"all {len(outputs)} inputs failed; the first: "
                                                         f"{first['error']}")
        return outputs

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

    def preprocess(self, inputs, prompt: str = DEFAULT_PROMPT, system_prompt: str | None = None,
                   on_bad_input: str = "fail"):
        try:
            messages = self._conversation(inputs, prompt, system_prompt)
        except errors.AudiotuneError as error:
            if on_bad_input == "fail":
                raise
            logger.warning("pipeline: %s", error)
            return {_ERROR: {"error": str(error), "error_type": type(error).__name__}}
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        example = Example(id="pipeline input", messages=messages, references=[""])
        return ConversationCollator(self.processor, self.family, training=False)([example])

    def _forward(self, model_inputs, **generate_kwargs):
        if _ERROR in model_inputs:
            return model_inputs
        model_inputs = to_model_inputs(model_inputs, self.model)
        generate_kwargs.setdefault("eos_token_id", stop_token_ids(self.processor, self.family))
        generate_kwargs.setdefault("pad_token_id", self.processor.tokenizer.pad_token_id)
        with torch.inference_mode():
            sequences = self.model.generate(**model_inputs, **generate_kwargs)
        return {"new_tokens": sequences[:, model_inputs["input_ids"].shape[1]:]}

    def postprocess(self, model_outputs, **kwargs):
        if _ERROR in model_outputs:
            return [{"generated_text": None, **model_outputs[_ERROR]}]
        texts = self.processor.tokenizer.batch_decode(model_outputs["new_tokens"], skip_special_tokens=True)
        return [{"generated_text": self.family.parse_answer(text.strip())} for text in texts]


def _is_stream(inputs: Any) -> bool:
    """A generator or a dataset: the base pipeline iterates over it lazily."""
    import types

    if isinstance(inputs, types.GeneratorType):
        return True
    try:
        from torch.utils.data import Dataset
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(inputs, Dataset)


def _failed(output: Any) -> bool:
    return isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict) and "error" in output[0]


def register() -> None:
    """Register the task with transformers (idempotent: importing audiotune calls this once)."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AudioTextToTextPipeline, pt_model=(), type="multimodal")


register()  # importing this module registers the task (see task_registration.py)

__all__ = ["AudioTextToTextPipeline", "register", "TASK", "decode_any"]
