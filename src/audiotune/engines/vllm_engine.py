"""The vLLM engine: offline batched generation with vLLM's own engine, in a child process of its environment.

Why a child: vLLM pins its own torch and transformers (:mod:`.vllm_env` finds its interpreter). The worker
(:mod:`.vllm_worker`, a standalone script with no audiotune imports) gets the conversations as OpenAI chat
messages and the settings as ``SamplingParams`` names, so ``--backend vllm`` answers as ``--backend transformers``
does (tests/test_serve_vllm.py compares them).
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import GenerationSettings
from ..conversation import Example
from ..errors import ConfigError
from ..models.family import Family
from .base import Engine
from .vllm_env import (find_vllm_python, lora_rank, on_cpu_only, require_vllm_family, vllm_adapters,
                       vllm_environment)

logger = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("vllm_worker.py")
# Rows per worker when answers are saved as they go (eval): each call loads the model again (seconds to minutes).
ROWS_PER_CALL = 2048


def openai_messages(example: Example, rate: int) -> list[dict[str, Any]]:
    """An Example's chat as OpenAI messages, each audio part a WAV data URI (what vLLM's chat renderer takes)."""
    import base64

    from ..audio import encode_audio

    messages = []
    for message in example.messages:
        parts = []
        for part in message["content"] if isinstance(message["content"], list) else [
                {"type": "text", "text": message["content"]}]:
            if part.get("type") == "audio":
                data = base64.b64encode(encode_audio(part["audio"], rate, subtype="FLOAT")).decode()
                parts.append({"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{data}"}})
            else:
                parts.append({"type": "text", "text": part["text"]})
        content = parts if message["role"] == "user" else " ".join(p["text"] for p in parts if p["type"] == "text")
        messages.append({"role": message["role"], "content": content})
    return messages


def vllm_sampling(settings: GenerationSettings) -> dict[str, Any]:
    """Our generation settings in vLLM's ``SamplingParams`` names: one mapping for the offline engine (eval, infer)
    and the server's request defaults, so ``--backend vllm`` answers as ``--backend transformers`` does."""
    if settings.no_repeat_ngram_size:
        raise ConfigError("--backend vllm has no no_repeat_ngram_size; use --backend transformers for it.")
    if settings.num_beams != 1:
        raise ConfigError("--backend vllm: beam search (--num-beams) is not wired to vLLM; use --backend transformers.")
    return {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature if settings.do_sample else 0.0,
            "top_p": settings.top_p if settings.do_sample else 1.0, "repetition_penalty": settings.repetition_penalty}


class VllmEngine(Engine):
    """vLLM's offline engine over one checkpoint and its adapters (exported once, when the engine opens).

    Each :meth:`generate` call starts one worker process (vLLM loads the model there), so a call should carry a
    whole split: eval and infer make one call per model.
    """

    backend = "vllm"

    def __init__(self, model: str, adapters: dict[str, str] | None = None, *, family: Family | None = None,
                 served_name: str | None = None, vllm_python: str | None = None, batch_size: int = 64,
                 extra_args: Sequence[str] = (), **_native_only: Any) -> None:
        self.model_path = model
        self.family = require_vllm_family(model, family)
        self.adapters = dict(adapters or {})
        self.base_name = served_name or Path(model.rstrip("/")).name or model
        self.python = find_vllm_python(vllm_python)  # a missing environment fails here, before any work
        self.batch_size, self.extra_args = batch_size, list(extra_args)
        self.rows_per_call = max(batch_size, ROWS_PER_CALL)
        self.timings: dict[str, float] = {}  # the last call's load_seconds (engine start) and generate_seconds
        self._folder = tempfile.TemporaryDirectory(prefix="audiotune-vllm-")
        # LM-only LoRA is exported and applied per request; any other adapter becomes a merged copy of the base,
        # which a call for that name opens instead of the base (vllm_env.vllm_adapters decides).
        plan = vllm_adapters(model, self.adapters, self.family, self._folder.name)
        self.exported, self.merged, self.audio_lora = plan.lora, plan.merged, plan.audio_lora

    def generate(self, examples: Sequence[Example], settings: GenerationSettings, *, model: str | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[str]:
        name = self.check_model(model)
        adapter = self.exported.get(name)
        audio_lora = None if name in self.merged else self.audio_lora  # the base's own; a merged copy folds it in
        request = {"model": self.merged.get(name, self.model_path), "adapter": adapter,
                   "lora_rank": lora_rank(adapter) if adapter else audio_lora[1] if audio_lora else None,
                   "default_mm_loras": {"audio": audio_lora[0]} if audio_lora else None,
                   "max_num_seqs": self.batch_size, "cpu": on_cpu_only(), "extra_args": self.extra_args,
                   "sampling": vllm_sampling(settings),
                   "conversations": [openai_messages(e, self.family.sampling_rate) for e in examples]}
        with tempfile.TemporaryDirectory(prefix="audiotune-vllm-", dir=self._folder.name) as folder:
            work = Path(folder)
            (work / "request.json").write_text(json.dumps(request))
            run = subprocess.run([self.python, str(WORKER), str(work / "request.json"), str(work / "answers.json")],
                                 env=vllm_environment(None), capture_output=True, text=True)
            if run.returncode != 0:
                tail = "\n".join(run.stderr.strip().splitlines()[-15:])
                raise ConfigError(f"vLLM generation failed (exit {run.returncode}); its last lines:\n{tail}")
            result = json.loads((work / "answers.json").read_text())
        answers = result["answers"]
        self.timings = {"load_seconds": result["load_seconds"], "generate_seconds": result["generate_seconds"]}
        logger.info("vLLM: engine loaded in %.1f s, %d answers in %.1f s", result["load_seconds"], len(answers),
                    result["generate_seconds"])
        if len(answers) != len(examples):
            raise ConfigError(f"vLLM returned {len(answers)} answers for {len(examples)} examples.")
        if on_batch:
            on_batch(len(examples))
        return [a.strip() for a in answers]

    def close(self) -> None:
        self._folder.cleanup()
