"""GRPO's rollouts on vLLM (``--rollout-backend vllm``): a vLLM server samples the completions, and the policy's LoRA
reaches it after every optimizer step through vLLM's runtime LoRA loading.

Why a server: generation is the slow half of a GRPO step, and vLLM batches a whole step's completions (a group shares
its prompt's prefill and audio encoding) where HF ``generate`` pads and steps them together. vLLM pins its own torch,
so it runs in its own environment (:mod:`audiotune.engines.vllm_env` finds it); the trainer starts it like ``serve
--backend vllm`` does (:class:`audiotune.serve.vllm_server.VllmServer`), with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``
on, so ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (vllm-project/vllm,
``vllm/entrypoints/serve/lora/api_router.py``) swap adapters without a restart.

The contract:

- **Fresh weights.** Before sampling, the policy's adapter is saved, exported to vLLM's module names
  (:func:`~audiotune.engines.vllm_env.export_adapter`) and loaded as ``policy-step-<global step>``; the previous one
  is unloaded. A name is never reused, so vLLM's prefix cache (keyed by adapter) cannot serve an older step's
  blocks; on a server given by ``--vllm-url``, which other runs may share, the names carry a random run tag
  (``policy-<tag>-step-<n>``). Each completion carries the name vLLM answered with (:attr:`Sample.model`), which the
  trainer checks against its step.
- **Log-probabilities.** vLLM returns each sampled token's log-probability after temperature and top-p
  (``--logprobs-mode processed_logprobs``, as TRL starts it); the trainer recomputes the policy's own and corrects
  the gap by truncated importance sampling (:func:`audiotune.rl.losses.sampler_correction`).
- **Seeds.** Each prompt's request carries a seed derived from the run's seed, the step, the micro-batch and the
  draw; vLLM seeds the group's completions ``seed, seed + 1, …`` (``vllm/v1/engine/parallel_sampling.py``). A rerun
  on the same server draws the same random numbers, but vLLM's logits can differ in the last bits with how it batches
  concurrent requests, so completions are not guaranteed bit-identical across runs, and never equal the native
  sampler's (another generator). Greedy decoding (temperature 0) matches the native greedy completions
  (``tests/test_vllm_rollouts.py``), apart from near-ties between two float kernels.
- **Prompts.** vLLM renders the chat itself; each request returns its prompt's token ids, which must equal the
  collator's (the prompt the loss is computed on), or the run stops.
- **A server that dies** (its process ends, or it stops answering) is restarted once, on a new port, and loaded with
  the last synced adapter; the run goes on. A second death raises :class:`~audiotune.errors.RolloutServerError`
  (the trainer saves a checkpoint first). A server given by ``--vllm-url`` is the user's and is never restarted.

Adapters vLLM's LoRA cannot apply (:func:`~audiotune.engines.vllm_env.merge_reason`: a trained projector, encoder
LoRA, LoRA on the LM head) and families whose vLLM code takes no LoRA, or whose checkpoint's own audio LoRA takes
vLLM's one LoRA per request, are refused before training starts (:func:`check_vllm_rollouts`,
:meth:`VllmRollouts.check_policy`): serving a merged copy per step would mean a server restart per step.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..conversation import Example
from ..engines.base import Sample
from ..engines.vllm_env import (export_adapter, find_vllm_python, merge_reason, on_cpu_only, require_vllm_family,
                                vllm_max_lora_rank)
from ..errors import ConfigError, RolloutServerError
from ..generate import stop_token_ids
from ..models.family import Family

logger = logging.getLogger(__name__)

RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"  # vllm/envs.py: turns on the load/unload endpoints
SERVER_FILE = "server.json"  # in the rollout folder: the running server's pid and URL (for a user, or a test)
BASE_NAME = "base"  # the served name of the base model (no adapter)
T = TypeVar("T")


def check_vllm_rollouts(cfg) -> None:
    """Config-time refusals for ``--rollout-backend vllm`` (``cfg`` a ``TrainConfig``), before data or the model load:
    the family must be served by vLLM and take the policy's LoRA, and a server must be startable or given."""
    from ..models.loading import modality_adapter_path, resolve_family

    rl = cfg.rl
    if cfg.adapter.full:
        raise ConfigError("--rollout-backend vllm sends the policy's LoRA adapter to vLLM after every step; --full "
                          "trains every weight, which cannot reach it that way. Train LoRA, or use "
                          "--rollout-backend native.")
    family = require_vllm_family(cfg.model, resolve_family(cfg.model))
    if not family.vllm_lora:
        raise ConfigError(f"--rollout-backend vllm: vLLM's {family.name} model code takes no LoRA (it does not "
                          "implement SupportsLoRA), so the policy's adapter cannot reach it after each step. Use "
                          "--rollout-backend native.")
    if modality_adapter_path(cfg.model, family) is not None:
        raise ConfigError(f"--rollout-backend vllm: {cfg.model} ships its own audio LoRA, which takes the one LoRA "
                          "vLLM applies per request, so the policy's adapter cannot go on top. Use "
                          "--rollout-backend native.")
    if rl.vllm_url:
        if not rl.vllm_url.startswith(("http://", "https://")):
            raise ConfigError(f"--vllm-url {rl.vllm_url}: give the server's base URL, e.g. http://127.0.0.1:8000.")
    else:
        find_vllm_python(rl.vllm_python)  # a missing vLLM environment fails now, not after the model loads
    if not 0 < rl.vllm_gpu_memory_utilization <= 1:
        raise ConfigError(f"--vllm-gpu-memory-utilization {rl.vllm_gpu_memory_utilization}: a share in (0, 1].")
    if rl.vllm_importance_sampling_clip_max <= 0:
        raise ConfigError(f"--vllm-importance-sampling-clip-max {rl.vllm_importance_sampling_clip_max}: must be > 0.")


