"""vLLM behind audiotune's commands: its own interpreter, adapters under the checkpoint's names, one child process.

vLLM pins its own torch and transformers, so it lives in a separate environment (``make vllm-env`` builds
``.venv-vllm``; on a GPU machine ``pip install vllm`` there) and audiotune talks to it only through a child
process: ``python -m vllm.entrypoints.openai.api_server`` for ``serve``, and :mod:`.vllm_worker` (a standalone
script, no audiotune imports) for offline batched generation in ``eval`` and ``infer``.

Adapters need one conversion. PEFT saves LoRA weights under transformers' *in-memory* module names
(``model.language_model.layers.0...``), while vLLM names modules as the checkpoint on disk does
(``language_model.model.layers.0...``) and silently ignores LoRA weights it cannot place. :func:`export_adapter`
rewrites the names with transformers' own reverse conversion (the one ``save_pretrained`` applies to the base
weights), lists ``target_modules`` by name (vLLM takes no regex), and checks every module against the base
checkpoint's weights when they are on disk.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from ..data.tasks import Example
    from ..generate import GenerationSettings
    from ..models.families import Family
    from ..config import ServeConfig

logger = logging.getLogger(__name__)

VLLM_ENV_DIR = ".venv-vllm"  # what `make vllm-env` builds
VLLM_PYTHON_ENV = "AUDIOTUNE_VLLM_PYTHON"
VLLM_API_KEY_ENV = "VLLM_API_KEY"  # what vLLM's server reads when it gets no --api-key
WORKER = Path(__file__).with_name("vllm_worker.py")
MISSING = ("--backend vllm needs vLLM in its own environment: run `make vllm-env` (this repository, CPU) or "
           "`pip install vllm` in a GPU environment, then pass its interpreter with --vllm-python or ${env}.")


def find_vllm_python(explicit: str | None = None) -> str:
    """The interpreter that runs vLLM: ``explicit``, ``$AUDIOTUNE_VLLM_PYTHON``, ``./.venv-vllm``, or this one."""
    for candidate, source in ((explicit, "--vllm-python"), (os.environ.get(VLLM_PYTHON_ENV), f"${VLLM_PYTHON_ENV}")):
        if candidate:
            if not Path(candidate).exists() and shutil.which(candidate) is None:
                raise ConfigError(f"{source} {candidate}: no such interpreter. " + MISSING.format(env=VLLM_PYTHON_ENV))
            return candidate
    local = Path(VLLM_ENV_DIR) / "bin" / "python"
    if local.exists():
        return str(local.absolute())
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise ConfigError(MISSING.format(env=VLLM_PYTHON_ENV))


def require_vllm_family(model: str) -> "Family":
    """The model's family, or a clear error before anything starts if vLLM cannot run it."""
    from ..models.loading import resolve_family

    family = resolve_family(model)
    if not family.vllm_supported:
        why = f" ({family.vllm_note})" if family.vllm_note else ""
        raise ConfigError(f"vLLM does not serve the {family.name} family{why}; use --backend transformers.")
    return family


# --- adapters -------------------------------------------------------------------------------------------------

def modality_lora(model: str, family: "Family", adapters: Sequence[str] = ()) -> tuple[str, int] | None:
    """The checkpoint's own audio LoRA (Granite Speech 3.3's) as vLLM applies it: per request, to every request
    with audio (``--default-mm-loras``, vLLM docs/features/lora.md), never folded into the weights. vLLM applies
    one LoRA per request, so an audiotune adapter (trained over the folded one) cannot go on top: merge it first.
    A family whose vLLM code takes no LoRA at all refuses ``adapters`` the same way, before an engine starts."""
    from ..models.loading import modality_adapter_path

    if adapters and not family.vllm_lora:
        raise ConfigError(
            f"vLLM cannot apply a LoRA adapter to the {family.name} family (its vLLM model code does not implement "
            f"SupportsLoRA). Merge first (audiotune merge --model {model} --adapter ADAPTER --out MERGED) and "
            "serve the merged folder.")
    path = modality_adapter_path(model, family)
    if path is None:
        return None
    if adapters:
        raise ConfigError(
            f"{model} ships its own audio LoRA ({path}) and vLLM applies one LoRA per request, so it cannot stack "
            f"{', '.join(map(str, adapters))} on it. Merge first (audiotune merge --model {model} --adapter "
            "ADAPTER --out MERGED) and serve the merged folder, which holds both.")
    return path, _lora_rank(path)


