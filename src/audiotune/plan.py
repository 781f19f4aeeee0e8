"""A memory plan before you rent the GPU: exact parameter counts and a per-GPU memory estimate.

Parameter counts are exact: the model is instantiated on PyTorch's ``meta`` device (shapes, no storage) from its
config: a local checkpoint's ``config.json``, the architecture of a main public checkpoint shipped with audiotune
(``models/published/*.json``, so planning works offline), or, with network access, a Hub id's ``config.json``.

Memory is an estimate, deliberately simple and documented so a user can check it:

- **weights**: every parameter in the compute dtype (bf16: 2 bytes); with QLoRA the language model's linear weights
  take 4.5 bits (NF4 plus double-quantised scales) and the rest stays bf16;
- **trainable state**: LoRA matrices are kept in fp32 by PEFT, so weights + gradients + AdamW's two moments are
  16 bytes per trainable parameter; full fine-tuning keeps the model in bf16 and adds a bf16 gradient and two fp32
  moments: 10 bytes per trainable parameter;
- **activations per sample** (bf16): ``tokens = audio placeholder tokens (the family's arithmetic) + text tokens``.
  Without gradient checkpointing each decoder layer keeps ≈ ``12·h + 2·kv + 5·i`` values per token (norm inputs,
  q/k/v, attention output, MLP gate/up/act/product, LoRA dropout copies; attention scores are not stored with
  SDPA/flash attention); with checkpointing only the layer input (``h`` per token per layer) plus one layer's
  activations during its recomputation. The logits add ``10·vocab`` bytes per token (bf16 logits, their fp32
  upcast for the loss and its gradient). The audio encoder stores nothing when it is frozen and no LoRA reaches it
  (audiotune's default); with the guide's target list it must keep its activations for the backward pass:
  ``windows × positions × layers × (12·d + 5·ffn)`` values;
- **overhead**: 1.5 GB for the CUDA context and kernels, and 10% of the card for allocator fragmentation.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .models.facts import bind, model_class_of
from .models.families import family_for_config
from .models.family import GUIDE_LORA_TARGETS, Family

PUBLISHED_DIR = Path(__file__).parent / "models" / "published"
GPU_SIZES_GB = (24, 48, 80)
CUDA_OVERHEAD_BYTES = 1.5e9
FRAGMENTATION = 0.10
BF16 = 2


def published_ids() -> list[str]:
    """Hub ids whose architecture audiotune ships (for offline planning)."""
    return sorted(path.stem.replace("--", "/") for path in PUBLISHED_DIR.glob("*.json"))


def load_architecture(model: str, source: str = "auto"):
    """``(config, source)``: a local folder, a shipped public architecture, or a Hub id's config (network).

    ``source``: ``auto`` (local, else shipped, else the Hub: offline a Hub lookup costs ~30 s of retries, so a
    shipped architecture wins), ``hub`` (always the Hub's config.json, e.g. for a variant with other sizes) or
    ``shipped``.
    """
    from transformers import AutoConfig

    if source not in ("auto", "hub", "shipped"):
        raise ConfigError(f"--source {source!r}: choose auto, hub or shipped.")
    path = Path(model)
    if (path / "config.json").exists():
        return AutoConfig.from_pretrained(str(path)), f"{path / 'config.json'}"
    shipped = PUBLISHED_DIR / f"{model.replace('/', '--')}.json"
    if source == "shipped" and not shipped.exists():
        raise ConfigError(f"No shipped architecture for {model!r}; shipped: {', '.join(published_ids())}.")
    if shipped.exists() and source != "hub":
        data = json.loads(shipped.read_text())
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        return AutoConfig.for_model(**data), f"published architecture shipped with audiotune ({shipped.name})"
    try:
        return AutoConfig.from_pretrained(model), f"{model} (config.json from the Hub)"
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{model!r}: no local config.json, no shipped architecture, and the Hub is not reachable ({error}). "
            f"Pass a checkpoint folder, or one of the shipped ids: {', '.join(published_ids())}.") from error


def instantiate_on_meta(config, family: Family):
    """``(model, notes)``: the model with parameter shapes but no storage (exact counts in milliseconds).

    A sub-model whose class needs a package this machine lacks (Gemma 3n's timm vision tower) is left out, and a
    note says so: planning audio fine-tuning must not depend on a vision library.
    """
    import importlib

    import torch
    import transformers

    model_class = getattr(transformers, model_class_of(family))
    notes: list[str] = []
    try:
        with torch.device("meta"):
            return model_class._from_config(config), notes
    except ImportError:
        pass
    module = importlib.import_module(model_class.__module__)
    original = module.AutoModel

    class _SkipUnavailable:
        @staticmethod
        def from_config(sub_config, *args, **kwargs):
            try:
                return original.from_config(sub_config, *args, **kwargs)
            except ImportError as error:
                first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
                notes.append(f"{sub_config.model_type} not counted: {first}")
                return torch.nn.Module()

    module.AutoModel = _SkipUnavailable
    try:
        with torch.device("meta"):
            return model_class._from_config(config), notes
    finally:
        module.AutoModel = original


def _lora_target_linears(model, targets: str | list[str]) -> list[tuple[str, int, int]]:
    """(name, in, out) of the linear layers PEFT would adapt for ``targets`` (its matching rules)."""
    import torch

    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if isinstance(targets, str):
            hit = re.fullmatch(targets, name) is not None
        else:
            hit = any(name == t or name.endswith(f".{t}") for t in targets)
        if hit:
            chosen.append((name, module.in_features, module.out_features))
    return chosen


@dataclass
class ParameterCounts:
    total: int
    language_model: int
    audio_encoder: int
    projector: int
    other_towers: int
    lm_linear: int  # parameters in the LM's LoRA-targetable linear layers (what QLoRA quantises)


@dataclass
class LoraCount:
    targets: str
    modules: int
    encoder_modules: int
    trainable: int


@dataclass
class MemoryRow:
    gradient_checkpointing: bool
    weights_gb: float
    trainable_state_gb: float
    activations_per_sample_gb: float
    total_gb: float  # for the requested batch, overhead included
    max_batch: dict[int, int]  # GPU size in GB → largest batch that fits (0: does not fit)


@dataclass
class Plan:
    model: str
    source: str
    family: str
    mode: str  # lora | qlora | full
    batch: int
    audio_seconds: float
    audio_tokens: int
    text_tokens: int
    parameters: ParameterCounts
    trainable: int
    lora_lm_only: LoraCount | None
    lora_guide: LoraCount | None
    memory: list[MemoryRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_parameters_by_part(model, family: Family) -> ParameterCounts:
    counts = {"encoder": 0, "projector": 0, "other": 0, "lm": 0}
    for name, parameter in model.named_parameters():
        if family.is_encoder_module(name):
            counts["encoder"] += parameter.numel()
        elif family.is_projector_module(name):
            counts["projector"] += parameter.numel()
        elif any(re.search(rf"(^|\.){re.escape(p)}(\.|$)", name) for p in family.other_tower_prefixes):
            counts["other"] += parameter.numel()
        else:
            counts["lm"] += parameter.numel()
    lm_linear = sum(i * o for _, i, o in _lora_target_linears(model, family.lm_lora_targets()))
    return ParameterCounts(total=sum(counts.values()), language_model=counts["lm"], audio_encoder=counts["encoder"],
                           projector=counts["projector"], other_towers=counts["other"], lm_linear=lm_linear)


def _lora_count(model, family: Family, targets: str | list[str], rank: int) -> LoraCount:
    linears = _lora_target_linears(model, targets)
    encoder = [n for n, _, _ in linears if family.is_encoder_module(n)]
    label = targets if isinstance(targets, str) else ",".join(targets)
    return LoraCount(label, len(linears), len(encoder), sum(rank * (i + o) for _, i, o in linears))


def _sub(config, *names: str):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _kv_width(text, h: int) -> int:
    """Keys plus values per token and layer; averaged over the layers where they differ (Gemma 4's global layers
    have wider heads, dots3's sliding ones more): transformers then refuses the config-wide value."""
    from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

    def width(layer) -> int:
        heads = int(layer.num_attention_heads)
        kv_heads = int(getattr(layer, "num_key_value_heads", None) or heads)
        return 2 * kv_heads * int(getattr(layer, "head_dim", None) or h // heads)

    try:
        return width(text)
    except AmbiguousGlobalPerLayerAttributeError:
        layers = [text.per_layer_config[i] for i in range(int(text.num_hidden_layers))]
        return round(sum(width(layer) for layer in layers) / len(layers))


def _lm_shape(config, family: Family) -> dict[str, int]:
    text = family.lm_config(config)
    h = int(text.hidden_size)
    intermediate = getattr(text, "intermediate_size", None) or 4 * h
    if isinstance(intermediate, (list, tuple)):  # per-layer sizes (Gemma 3n)
        intermediate = max(intermediate)
    return {"hidden": h, "kv": _kv_width(text, h), "intermediate": int(intermediate),
            "layers": int(text.num_hidden_layers), "vocab": int(text.vocab_size)}


def _encoder_shape(config, family: Family, seconds: float) -> dict[str, float]:
    audio = _sub(config, "audio_config", "encoder_config") or config
    d = int(_sub(audio, "hidden_size", "d_model", "encoder_embed_dim") or 1024)
    layers = int(_sub(audio, "num_hidden_layers", "encoder_layers", "num_layers") or 24)
    ffn = int(_sub(audio, "intermediate_size", "encoder_ffn_dim") or 4 * d)
    windows = max(1, math.ceil(min(seconds, family.max_audio_seconds) / family.window_seconds))
    positions = int(_sub(audio, "max_source_positions") or 2 * family.audio_tokens(family.window_seconds))
    return {"d": d, "layers": layers, "ffn": ffn, "windows": windows, "positions": positions}


def _activation_bytes(lm: dict[str, int], tokens: int, checkpointing: bool, encoder: dict[str, float] | None) -> float:
    per_layer_token = 12 * lm["hidden"] + lm["kv"] + 5 * lm["intermediate"]
    if checkpointing:
        decoder = BF16 * tokens * (lm["layers"] * lm["hidden"] + per_layer_token)
    else:
        decoder = BF16 * tokens * lm["layers"] * per_layer_token
    logits = 10 * tokens * lm["vocab"]
    encoder_bytes = 0.0
    if encoder is not None:  # the encoder must keep activations: LoRA reaches into it
        per = 12 * encoder["d"] + 5 * encoder["ffn"]
        per_position = encoder["layers"] * encoder["d"] + per if checkpointing else encoder["layers"] * per
        encoder_bytes = BF16 * encoder["windows"] * encoder["positions"] * per_position
    return decoder + logits + encoder_bytes


def make_plan(model: str, mode: str = "lora", batch: int = 4, audio_seconds: float = 10.0, text_tokens: int = 64,
              lora_r: int = 16, lora_targets: str | list[str] | None = None, source: str = "auto",
              train_audio_encoder: str = "none") -> Plan:
    """Parameter counts and the memory estimate for fine-tuning ``model`` (see the module docstring).
    ``train_audio_encoder``: lora adds the encoder's linears to the LoRA targets, full its whole tower (its weights'
    gradients and Adam moments count, and its activations are kept for the backward pass either way)."""
    from .models.loading import offline_facts  # torch: loaded when a plan is made, not when plan.py is imported

    if mode not in ("lora", "qlora", "full"):
        raise ConfigError(f"mode {mode!r}: choose lora, qlora or full.")
    if batch < 1 or audio_seconds <= 0:
        raise ConfigError("--batch must be ≥ 1 and --audio-seconds > 0.")
    config, source = load_architecture(model, source)
    config = getattr(config, "thinker_config", None) or config  # Qwen2.5-Omni's Hub layout: plan the thinker
    family = family_for_config(config)
    meta, notes = instantiate_on_meta(config, family)
    # Module facts from the planned model itself; the processor facts (audio tokens, window) from the family's
    # tiny checkpoint, which carries its published processor.
    family = offline_facts(bind(family, config, model=meta))
    parts = count_parameters_by_part(meta, family)
    lm_only = guide = None
    if mode == "full":
        trainable = parts.language_model
    else:
        targets = lora_targets if lora_targets is not None else family.lm_lora_targets()
        if train_audio_encoder == "lora":
            from .models.loading import encoder_linear_names

            chosen = [name for name, _, _ in _lora_target_linears(meta, targets)]
            targets = chosen + [n for n in encoder_linear_names(meta, family) if n not in chosen]
        lm_only = _lora_count(meta, family, targets, lora_r)
        guide = _lora_count(meta, family, GUIDE_LORA_TARGETS, lora_r)
        trainable = lm_only.trainable

    lm = _lm_shape(config, family)
    audio_tokens = family.audio_tokens(audio_seconds)
    tokens = audio_tokens + text_tokens
    if mode == "qlora":
        weights = BF16 * (parts.total - parts.lm_linear) + parts.lm_linear * 4.5 / 8
    else:
        weights = BF16 * parts.total
    if train_audio_encoder == "full":
        trainable += parts.audio_encoder
    state = trainable * (10 if mode == "full" else 16)
    encoder_trains = train_audio_encoder == "full" or (lm_only is not None and lm_only.encoder_modules > 0)
    encoder = _encoder_shape(config, family, audio_seconds) if encoder_trains else None
    rows = []
    for checkpointing in (True, False):
        per_sample = _activation_bytes(lm, tokens, checkpointing, encoder)
        fixed = weights + state + CUDA_OVERHEAD_BYTES
        fits = {}
        for size in GPU_SIZES_GB:
            usable = size * 1e9 * (1 - FRAGMENTATION) - fixed
            fits[size] = max(0, int(usable // per_sample))
        rows.append(MemoryRow(checkpointing, weights / 1e9, state / 1e9, per_sample / 1e9,
                              (fixed + batch * per_sample) / 1e9 / (1 - FRAGMENTATION), fits))
    return Plan(model=model, source=source, family=family.name, mode=mode, batch=batch, audio_seconds=audio_seconds,
                audio_tokens=audio_tokens, text_tokens=text_tokens, parameters=parts, trainable=trainable,
                lora_lm_only=lm_only, lora_guide=guide, memory=rows, notes=notes)
