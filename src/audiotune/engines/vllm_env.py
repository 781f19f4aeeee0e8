"""What any vLLM process of audiotune's needs: its interpreter, its environment, and adapters under its names.

vLLM pins its own torch and transformers, so it lives in a separate environment (``make vllm-env`` builds
``.venv-vllm``; on a GPU machine ``pip install vllm`` there) and audiotune talks to it only through a child
process: the offline engine's worker (:mod:`.vllm_engine`) or vLLM's OpenAI server
(:mod:`audiotune.serve.vllm_server`).

Adapters need one conversion. PEFT saves LoRA weights under transformers' *in-memory* module names
(``model.language_model.layers.0...``), while vLLM names modules as the checkpoint on disk does
(``language_model.model.layers.0...``) and silently ignores LoRA weights it cannot place. :func:`export_adapter`
rewrites the names with transformers' own reverse conversion (the one ``save_pretrained`` applies to the base
weights), lists ``target_modules`` by name (vLLM takes no regex), and checks every module against the base
checkpoint's weights when they are on disk.

Some adapters vLLM's LoRA cannot apply: one that saves whole modules (``modules_to_save``, e.g. a trained projector),
puts LoRA on the audio encoder (vLLM applies LoRA to the language model only) or on the LM head or embeddings.
:func:`vllm_adapters` decides per adapter: LM-only LoRA is exported for vLLM's LoRA path; any other is merged into
a copy of the base (:func:`merged_copy`, cached by a hash of the adapter's files and the base's identity), which vLLM
loads as a model of its own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from ..models.family import Family

logger = logging.getLogger(__name__)

VLLM_ENV_DIR = ".venv-vllm"  # what `make vllm-env` builds
VLLM_PYTHON_ENV = "AUDIOTUNE_VLLM_PYTHON"
VLLM_API_KEY_ENV = "VLLM_API_KEY"  # what vLLM's server reads when it gets no --api-key
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


def require_vllm_family(model: str, family: "Family | None" = None) -> "Family":
    """The model's family (``family`` when the caller resolved it), or a clear error before anything starts if vLLM
    cannot run it."""
    if family is None:
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
    return path, lora_rank(path)


def export_adapter(model: str, adapter: str | Path, out: str | Path, family: "Family | None" = None) -> Path:
    """A copy of ``adapter`` that vLLM applies: checkpoint module names, explicit ``target_modules``."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.core_model_loading import revert_weight_conversion

    from ..plan import instantiate_on_meta, load_architecture

    adapter, out = Path(adapter), Path(out)
    weights_file = adapter / "adapter_model.safetensors"
    check_adapter_files(adapter)
    family = require_vllm_family(model, family)
    why = merge_reason(adapter, family)
    if why:  # vLLM would drop these weights silently and serve the untrained modules
        raise ConfigError(f"{adapter}: {why}, which vLLM's LoRA does not load; serve and eval/infer --backend vllm "
                          "merge it by themselves (or run `audiotune merge` and pass the merged folder).")
    config = json.loads((adapter / "adapter_config.json").read_text())
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


def merge_reason(adapter: str | Path, family: "Family") -> str | None:
    """Why vLLM's LoRA cannot apply ``adapter`` (``None``: it can): it saves whole modules (``modules_to_save``, e.g.
    a trained projector), has LoRA on the audio encoder, or on the LM head or embeddings. The one rule
    :func:`export_adapter` refuses by, :func:`vllm_adapters` merges by and GRPO's vLLM rollouts refuse by."""
    from safetensors import safe_open

    adapter = Path(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("modules_to_save"):
        return f"it saves whole modules (modules_to_save: {config['modules_to_save']}, e.g. a trained projector)"
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as handle:
        modules = {k.removeprefix("base_model.model.").split(".lora_", 1)[0] for k in handle.keys()}
    in_encoder = sorted(m for m in modules if family.is_encoder_module(m))
    if in_encoder:
        return f"it trains the audio encoder ({len(in_encoder)} LoRA modules, first: {in_encoder[0]})"
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    # vLLM takes LoRA on the LM head or the embeddings only where its model code lists them (``embedding_modules``;
    # its Qwen2 LM, AF3's, does not: loading such an adapter fails with "expected target modules in ...").
    on_embeddings = sorted(m for m in modules if set(m.split(".")) & set(EMBEDDING_LAYER_NAMES))
    if on_embeddings:
        return f"it puts LoRA on the LM head or the token embeddings ({on_embeddings[0]})"
    return None


@dataclass
class VllmAdapters:
    """How vLLM serves each named adapter: ``lora`` (exported folders, applied per request on the base) and
    ``merged`` (checkpoint folders, each one vLLM model of its own)."""

    audio_lora: tuple[str, int] | None = None  # the checkpoint's own audio LoRA (modality_lora), on the base only
    lora: dict[str, str] = field(default_factory=dict)
    merged: dict[str, str] = field(default_factory=dict)


def vllm_adapters(model: str, adapters: dict[str, str], family: "Family", folder: str | Path) -> VllmAdapters:
    """Each adapter on the path vLLM can serve it by: LM-only LoRA exported into ``folder``, any other merged into a
    cached copy of the base (:func:`merged_copy`). The one place that decides; the offline engine and the server
    both ask it."""
    from ..models.loading import modality_adapter_path

    # A family whose vLLM code takes no LoRA (Qwen2-Audio), or whose checkpoint's own audio LoRA takes vLLM's one
    # LoRA per request (Granite Speech 3.3), serves every adapter merged: the merged copy holds both LoRAs.
    no_lora_path = (f"vLLM's {family.name} model code takes no LoRA (it does not implement SupportsLoRA)"
                    if not family.vllm_lora else
                    "the checkpoint's own audio LoRA takes the one LoRA vLLM applies per request"
                    if adapters and modality_adapter_path(model, family) is not None else None)
    reasons = {}
    for name, path in adapters.items():
        check_adapter_files(path)
        reasons[name] = merge_reason(path, family) or no_lora_path
    plan = VllmAdapters(audio_lora=modality_lora(model, family, [adapters[n] for n, why in reasons.items() if not why]))
    for name, path in adapters.items():
        if reasons[name]:
            logger.info("adapter %s (%s): %s, which vLLM's LoRA does not load; serving a merged copy", name, path,
                        reasons[name])
            plan.merged[name] = str(merged_copy(model, path))
        else:
            plan.lora[name] = str(export_adapter(model, path, Path(folder) / name, family))
    return plan


def check_adapter_files(adapter: str | Path) -> None:
    adapter = Path(adapter)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / name).is_file():
            raise CheckpointError(f"{adapter}: no {name}; pass a LoRA folder saved by audiotune train.")


