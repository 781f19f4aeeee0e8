"""The :class:`Family` type: everything that differs between audio-language architectures, as one value.

Why a module of its own: the registry (``families.py``), the inference that fills an entry's facts from a checkpoint
(``facts.py``) and every reader (data, training, serving) share the type, and none of them should need the others to
read a fact. A family is an entry's identity and overrides plus, once bound to a checkpoint, its inferred facts; its
methods apply the per-family quirks (``prepare_audio``, answer formats, which module is the encoder) so that no
other module branches on the architecture.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The guide's target list. Kept only to show users what it also matches (the audio encoder).
GUIDE_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Facts a bound family always has: inferred from the checkpoint unless the registry entry overrides them.
FACTS = ("model_class", "audio_token", "sampling_rate", "window_seconds", "max_audio_seconds", "assistant_header",
         "end_of_turn", "template_closes_turns", "lm_prefix", "lm_lora_regex", "encoder_prefixes",
         "projector_prefixes", "other_tower_prefixes", "audio_tower_attribute", "audio_token_count")

# Facts that come from the processor and chat template (the rest from the module tree).
PROCESSOR_FACTS = ("audio_token", "sampling_rate", "window_seconds", "max_audio_seconds", "assistant_header",
                   "end_of_turn", "template_closes_turns", "audio_token_count")


@dataclass(frozen=True, eq=False, repr=False)
class Family:
    """One architecture: its identity, its overrides, and (once bound to a checkpoint) its inferred facts.

    Every field left ``None`` among :data:`FACTS` is inferred by :func:`~audiotune.models.facts.bind`; a value given
    here overrides the inference and must say why in a comment.

    A fact is a plain attribute: on an unbound registry entry (``FAMILIES["af3"]``) an unset fact reads ``None``,
    and nothing is built behind the reader's back. Code that needs a family's facts without a checkpoint at hand
    (a data check by family name, ``audiotune plan`` on a config alone) asks for them explicitly with
    :func:`~audiotune.models.loading.offline_facts`, which answers them from the entry's tiny checkpoint.
    """

    name: str
    model_types: tuple[str, ...]
    aliases: tuple[str, ...] = field(default_factory=tuple)
    hub_id: str | None = None  # the main public checkpoint (``audiotune plan`` ships its architecture)
    # --- facts: None = inferred (facts.py) ----------------------------------------------------------------------------
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
    vllm_lora: bool = True  # vLLM's model code takes LoRA adapters (implements SupportsLoRA); False: served merged
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
    # How much of each padded feature window the audio path reads (models/encoder_frames.py, which applies it):
    # None: all of it, padding included (the tower attends over the padding: Voxtral, GLM-ASR), so only whole windows
    # give the checkpoint's answers; "masked": a Whisper-style tower that masks the padding out of its attention, which
    # ``--encoder-frames valid`` runs over each batch's valid frames, features computed only that far (equal up to
    # float error); "selected": the model itself keeps each clip's valid frames and drops the rest, so features are
    # always computed only as far as the batch's longest clip (identical answers, no flag needed).
    valid_frames: str | None = None
    # The feature extractor computes on the model's device when it takes a ``device`` (data/collator.py); False where
    # its torch path leaves the waveform on the CPU and fails on any other device (transformers 5.24).
    features_on_device: bool = True
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
    # The class of the complete checkpoint when ``model_class`` is one part of it (Qwen Omni: the thinker, beside a
    # talker and a vocoder that speak its answers), and that part's attribute and config key stem (``thinker``):
    # training tunes the part; ``audiotune merge`` of a complete base writes the complete checkpoint back (merge.py).
    complete_model_class: str | None = None
    complete_model_part: str = "thinker"
    # Several examples can share one training row (``--packing``, data/packing.py): None infers it from the language
    # model's config (3-D multimodal rotary positions, ``mrope_section``, cannot restart per example: Qwen2.5-Omni and
    # Qwen3-Omni compute them from the whole row); True/False overrides that, with a comment saying why.
    packs: bool | None = None
    # Constant model inputs every batch carries (the collator adds them to what the processor returns).
    model_inputs: tuple[tuple[str, Any], ...] = ()
    # Tiny-builder hook for what a config cannot say generically (``models/tiny.py``): ``(config, tokenizer,
    # sizes) -> None``, run after the generic shrink.
    tiny_hook: Callable[..., None] | None = None
    # --- set by facts.bind() ------------------------------------------------------------------------------------------
    bound: bool = False
    inferred: tuple[str, ...] = ()  # facts read from the checkpoint
    processor: Any = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        state = f"inferred {', '.join(self.inferred) or 'nothing'}" if self.bound else "unbound"
        return f"Family({self.name!r}, {state})"

    @property
    def overridden(self) -> tuple[str, ...]:
        """Facts this registry entry states explicitly (the rest are inferred)."""
        return tuple(f for f in FACTS if getattr(self, f) is not None and f not in self.inferred)

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
        return any(has_prefix(name, p) for p in self.encoder_prefixes) and not self.is_projector_module(name)

    def is_projector_module(self, name: str) -> bool:
        return any(has_prefix(name, p) for p in self.projector_prefixes)

    def lm_lora_targets(self) -> str:
        return self.lm_lora_regex

    def packing_refusal(self, config) -> str | None:
        """Why this family cannot pack several examples into one row (``--packing``), or None when it can.

        Packing gives each example ``position_ids`` that restart at 0, from which transformers builds a block-diagonal
        causal mask (``masking_utils.find_packed_sequence_indices``). A language model with 3-D rotary positions
        (``mrope_section`` in its rope parameters) derives its positions from the whole row (``get_rope_index``), so
        the restart never reaches it and examples would attend to each other."""
        if self.packs is True:
            return None
        if self.packs is False:
            return f"the {self.name} family is marked as unable to pack (models/families.py)"
        rope = self.lm_config(config)
        parameters = getattr(rope, "rope_parameters", None) or getattr(rope, "rope_scaling", None) or {}
        nested = [parameters, *(v for v in parameters.values() if isinstance(v, dict))]
        if any(isinstance(p, dict) and p.get("mrope_section") for p in nested):
            return (f"the {self.name} language model uses 3-D multimodal rotary positions (mrope_section "
                    f"{next(p['mrope_section'] for p in nested if isinstance(p, dict) and p.get('mrope_section'))}), "
                    "computed from the whole row, so positions cannot restart per packed example")
        # Recurrent layers (Nemotron-H's Mamba-2 "linear_attention" blocks) carry their state along the row, across
        # the examples' boundaries: positions and masks never reach them.
        kinds = [str(k) for key in ("layers_block_type", "layer_types", "hybrid_override_pattern")
                 for k in (getattr(rope, key, None) or [])]
        if any(k in ("mamba", "linear_attention", "M") for k in kinds):
            return (f"the {self.name} language model has recurrent (Mamba / linear-attention) layers whose state runs "
                    "along the whole row, from one packed example into the next")
        return None

    def lm_config(self, config):
        """The language model's config inside the full one (its sizes drive the plan)."""
        return config.get_text_config(decoder=True)

    def variant(self, **changes) -> Family:
        """This entry with ``changes`` (a sibling architecture's entry, or a bound copy); no fact is inferred."""
        return dataclasses.replace(self, **changes)


def has_prefix(name: str, prefix: str) -> bool:
    # Module names may be wrapped (``base_model.model.`` by PEFT), so match the prefix anywhere
    # on a dotted boundary.
    return re.search(rf"(^|\.){re.escape(prefix)}(\.|$)", name) is not None