def export_adapter(model: str, adapter: str | Path, out: str | Path) -> Path:
    """A copy of ``adapter`` that vLLM applies: checkpoint module names, explicit ``target_modules``."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.core_model_loading import revert_weight_conversion

    from ..plan import instantiate_on_meta, load_architecture

    adapter, out = Path(adapter), Path(out)
    weights_file = adapter / "adapter_model.safetensors"
    if not weights_file.exists():
        raise CheckpointError(f"{adapter}: no adapter_model.safetensors; pass a LoRA folder saved by audiotune train.")
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("modules_to_save"):
        raise ConfigError(f"{adapter}: vLLM's LoRA cannot load modules_to_save ({config['modules_to_save']}), e.g. a "
                          "trained projector; merge it (`audiotune merge`) and serve the merged folder.")
    family = require_vllm_family(model)
    architecture, _ = load_architecture(model)
    meta_model, _ = instantiate_on_meta(architecture, family)
    prefix = "base_model.model."
    weights = load_file(weights_file)
    inner = {k.removeprefix(prefix): v for k, v in weights.items()}
    renamed = revert_weight_conversion(meta_model, inner)
    if len(renamed) != len(inner):
        raise CheckpointError(f"{adapter}: {len(inner)} LoRA tensors became {len(renamed)} under the checkpoint's "
                              "names (a fused layer?); merge the adapter and serve the merged model instead.")
    modules = {key.split(".lora_", 1)[0] for key in renamed}
    base_keys = _checkpoint_keys(Path(model))
    if base_keys is not None:
        unknown = sorted(m for m in modules if f"{m}.weight" not in base_keys)
        if unknown:
            raise CheckpointError(f"{adapter}: {len(unknown)} LoRA modules have no weight in {model} "
                                  f"(first: {unknown[0]}); was it trained on another base?")
    out.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.to(torch.float32).contiguous() for k, v in renamed.items()},
              out / "adapter_model.safetensors")
    config["target_modules"] = sorted({m.rsplit(".", 1)[-1] for m in modules})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def _checkpoint_keys(folder: Path) -> set[str] | None:
    """Weight names of a local safetensors checkpoint (``None`` for a Hub id: nothing to check against)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    single = folder / "model.safetensors"
    if not single.exists():
        return None
    with safe_open(str(single), "pt") as handle:
        return set(handle.keys())


def _lora_rank(adapter: str | Path) -> int:
    try:
        return int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16))
    except (OSError, ValueError):
        raise ConfigError(f"{adapter}: cannot read adapter_config.json to size vLLM's --max-lora-rank.") from None


# --- the server ---------------------------------------------------------------------------------------------------

def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def cpu_arguments(given: Sequence[str]) -> list[str]:
    """vLLM's CPU backend here: float32 (no bf16 kernels assumed), eager (compilation takes minutes)."""
    args = []
    if "--dtype" not in given:
        args += ["--dtype", "float32"]
    if "--enforce-eager" not in given:
        args.append("--enforce-eager")
    if "--max-model-len" not in given:
        args += ["--max-model-len", "4096"]
    return args


def vllm_command(cfg: "ServeConfig", python: str = "python", adapters: dict[str, str] | None = None,
                 on_cpu: bool | None = None) -> list[str]:
    """The vLLM server command equivalent to ``cfg``: adapters (exported), limits, served name; never the key.

    The API key is not on it (every user sees a command line in ``ps``): :func:`vllm_environment` passes it.
    """
    family = require_vllm_family(cfg.model)
    adapters = cfg.adapter_paths if adapters is None else adapters
    audio_lora = modality_lora(cfg.model, family, list(adapters.values()))
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", cfg.model,
               "--host", cfg.host, "--port", str(cfg.port),
               "--served-model-name", cfg.served_name or Path(cfg.model.rstrip("/")).name,
               "--limit-mm-per-prompt", json.dumps({"audio": 1}),
               "--max-num-seqs", str(cfg.max_batch_size)]
    if adapters:
        command += ["--enable-lora", "--max-lora-rank", str(max(_lora_rank(p) for p in adapters.values())),
                    "--max-loras", str(len(adapters)),
                    "--lora-modules", *[f"{name}={path}" for name, path in adapters.items()]]
    if audio_lora:
        command += ["--enable-lora", "--max-lora-rank", str(audio_lora[1]),
                    "--default-mm-loras", json.dumps({"audio": audio_lora[0]})]
    if cfg.allow_remote_audio:  # validate() has required the hosts: vLLM cannot refuse inside addresses itself
        command += ["--allowed-media-domains", *cfg.remote_audio_allow_hosts]
    # A request's unset max_tokens/temperature/top_p get our settings, not the checkpoint's generation_config
    # (vLLM reads max_new_tokens there as the default max_tokens).
    defaults = vllm_sampling(cfg)
    defaults.pop("max_tokens")
    defaults["max_new_tokens"] = cfg.request_default_tokens
    command += ["--override-generation-config", json.dumps(defaults)]
    if _on_cpu() if on_cpu is None else on_cpu:
        command += cpu_arguments(cfg.vllm_args)
    return command + list(cfg.vllm_args)


