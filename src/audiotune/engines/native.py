"""The transformers engine: the model in this process, base plus named LoRA adapters, one batch at a time.

Several adapters share one base (PEFT adapter switching): a batch holds requests for one adapter
(or the base, run with adapters disabled), so requests for different adapters are batched apart.
Requests with different sampling settings and ``max_tokens`` share a batch: each row samples with its
own temperature, top-p and seeded generator (:class:`~audiotune.generate.PerRowSampler`), so a row's
answer does not depend on its batch, and a shorter limit is a prefix of the longer one, cut afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import processor_folder
from ..errors import CheckpointError
from ..generate import (Generation, GenerationSettings, PerRowSampler, RowSampling, generate, generate_batch,
                        prompt_batch, stop_token_ids)
from ..models.family import Family
from ..profiling import DETOKENISE, stage
from .base import Engine, GenerationRequest, Sample

logger = logging.getLogger(__name__)


class NativeEngine(Engine):
    """The base (+ adapters) loaded once with transformers; batches run in this process."""

    backend = "transformers"

    def __init__(self, model: str, adapters: dict[str, str] | None = None, *, family: Family | None = None,
                 served_name: str | None = None, device: str | None = None, encoder_frames: str = "window",
                 batch_size: int = 16, generation: GenerationSettings | None = None, audio_cache=None,
                 **_vllm_only: Any) -> None:
        from ..models.loading import check_adapter_folder, load_model, load_processor

        for path in (adapters or {}).values():
            check_adapter_folder(path)
        base, family = load_model(model, device=device, encoder_frames=encoder_frames, family=family)
        # One adapter (infer, eval): its own processor when training saved one (a changed template or tokenizer).
        only = next(iter(adapters.values())) if adapters and len(adapters) == 1 else None
        self._setup(base, load_processor(processor_folder(model, only)), family, adapters,
                    served_name or Path(model.rstrip("/")).name or model, batch_size, generation)
        if audio_cache is not None:  # eval: models with the same frozen encoder share the clips' embeddings
            from ..audio_cache import install_audio_cache

            install_audio_cache(self.model, self.family, audio_cache)

    @classmethod
    def wrap(cls, model, processor, family: Family, name: str = "model", batch_size: int = 16,
             generation: GenerationSettings | None = None) -> "NativeEngine":
        """An engine over a model already loaded (a notebook, a test, a long-lived process); adapters on it, if
        any, stay as they are."""
        engine = cls.__new__(cls)
        engine._setup(model, processor, family, None, name, batch_size, generation)
        return engine

    def _setup(self, base, processor, family: Family, adapters: dict[str, str] | None, name: str, batch_size: int,
               generation: GenerationSettings | None) -> None:
        self.family, self.processor, self.base_name, self.batch_size = family, processor, name, batch_size
        self.rows_per_call = batch_size  # each batch is saved as soon as it is answered
        self.adapters = dict(adapters or {})
        if self.base_name in self.adapters:
            raise CheckpointError(f"adapter name {self.base_name!r} is also the base model's served name; rename it.")
        self.model = base
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            self.model = PeftModel.from_pretrained(base, self.adapters[names[0]], adapter_name=names[0])
            for adapter in names[1:]:
                self.model.load_adapter(self.adapters[adapter], adapter_name=adapter)
            self.model.eval()
        # What a request that sets no temperature/top-p gets, and the server-wide repetition rules: the same
        # GenerationSettings as infer and eval (greedy by default), not the checkpoint's generation_config.
        self.generation = generation or GenerationSettings()

    def generate(self, examples, settings, *, model=None, on_batch=None) -> list[str]:
        with self._selected(self.check_model(model)):
            return generate(self.model, self.processor, self.family, examples, batch_size=self.batch_size,
                            settings=settings, on_batch=on_batch)

    def sample(self, examples, *, max_tokens, temperature, top_p, suppress_tokens=None, inputs=None,
               seeds=None) -> list[Sample]:
        """Sampled in eval mode without gradients, the model's mode restored after (the model may be a policy in
        training). Each row draws from its own generator (:class:`~audiotune.generate.PerRowSampler`): seeded by
        ``seeds``, a row's completion does not depend on the batch it shares or its padding, so a GRPO run samples
        the same whichever process a prompt lands on; unseeded rows take their seeds from the global generator."""
        from transformers import LogitsProcessorList

        batch = inputs if inputs is not None else prompt_batch(self.model, self.processor, self.family, examples)
        stop_ids = stop_token_ids(self.processor, self.family)
        seeds = list(seeds) if seeds is not None else [None] * len(examples)
        sampler = PerRowSampler([RowSampling(temperature=temperature, top_p=top_p, seed=seed) for seed in seeds])
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():  # greedy over what the per-row sampler leaves: its one drawn token per row
                output = self.model.generate(**batch, do_sample=False, max_new_tokens=max_tokens,
                                             eos_token_id=stop_ids, pad_token_id=self.processor.tokenizer.pad_token_id,
                                             use_cache=True, suppress_tokens=suppress_tokens,
                                             logits_processor=LogitsProcessorList([sampler]))
        finally:
            self.model.train(was_training)
        return [Sample.from_tokens(tokens, stop_ids, self.processor.tokenizer)
                for tokens in output[:, batch["input_ids"].shape[1]:].tolist()]

    def close(self) -> None:
        del self.model
        import gc

        gc.collect()

    @contextlib.contextmanager
    def _selected(self, name: str):
        if not self.adapters:
            yield
        elif name == self.base_name:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(name)
            yield

    def _sampling(self, request: GenerationRequest) -> RowSampling:
        """The request's own sampling; what it leaves unset comes from the server's generation settings."""
        if request.greedy or (request.temperature is None and not self.generation.do_sample):
            return RowSampling()
        temperature = request.temperature if request.temperature is not None else self.generation.temperature
        top_p = request.top_p if request.top_p is not None else self.generation.top_p
        return RowSampling(temperature=temperature or 1.0, top_p=top_p or 1.0, seed=request.seed)

    def run(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Generate for requests that share a :meth:`GenerationRequest.batch_key`."""
        settings = dataclasses.replace(self.generation, max_new_tokens=max(r.max_tokens for r in requests),
                                       do_sample=False)  # each row samples by its own RowSampling
        streamer = (_BatchStreamer(self.processor.tokenizer, requests, stop_token_ids(self.processor, self.family))
                    if any(r.on_text for r in requests) else None)
        with self._selected(requests[0].model):
            results = generate_batch(self.model, self.processor, self.family, [r.example for r in requests],
                                     settings, streamer=streamer, rows=[self._sampling(r) for r in requests])
        return [self._finish(request, result) for request, result in zip(requests, results)]

    def _finish(self, request: GenerationRequest, result: Generation) -> Generation:
        """Apply the request's own ``max_tokens`` and ``stop`` strings to a (possibly longer) batch answer."""
        text, reason, completion = result.text, result.finish_reason, result.completion_tokens
        if completion > request.max_tokens:  # what generating with its own limit would have returned
            tokens = result.tokens[: request.max_tokens]
            with stage(DETOKENISE):
                text = self.family.parse_answer(
                    self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip())
            reason, completion = "length", request.max_tokens
        for stop in request.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return Generation(text, result.prompt_tokens, completion, reason, result.tokens[:completion])


class _BatchStreamer:
    """A transformers streamer for a whole batch: routes each row's new text to its request's callback.

    ``generate`` first ``put``s the prompt (skipped), then one token per row per step. Text is
    decoded from the row's tokens so far and only the new suffix is sent; a suffix ending in an
    incomplete UTF-8 sequence waits for the next token.
    """

    def __init__(self, tokenizer, requests: Sequence[GenerationRequest], stop_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.requests = list(requests)
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.sent = [""] * len(requests)
        self.done = [False] * len(requests)
        self.stop_ids = set(stop_ids)
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for row, token in enumerate(value.reshape(len(self.requests), -1)[:, -1].tolist()):
            request = self.requests[row]
            if self.done[row] or request.on_text is None:
                continue
            if token in self.stop_ids:
                self.done[row] = True
                continue
            self.tokens[row].append(token)
            if len(self.tokens[row]) > request.max_tokens:
                self.done[row] = True
                continue
            with stage(DETOKENISE):
                text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True).lstrip()
            if text.endswith("\ufffd"):
                continue
            delta, self.sent[row] = text[len(self.sent[row]):], text
            if delta:
                request.on_text(delta)

    def end(self) -> None:
        pass