@dataclass
class Synced:
    """The adapter vLLM samples from now: its name, the optimizer step it holds, its exported folder."""

    name: str
    step: int
    folder: Path


class _ServerGone(Exception):
    """The server's process has ended (seen before a request is sent)."""


class VllmRollouts:
    """A vLLM server for one GRPO run: started on first use (or the one at ``url``), given the policy's adapter
    with :meth:`sync`, asked for completions with :meth:`sample`, stopped by :meth:`close`.

    ``folder`` holds the exported adapters (the last one kept for a restart), the server's log and
    :data:`SERVER_FILE`. ``max_num_seqs``: completions vLLM runs together (a step's). ``api_key``: for a server at
    ``url`` (a server started here gets a fresh random key, so no other user of the machine can load adapters
    into it).
    """

    def __init__(self, model_path: str, family: Family, processor, folder: str | Path, *, url: str | None = None,
                 python: str | None = None, api_key: str | None = None, max_num_seqs: int = 16,
                 lora_rank: int = 16, gpu_memory_utilization: float = 0.3, timeout_s: float = 1800.0) -> None:
        import httpx

        self.model_path, self.family, self.processor = model_path, family, processor
        self.folder = Path(folder)
        self.external = url is not None
        self.url = url.rstrip("/") if url else None
        self.python = None if url else find_vllm_python(python)
        self.api_key = (api_key or os.environ.get("VLLM_API_KEY")) if url else secrets.token_urlsafe(24)
        self.max_num_seqs, self.lora_rank = max_num_seqs, vllm_max_lora_rank(lora_rank)
        self.gpu_memory_utilization = gpu_memory_utilization
        self.stop_ids = stop_token_ids(processor, family)
        self.prefix = f"policy-{secrets.token_hex(3)}" if url else "policy"
        self.current: Synced | None = None
        self.restarts = 0
        self._reload = False
        self.server: Any = None  # the VllmServer started here
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=30.0))

    # --- the server ---------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The server process's id (``None`` for a server at ``--vllm-url``, or before it starts)."""
        if self.server is None:
            return None
        return self.server.children[0].process.pid

    def start(self) -> "VllmRollouts":
        """Start the server (a no-op when it runs, or for a server at ``--vllm-url``) and wait until it answers."""
        if self.external or self.server is not None:
            return self
        from ..config import ServeConfig
        from ..serve.vllm_server import VllmServer, free_port

        self.folder.mkdir(parents=True, exist_ok=True)
        args = ["--enable-lora", "--max-lora-rank", str(self.lora_rank), "--max-loras", "1",
                "--logprobs-mode", "processed_logprobs"]
        if not on_cpu_only():  # the trainer shares the GPU: vLLM would otherwise claim 90% of it
            args += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        cfg = ServeConfig.from_flat(model=self.model_path, host="127.0.0.1", port=free_port(), served_name=BASE_NAME,
                                    max_batch_size=self.max_num_seqs, vllm_args=args)
        log = self.folder / "server.log"
        server = VllmServer(cfg, api_key=self.api_key, python=self.python, environ={RUNTIME_LORA_ENV: "1"}, log=log)
        try:
            server.start()
        except ConfigError as error:
            raise RolloutServerError(f"the vLLM rollout server did not start: {error} Its log: {log}.") from None
        self.server, self.url = server, server.children[0].url
        (self.folder / SERVER_FILE).write_text(json.dumps({"pid": self.pid, "url": self.url, "log": str(log)}))
        logger.info("vLLM rollout server (pid %d) answers on %s; its log: %s", self.pid, self.url, log)
        return self

    def close(self) -> None:
        """Stop the server started here (a ``--vllm-url`` server is left running, its last adapter unloaded) and
        remove the last exported adapter (the run's checkpoints hold the policy)."""
        import httpx

        if self.external and self.current is not None:
            try:
                self._post("/v1/unload_lora_adapter", {"lora_name": self.current.name})
            except (RolloutServerError, httpx.HTTPError):
                pass
        if self.current is not None:
            shutil.rmtree(self.current.folder, ignore_errors=True)
            self.current = None
        self._stop_server()
        self.client.close()
        (self.folder / SERVER_FILE).unlink(missing_ok=True)

    def _stop_server(self) -> None:
        if self.server is None:
            return
        server, self.server = self.server, None
        process = server.children[0].process
        if process is not None and process.poll() is not None:  # died: its engine processes may linger
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        server.stop()

    def _alive(self) -> None:
        if self.server is not None and self.server.children[0].process.poll() is not None:
            raise _ServerGone(f"its process exited with code {self.server.children[0].process.returncode}")

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """``action`` against the server, which is started first if need be; a server that died is restarted once
        (with the last synced adapter) and ``action`` tried again."""
        import httpx

        while True:
            try:
                self.start()
                self._alive()
                if self._reload and self.current is not None:  # a restarted server: the last synced adapter first
                    self._load(self.current)
                self._reload = False
                return action()
            except (httpx.TransportError, _ServerGone) as error:
                self._died(what, error)

    def _died(self, what: str, error: Exception) -> None:
        where = f"the vLLM rollout server at {self.url}"
        if self.external:
            raise RolloutServerError(f"{where} stopped answering while {what} ({type(error).__name__}: {error}); it "
                                     "was given by --vllm-url, so it is not restarted here. Restart it, then "
                                     "rerun with --resume.") from None
        if self.restarts >= 1:
            self._stop_server()
            raise RolloutServerError(f"{where} died again while {what} ({type(error).__name__}: {error}), after "
                                     f"its one restart; see {self.folder / 'server.log'}.") from None
        self.restarts += 1
        logger.warning("%s died while %s (%s: %s); restarting it once, with %s.", where, what, type(error).__name__,
                       error, self.current.name if self.current else "no adapter yet")
        self._stop_server()
        self._reload = True  # _call starts the new server and loads the last synced adapter into it

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        answer = self.client.post(f"{self.url}{path}", json=body)
        if answer.status_code != 200:
            raise RolloutServerError(f"vLLM refused {path} ({answer.status_code}): {answer.text[:500]}")
        return answer.json() if answer.headers.get("content-type", "").startswith("application/json") else None

    # --- the policy's adapter -----------------------------------------------------------------------------------
    def name_for(self, step: int) -> str:
        """The name the policy's adapter after ``step`` optimizer steps is loaded under."""
        return f"{self.prefix}-step-{step}"

    def check_policy(self, policy) -> None:
        """Refuse, before training, a policy whose adapter vLLM's LoRA cannot apply (the one rule,
        :func:`merge_reason`, on the adapter as it would be saved)."""
        from peft import PeftModel

        if not isinstance(policy, PeftModel):
            raise ConfigError("--rollout-backend vllm sends the policy's LoRA adapter to vLLM; this policy has none. "
                              "Train LoRA, or use --rollout-backend native.")
        probe = self.folder / "policy-check"
        try:
            _save_policy_adapter(policy, probe)
            why = merge_reason(probe, self.family)
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        if why:
            raise ConfigError(f"--rollout-backend vllm: the policy's adapter cannot reach vLLM as a LoRA: {why}. "
                              "Train LoRA on the language model's layers only (no --train-projector, "
                              "--train-audio-encoder or LM head in --lora-targets), or use --rollout-backend native.")

    def sync(self, policy, step: int) -> str:
        """vLLM samples from ``policy`` as it is after ``step`` optimizer steps: its adapter saved, exported, loaded
        as ``policy-step-<step>``; the previous adapter unloaded and its folder removed. Returns the name."""
        name = self.name_for(step)
        if self.current is not None and self.current.name == name:
            return name
        raw, folder = self.folder / f"{name}.peft", self.folder / name
        _save_policy_adapter(policy, raw)
        try:
            export_adapter(self.model_path, raw, folder, self.family)
        finally:
            shutil.rmtree(raw, ignore_errors=True)
        synced = Synced(name, step, folder)
        try:
            self._call(f"loading {name}", lambda: self._load(synced))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        previous, self.current = self.current, synced
        if previous is not None:
            self._call(f"unloading {previous.name}",
                       lambda: self._post("/v1/unload_lora_adapter", {"lora_name": previous.name}))
            shutil.rmtree(previous.folder, ignore_errors=True)
        logger.info("vLLM samples from %s", name)
        return name

    def _load(self, synced: Synced) -> None:
        self._post("/v1/load_lora_adapter", {"lora_name": synced.name, "lora_path": str(synced.folder)})

    def for_policy(self, policy, step: int, seed: int) -> "PolicySampler":
        """A sampler over ``policy`` as it is after ``step`` steps (synced now), seeding its requests from
        ``seed``: what GRPO's ``rollout_engine`` returns."""
        return PolicySampler(self, self.sync(policy, step), seed)

    # --- sampling -----------------------------------------------------------------------------------------------
    def sample(self, examples: Sequence[Example], *, model: str, seed: int, max_tokens: int, temperature: float,
               top_p: float = 1.0, suppress_tokens: Sequence[int] | None = None,
               inputs: dict | None = None, seeds: Sequence[int] | None = None) -> list[Sample]:
        """One completion per example, from ``model`` (an adapter name or :data:`BASE_NAME`). A run of the same
        example object (GRPO's group) is one request with ``n`` completions. ``inputs``: the collated prompts, whose
        token ids each answer's prompt must equal. ``seeds``: one per completion (GRPO's rank-independent
        :func:`~audiotune.rl.grpo.completion_seed`); a group's request is seeded by its first completion's, since
        vLLM seeds a request's ``n`` completions from one seed."""
        from ..engines.vllm_engine import openai_messages

        groups: list[tuple[int, int]] = []  # (first index, size) of each run of the same example
        for index, example in enumerate(examples):
            if groups and examples[groups[-1][0]] is example:
                groups[-1] = (groups[-1][0], groups[-1][1] + 1)
            else:
                groups.append((index, 1))
        base = {"model": model, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "top_k": 0,
                "repetition_penalty": 1.0, "logprobs": True, "return_tokens_as_token_ids": True,
                "return_token_ids": True, "ignore_eos": True, "stop_token_ids": self.stop_ids,
                "logit_bias": {str(t): -100.0 for t in suppress_tokens or ()}}
        # The same seeds whichever group a request lands next to; vLLM seeds a request's n completions seed + i.
        bodies = [{**base, "n": size, "seed": seeds[first] if seeds is not None else seed + first,
                   "messages": openai_messages(examples[first], self.family.sampling_rate)} for first, size in groups]

        def ask() -> list[dict]:
            with ThreadPoolExecutor(max_workers=min(len(bodies), 64)) as pool:
                return list(pool.map(lambda body: self._post("/v1/chat/completions", body), bodies))

        answers = self._call(f"sampling from {model}", ask)
        samples: list[Sample] = []
        for (first, size), answer in zip(groups, answers):
            if inputs is not None:
                self._check_prompt(answer.get("prompt_token_ids"), inputs, first)
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            if len(choices) != size:
                raise RolloutServerError(f"vLLM returned {len(choices)} completions for a request of {size}.")
            for choice in choices:
                logprobs = [entry["logprob"] for entry in choice["logprobs"]["content"]]
                if len(logprobs) != len(choice["token_ids"]):
                    raise RolloutServerError(f"vLLM returned {len(logprobs)} log-probabilities for "
                                             f"{len(choice['token_ids'])} tokens.")
                samples.append(Sample.from_tokens(choice["token_ids"], self.stop_ids, self.processor.tokenizer,
                                                  logprobs=logprobs, model=answer["model"]))
        return samples

    def _check_prompt(self, vllm_ids: list[int] | None, inputs: dict, row: int) -> None:
        """The completions must continue the prompt the loss reads: vLLM's rendering of the chat equals the
        collator's token for token."""
        ours = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
        if vllm_ids != ours:
            where = next((i for i, (a, b) in enumerate(zip(vllm_ids or [], ours)) if a != b),
                         min(len(vllm_ids or []), len(ours)))
            raise ConfigError(f"vLLM renders this prompt differently from audiotune's collator ({len(vllm_ids or [])} "
                              f"vs {len(ours)} tokens, first difference at token {where}), so its completions would "
                              f"not continue the prompt the loss is computed on. Use --rollout-backend native for "
                              f"the {self.family.name} family.")


