"""A checkpoint's facts, read from the checkpoint itself: what binds a :class:`~.family.Family` entry.

Why inferred: transformers already knows most per-architecture facts, and restating them per family is what kept
new architectures out for months. :func:`bind` fills every fact an entry leaves unset (:func:`infer_facts`):

- the audio placeholder from the processor (``processor.audio_token``);
- the sampling rate and window from its feature extractor (``sampling_rate``, ``chunk_length``/``n_samples``);
- the language model, audio tower, projector and any other tower from the model's module tree (``get_decoder()``
  and the conventional attribute names), built on the meta device from the config;
- the language model's linear layers (LoRA's default targets) by walking that submodule;
- the assistant header and end-of-turn token by rendering the chat template around a sentinel reply;
- the number of audio tokens a clip becomes, by running the processor on a silent clip of that length.

A checkpoint whose processor follows transformers' conventions therefore needs **no registry entry**
(``families.py``): its ``model_type`` becomes a family of its own, with every fact inferred. What cannot be inferred
is an override on the entry, and :func:`_cannot_infer` says which one to write.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..errors import ModelFamilyError
from .family import FACTS, Family, has_prefix

# Module-tree conventions of transformers' audio LLMs (attribute names of the model's inner ``model``).
_AUDIO_TOWER_NAMES = ("audio_tower", "audio_encoder", "audio_model", "encoder", "acoustic_tokenizer_encoder",
                      "speech_encoder", "audio", "embed_tokens_extend")
_PROJECTOR_WORDS = ("projector", "multi_modal_projector", "embed_audio", "audio_projection", "connector",
                    "adapter", "proj")
_OTHER_TOWER_WORDS = ("vision", "visual", "image", "video", "talker", "token2wav", "code2wav", "semantic")
SENTINEL = "Zq7Sentinel"


def _cannot_infer(family: Family, fact: str, why: str) -> ModelFamilyError:
    return ModelFamilyError(
        f"audiotune cannot infer {fact!r} for model_type {family.model_types[0]!r}: {why}. Add an override to "
        f"audiotune/models/families.py: Family(name={family.name!r}, model_types={family.model_types!r}, "
        f"{fact}=...), and add it to FAMILIES (docs/models.md lists what each family overrides).")


def model_class_for(model_type: str) -> str | None:
    """The transformers class that writes text from audio for ``model_type`` (auto mappings, multimodal first)."""
    from transformers.models.auto import modeling_auto as auto

    for mapping in ("MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
                    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
                    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"):
        names = getattr(auto, mapping, {})
        if model_type in names:
            value = names[model_type]
            return value[0] if isinstance(value, (list, tuple)) else value
    return None


def feature_extractor_of(processor):
    """The processor part that turns waves into features (``feature_extractor`` or ``audio_processor``)."""
    for name in ("feature_extractor", "audio_processor"):
        part = getattr(processor, name, None)
        if part is not None and hasattr(part, "sampling_rate"):
            return part
    return None


def meta_model(model_class: str, config):
    """The model with shapes but no storage, for reading its module tree."""
    import torch
    import transformers

    with torch.device("meta"):
        return getattr(transformers, model_class)._from_config(config)


def _module_name(model, module) -> str | None:
    return next((name for name, m in model.named_modules() if m is module), None)


def infer_module_facts(family: Family, model) -> dict[str, Any]:
    """LM, audio tower, projector and other towers from the module tree; the LM's linear layers."""
    import torch

    facts: dict[str, Any] = {}
    decoder = None
    try:
        decoder = model.get_decoder()
    except Exception:  # noqa: BLE001  (transformers raises a bare error for models it cannot tell)
        decoder = None
    # The towers sit beside the decoder; a decoder that is itself a whole causal LM (Nemotron Omni's
    # ``language_model``) is entered once more so that its head is no LoRA target.
    outer = _module_name(model, decoder) if decoder is not None else None
    inner = getattr(decoder, "get_decoder", lambda: None)() if outer else None
    if inner is not None and inner is not decoder:
        decoder = inner
    lm = family.lm_prefix or (_module_name(model, decoder) if decoder is not None else None)
    if not lm:
        raise _cannot_infer(family, "lm_prefix", "model.get_decoder() names no language-model submodule")
    facts["lm_prefix"] = lm
    beside = outer if outer and lm.startswith(f"{outer}.") else lm
    parent = model.get_submodule(beside.rsplit(".", 1)[0]) if "." in beside else model
    siblings = {f"{beside.rsplit('.', 1)[0]}.{n}" if "." in beside else n: m for n, m in parent.named_children()}
    encoders, projectors, others = [], [], []
    for name, module in siblings.items():
        short = name.rsplit(".", 1)[-1]
        if name == beside or short in ("lm_head", "embed_tokens") or not list(module.parameters()):
            continue
        if any(w in short for w in _OTHER_TOWER_WORDS):
            others.append(name)
        elif short in _AUDIO_TOWER_NAMES or ("audio" in short and not any(w in short for w in _PROJECTOR_WORDS)):
            encoders.append(name)
        elif any(w in short for w in _PROJECTOR_WORDS) or "audio" in short:
            projectors.append(name)
    facts["encoder_prefixes"] = tuple(encoders)
    facts["projector_prefixes"] = tuple(projectors)
    facts["other_tower_prefixes"] = tuple(others)
    facts["audio_tower_attribute"] = encoders[0].rsplit(".", 1)[-1] if encoders else None
    towers = [*(family.encoder_prefixes or encoders), *(family.projector_prefixes or projectors),
              *(family.other_tower_prefixes or others)]
    paths = set()
    for name, module in model.get_submodule(lm).named_modules():
        full = f"{lm}.{name}"
        if isinstance(module, torch.nn.Linear) and not any(has_prefix(full, t) for t in towers):
            paths.add(re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(name)))
    if not paths:
        raise _cannot_infer(family, "lm_lora_regex", f"no nn.Linear under {lm}")
    facts["lm_lora_regex"] = rf"(.*\.)?{re.escape(lm)}\.({'|'.join(sorted(paths))})"
    return facts