def vllm_environment(api_key: str | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours, the key as ``VLLM_API_KEY``, vLLM's internal sockets on loopback.

    A child's environment is readable only by its user (``/proc/PID/environ``), unlike its command line.
    """
    env = dict(os.environ if environ is None else environ)
    if api_key is not None:
        env[VLLM_API_KEY_ENV] = api_key
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; only read by the CPU backend
    return env


class VllmServer:
    """A vLLM server child: exported adapters in a temporary folder, started, healthy, stopped (SIGTERM)."""

    def __init__(self, cfg: "ServeConfig", api_key: str | None = None, python: str | None = None) -> None:
        require_vllm_family(cfg.model)
        self.cfg, self.api_key = cfg, api_key
        self.python = find_vllm_python(python or cfg.vllm_python)
        self.process: subprocess.Popen | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="audiotune-vllm-"))
        self.adapters = {name: str(export_adapter(cfg.model, path, self._folder / name))
                         for name, path in cfg.adapter_paths.items()}
        self.command = vllm_command(cfg, self.python, self.adapters)

    def start(self, timeout_s: float = 900.0) -> "VllmServer":
        import httpx

        logger.info("starting: %s", " ".join(self.command))
        # Its own process group, so that a child that ignores SIGTERM can be killed with its engine processes.
        self.process = subprocess.Popen(self.command, env=vllm_environment(self.api_key), start_new_session=True)
        url = f"http://{self.cfg.host}:{self.cfg.port}/health"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise ConfigError(f"vLLM exited with code {self.process.returncode} before answering; see its log "
                                  "above.")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    logger.info("vLLM answers on %s", url)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise ConfigError(f"vLLM did not answer on {url} within {timeout_s:.0f} s.")

    def wait(self) -> int:
        """Stay attached; SIGTERM/SIGINT to us stops the child first (vLLM drains its requests on SIGTERM)."""
        assert self.process is not None
        process = self.process

        def forward(*_: Any) -> None:  # only signal here: waiting inside a handler would deadlock Popen.wait
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self.process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --- offline generation (eval, infer) -----------------------------------------------------------------------------

def openai_messages(example: "Example", rate: int) -> list[dict[str, Any]]:
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


def vllm_sampling(settings: "GenerationSettings") -> dict[str, Any]:
    """Our generation settings in vLLM's ``SamplingParams`` names: one mapping for the offline engine (eval, infer)
    and the server's request defaults, so ``--backend vllm`` answers as ``--backend transformers`` does."""
    if settings.no_repeat_ngram_size:
        raise ConfigError("--backend vllm has no no_repeat_ngram_size; use --backend transformers for it.")
    if settings.num_beams != 1:
        raise ConfigError("--backend vllm: beam search (--num-beams) is not wired to vLLM; use --backend transformers.")
    return {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature if settings.do_sample else 0.0,
            "top_p": settings.top_p if settings.do_sample else 1.0, "repetition_penalty": settings.repetition_penalty}


def vllm_generate(model: str, examples: Sequence["Example"], settings: "GenerationSettings",
                  adapter: str | None = None, python: str | None = None, batch_size: int = 64,
                  extra_args: Sequence[str] = (), timings: dict[str, float] | None = None) -> list[str]:
    """Answers for ``examples`` from vLLM's offline engine (one child process), in their order.

    ``timings`` (if given) receives ``load_seconds`` (engine start) and ``generate_seconds``.
    """
    family = require_vllm_family(model)
    audio_lora = modality_lora(model, family, [adapter] if adapter else [])
    sampling = vllm_sampling(settings)
    interpreter = find_vllm_python(python)
    with tempfile.TemporaryDirectory(prefix="audiotune-vllm-") as folder:
        work = Path(folder)
        exported = str(export_adapter(model, adapter, work / "adapter")) if adapter else None
        request = {"model": model, "adapter": exported,
                   "lora_rank": _lora_rank(adapter) if adapter else audio_lora[1] if audio_lora else None,
                   "default_mm_loras": {"audio": audio_lora[0]} if audio_lora else None,
                   "max_num_seqs": batch_size, "cpu": _on_cpu(), "extra_args": list(extra_args),
                   "sampling": sampling,
                   "conversations": [openai_messages(e, family.sampling_rate) for e in examples]}
        (work / "request.json").write_text(json.dumps(request))
        run = subprocess.run([interpreter, str(WORKER), str(work / "request.json"), str(work / "answers.json")],
                             env=vllm_environment(None), capture_output=True, text=True)
        if run.returncode != 0:
            tail = "\n".join(run.stderr.strip().splitlines()[-15:])
            raise ConfigError(f"vLLM generation failed (exit {run.returncode}); its last lines:\n{tail}")
        result = json.loads((work / "answers.json").read_text())
    answers = result["answers"]
    if timings is not None:
        timings.update(load_seconds=result["load_seconds"], generate_seconds=result["generate_seconds"])
    logger.info("vLLM: engine loaded in %.1f s, %d answers in %.1f s", result["load_seconds"], len(answers),
                result["generate_seconds"])
    if len(answers) != len(examples):
        raise ConfigError(f"vLLM returned {len(answers)} answers for {len(examples)} examples.")
    return [a.strip() for a in answers]