@dataclass
class PolicySampler:
    """:meth:`VllmRollouts.sample` bound to one synced adapter and seed, with the native engine's ``sample``
    signature (GRPO's ``rollout_engine(model).sample(...)`` calls either)."""

    rollouts: VllmRollouts
    model: str
    seed: int

    def sample(self, examples: Sequence[Example], *, max_tokens: int, temperature: float, top_p: float,
               suppress_tokens: Sequence[int] | None = None, inputs: dict | None = None,
               seeds: Sequence[int] | None = None) -> list[Sample]:
        return self.rollouts.sample(examples, model=self.model, seed=self.seed, max_tokens=max_tokens,
                                    temperature=temperature, top_p=top_p, suppress_tokens=suppress_tokens,
                                    inputs=inputs, seeds=seeds)


def _save_policy_adapter(policy, folder: Path) -> None:
    """The trained adapter alone (not ``--init-adapter``'s frozen ``ref``), without the base embedding weights PEFT
    adds when LoRA targets them (vLLM needs only the LoRA matrices)."""
    policy.save_pretrained(str(folder), selected_adapters=[policy.active_adapter], save_embedding_layers=False)


def rollouts_for_training(args, rl, model, processor, family: Family, model_path: str) -> VllmRollouts:
    """The run's :class:`VllmRollouts` (``args``: TRL's GRPOConfig; ``rl``: ``TrainConfig.rl``), its folder in the
    output folder; refuses a policy vLLM cannot take before anything starts."""
    if args.world_size > 1:
        raise ConfigError("--rollout-backend vllm runs on one process for now; use --nproc 1, or "
                          "--rollout-backend native.")
    rank = max((c.r for c in getattr(model, "peft_config", {}).values()), default=16)
    rollouts = VllmRollouts(model_path, family, processor, Path(args.output_dir) / "vllm-rollouts", url=rl.vllm_url,
                            python=rl.vllm_python, max_num_seqs=max(16, args.per_device_train_batch_size),
                            lora_rank=rank, gpu_memory_utilization=rl.vllm_gpu_memory_utilization)
    rollouts.check_policy(model)
    return rollouts