def _render(processor, messages, **kwargs) -> str:
    return processor.apply_chat_template(messages, tokenize=False, **kwargs)


def infer_template_facts(family: Family, processor) -> dict[str, Any]:
    """Assistant header and end of turn: the chat template rendered around a sentinel reply."""
    user = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    reply = [*user, {"role": "assistant", "content": [{"type": "text", "text": SENTINEL}]}]
    try:
        prompt = _render(processor, user, add_generation_prompt=True)
        plain = _render(processor, user, add_generation_prompt=False)
        full = _render(processor, reply)
    except Exception as error:  # noqa: BLE001  (templates raise anything: jinja errors, ValueError)
        raise _cannot_infer(family, "assistant_header", f"its chat template cannot render a reply ({error})") \
            from error
    eos = getattr(processor.tokenizer, "eos_token", None)
    if eos and not prompt.startswith(plain) and plain.endswith(eos):  # a template that closes a finished chat
        plain = plain[: -len(eos)]
    if not prompt.startswith(plain) or SENTINEL not in full:
        raise _cannot_infer(family, "assistant_header", "the generation prompt does not extend the rendered user "
                            "turn")
    header = prompt[len(plain):]
    before, after = full.split(SENTINEL, 1)
    if not before.endswith(header.rstrip()) and not before.rstrip().endswith(header.strip()):
        raise _cannot_infer(family, "assistant_header", f"the reply does not follow the generation prompt "
                            f"{header!r}")
    tokenizer = processor.tokenizer
    facts: dict[str, Any] = {"assistant_header": header.strip() if before.endswith(header.strip()) else header}
    closing = after.strip()
    if closing:
        # Added tokens marked special count too: a processor may replace the tokenizer's extra special tokens
        # (Gemma 4's adds its video token that way) and the turn markers then stay special only there.
        added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
        special = sorted({*getattr(tokenizer, "all_special_tokens", []), *added}, key=len, reverse=True)
        facts["end_of_turn"] = next((t for t in special if t and closing.startswith(t)), None)
        facts["template_closes_turns"] = True
        if facts["end_of_turn"] is None:
            raise _cannot_infer(family, "end_of_turn", f"the reply is closed by {closing[:20]!r}, no special token")
    else:
        facts["template_closes_turns"] = False
        facts["end_of_turn"] = tokenizer.eos_token
    return facts