def merged_copy(model: str, adapter: str | Path, root: str | Path | None = None) -> Path:
    """``adapter`` merged into ``model`` (float32, as ``audiotune merge`` writes), in the cache: made once per adapter
    and base, reused while neither changes.

    The folder is ``<cache>/vllm-merged/<key>``, the key a hash of the adapter folder's files (names and bytes:
    a retrained adapter gets a new copy) and of the base's identity (a local folder: its path and its files' names,
    sizes and modification times; a Hub id: the id). The merge writes into a temporary sibling renamed into place
    when complete, so a killed merge never leaves a folder that is later taken for a finished one.
    """
    from ..cache_dir import cache_root
    from ..merge import merge_adapter

    adapter = Path(adapter)
    key = hashlib.sha256()
    base = Path(model)
    if base.is_dir():
        key.update(str(base.resolve()).encode() + b"\0")
        for file in sorted(p for p in base.iterdir() if p.is_file()):
            stat = file.stat()
            key.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    else:
        key.update(model.encode() + b"\0")
    for file in sorted(p for p in adapter.iterdir() if p.is_file()):
        key.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    out = Path(root or cache_root() / "vllm-merged") / key.hexdigest()[:24]
    if (out / "config.json").is_file():
        logger.info("merged copy of %s reused: %s", adapter, out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{out.name}.tmp*"):  # left by a merge that was killed
        pid = stale.name.rsplit(".tmp", 1)[1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("merging adapter %s with base %s for vLLM into %s", adapter, model, out)
    try:
        merge_adapter(model, str(adapter), tmp)
        tmp.rename(out)
    except OSError:
        if not (out / "config.json").is_file():  # not another process that finished the same merge first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


# The values vLLM's --max-lora-rank takes (vllm-project/vllm, vllm/config/lora.py, ``MaxLoRARanks``).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank(adapter: str | Path) -> int:
    """The ``--max-lora-rank`` vLLM needs for ``adapter``: its ``r``, rounded up to a value vLLM takes."""
    try:
        rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16))
    except (OSError, ValueError):
        raise ConfigError(f"{adapter}: cannot read adapter_config.json to size vLLM's --max-lora-rank.") from None
    return vllm_max_lora_rank(rank)


def vllm_max_lora_rank(rank: int) -> int:
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError(f"LoRA rank {rank}: vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}; train a lower --lora-r.")


def on_cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def cpu_arguments(given: Sequence[str]) -> list[str]:
    """vLLM's CPU backend here: float32 (no bf16 kernels assumed), eager (compilation takes minutes), and no chunked
    prefill: a seeded request whose prompt is split across engine steps makes vLLM 0.32 rewind its generator
    (``gpu_model_runner._bookkeeping_sync``: ``gen.set_offset``), which a CPU generator cannot do, and the engine dies
    ("CPU Generator does not use offset"); GRPO's rollouts seed every request. Unchunked, a step must hold a whole
    prompt, so ``--max-num-batched-tokens`` is the model length."""
    args = []
    if "--dtype" not in given:
        args += ["--dtype", "float32"]
    if "--enforce-eager" not in given:
        args.append("--enforce-eager")
    model_len = given[list(given).index("--max-model-len") + 1] if "--max-model-len" in given else "4096"
    if "--max-model-len" not in given:
        args += ["--max-model-len", model_len]
    if not {"--enable-chunked-prefill", "--no-enable-chunked-prefill"} & set(given):
        args.append("--no-enable-chunked-prefill")
        if "--max-num-batched-tokens" not in given:
            args += ["--max-num-batched-tokens", model_len]
    return args


def vllm_environment(api_key: str | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours, the key as ``VLLM_API_KEY``, vLLM's internal sockets on loopback.

    A child's environment is readable only by its user (``/proc/PID/environ``), unlike its command line.
    """
    env = dict(os.environ if environ is None else environ)
    if api_key is not None:
        env[VLLM_API_KEY_ENV] = api_key
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; only read by the CPU backend
    if on_cpu_only():
        # The model runs in the engine-core process instead of a worker process of its own (an offline run: in
        # this one). A separate worker serves tensor parallelism across GPUs; on one CPU it is a third interpreter
        # start, 12-17 s of every server or offline run on 2 cores. The server keeps its engine core apart, so
        # its HTTP loop never waits on the model.
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return env
