"""Everything that differs between audio-language architectures, in one place.

A :class:`Family` holds the per-architecture knowledge the rest of audiotune needs: how to
recognise a checkpoint (``model_type``), which transformers class loads it, the audio placeholder,
sampling rate and window arithmetic, which linear layers belong to the *language model* (LoRA's
default targets), which modules are the audio encoder and projector (frozen by default), and how
the assistant's reply is delimited in the chat template (for label masking). No other module
branches on the architecture: adding a model is adding one entry here plus its tiny builder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ModelFamilyError

# The guide's target list. Kept only to show users what it also matches (the audio encoder).
GUIDE_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Family:
    """Per-architecture facts. See the module docstring for why they live together."""

    name: str
    model_types: tuple[str, ...]
    model_class: str  # attribute of the ``transformers`` module
    audio_token: str
    sampling_rate: int
    window_seconds: float  # one encoder window
    max_audio_seconds: float  # beyond this the processor would truncate
    lm_lora_regex: str  # full-name regex of the language model's linear layers
    encoder_prefixes: tuple[str, ...]  # module-name prefixes of the audio encoder
    projector_prefixes: tuple[str, ...]
    assistant_header: str  # text that opens an assistant turn in the rendered template
    end_of_turn: str  # token that closes a turn; it is kept in the loss so the model learns to stop
    default_system_prompt: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    requires_audio: bool = True  # the server refuses text-only requests unless told otherwise
    audio_features_method: str = "get_audio_features"  # encoder + projector, cached by audio_cache.py
    audio_tower_attribute: str = "audio_tower"
    max_audios: int = 1  # audios per conversation (AF3's processor pairs each text with exactly one audio)
    vllm_supported: bool = False  # vLLM can serve this architecture (with LoRA)

    def audio_tokens(self, seconds: float) -> int:
        """Number of audio placeholder tokens a clip of ``seconds`` becomes (AF3 arithmetic).

        Mel frames (100/s, summed over the 30 s windows) → conv stride 2 → average-pool 2,
        capped at the maximum length.
        """
        seconds = min(seconds, self.max_audio_seconds)
        frames = max(1, int(seconds * 100))
        conv = (frames - 1) // 2 + 1
        return (conv - 2) // 2 + 1

    def is_encoder_module(self, name: str) -> bool:
        return any(_has_prefix(name, p) for p in self.encoder_prefixes)

    def is_projector_module(self, name: str) -> bool:
        return any(_has_prefix(name, p) for p in self.projector_prefixes)

    def lm_lora_targets(self) -> str:
        return self.lm_lora_regex


def _has_prefix(name: str, prefix: str) -> bool:
    # Module names may be wrapped (``base_model.model.`` by PEFT), so match the prefix anywhere
    # on a dotted boundary.
    return re.search(rf"(^|\.){re.escape(prefix)}(\.|$)", name) is not None


_LM_LINEARS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

AUDIO_FLAMINGO_3 = Family(
    name="af3",
    model_types=("audioflamingo3",),
    model_class="AudioFlamingo3ForConditionalGeneration",
    audio_token="<sound>",
    sampling_rate=16000,
    window_seconds=30.0,
    max_audio_seconds=600.0,
    lm_lora_regex=rf".*language_model\..*\.{_LM_LINEARS}",
    encoder_prefixes=("model.audio_tower",),
    projector_prefixes=("model.multi_modal_projector",),
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    default_system_prompt="You are a helpful assistant.",
    aliases=("audioflamingo3", "audio-flamingo-3"),
    vllm_supported=True,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (AUDIO_FLAMINGO_3,)}


def family_by_name(name: str) -> Family:
    """The family called ``name`` (or one of its aliases)."""
    for family in FAMILIES.values():
        if name == family.name or name in family.aliases or name in family.model_types:
            return family
    raise ModelFamilyError(
        f"Unknown model family {name!r}. Supported: {', '.join(sorted(FAMILIES))}. "
        "To add one, add a Family entry in audiotune/models/families.py and a tiny builder in models/tiny.py."
    )


def family_for_config(config) -> Family:
    """The family of a loaded ``PretrainedConfig``, recognised by its ``model_type``."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    raise ModelFamilyError(
        f"Checkpoint has model_type {model_type!r}, which audiotune does not support yet. Supported: {supported}. "
        "To add one, add a Family entry in audiotune/models/families.py and a tiny builder in models/tiny.py."
    )