def _measured_audio_tokens(family: Family, processor, audio_token: str, rate: int) -> Callable[[float], int]:
    """The processor's own count: a silent clip of that length through the processor, placeholders counted.

    Every distinct length is one processor call (a length-grouped sampler or packing asks for each clip's), so where
    the count comes from the frame mask alone (``encoder_frames.feature_samples``) the features are computed only as
    far as the clip reaches, not over a whole 30 s (Qwen2.5-Omni: 300 s) window."""
    import numpy as np

    from .encoder_frames import feature_samples

    audio_id = processor.tokenizer.convert_tokens_to_ids(audio_token)
    extractor = feature_extractor_of(processor)
    cache: dict[int, int] = {}

    def count(seconds: float) -> int:
        samples = max(1, round(seconds * rate))
        if samples not in cache:
            span = feature_samples(family, extractor, [samples], "valid")
            options = {"audio_kwargs": {"max_length": span}} if span else {}
            batch = processor(text=[audio_token], audio=[np.zeros(samples, dtype=np.float32)], return_tensors="pt",
                              **options)
            cache[samples] = int((batch["input_ids"] == audio_id).sum())
        return cache[samples]

    return count


def infer_processor_facts(family: Family, processor, facts: dict[str, Any]) -> dict[str, Any]:
    """Audio token, rate, window and token count from the processor and its feature extractor."""
    out: dict[str, Any] = {}
    audio_token = family.audio_token or getattr(processor, "audio_token", None) \
        or getattr(processor.tokenizer, "audio_token", None)
    if not audio_token:
        raise _cannot_infer(family, "audio_token", f"{type(processor).__name__} has no audio_token")
    out["audio_token"] = audio_token
    extractor = feature_extractor_of(processor)
    if extractor is None:
        raise _cannot_infer(family, "sampling_rate", f"{type(processor).__name__} has no feature extractor")
    rate = family.sampling_rate or int(extractor.sampling_rate)
    out["sampling_rate"] = rate
    window = None
    if getattr(extractor, "chunk_length", None):
        window = float(extractor.chunk_length)
    elif getattr(extractor, "n_samples", None):
        window = extractor.n_samples / rate
    out["window_seconds"] = window or 30.0
    max_len = getattr(processor, "max_audio_len", None)
    out["max_audio_seconds"] = float(max_len) if max_len else out["window_seconds"]
    out["audio_token_count"] = _measured_audio_tokens(family, processor, audio_token, rate)
    return out


def infer_facts(family: Family, config=None, processor=None, model=None) -> tuple[dict[str, Any], list[str]]:
    """``(facts, inferred)``: every fact the entry leaves open, read from the checkpoint's parts."""
    raw = {f: getattr(family, f) for f in FACTS}
    found: dict[str, Any] = {}
    model_type = getattr(config, "model_type", None) or family.model_types[0]
    if raw["model_class"] is None:
        found["model_class"] = model_class_for(model_type)
        if found["model_class"] is None:
            raise _cannot_infer(family, "model_class", "no transformers auto mapping names a text-writing class")
    model_class = raw["model_class"] or found["model_class"]
    if model is None and config is not None:
        model = meta_model(model_class, config)
    if model is not None:
        found.update(infer_module_facts(family, model))
    if processor is not None:
        found.update(infer_processor_facts(family, processor, found))
        if raw["assistant_header"] is None or raw["end_of_turn"] is None:
            found.update(infer_template_facts(family, processor))
    facts = {f: raw[f] for f in FACTS if raw[f] is not None}
    inferred = [f for f in FACTS if raw[f] is None and found.get(f) is not None]
    facts.update({f: found[f] for f in inferred})
    return facts, inferred


def bind(family: Family, config=None, processor=None, model=None) -> Family:
    """``family`` with every fact it does not override inferred from the checkpoint's parts.

    ``model``: the loaded model, or None to build one on the meta device from ``config`` (milliseconds, no
    weights). ``processor``: None when only module facts are needed (``audiotune plan``); the processor facts then
    stay unset (:func:`~audiotune.models.loading.offline_facts` answers them from the entry's tiny checkpoint).
    """
    if family.known_issue and processor is not None:  # a blocked family: one clear error before any work
        raise ModelFamilyError(f"The {family.name} family is not supported yet: {family.known_issue}.")
    facts, inferred = infer_facts(family, config, processor, model)
    return family.variant(**facts, bound=True, inferred=tuple(inferred), processor=processor)


def model_class_of(family: Family) -> str | None:
    """The transformers class of ``family``'s models, bound or not: the entry's override, else the auto mapping's
    class for its first model_type (what :func:`bind` would infer), so a tiny build or a plan needs no binding."""
    return family.model_class or model_class_for(family.model_types[0])
