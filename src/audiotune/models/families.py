"""Everything that differs between audio-language architectures, in one place.

A :class:`Family` holds the per-architecture knowledge the rest of audiotune needs: how to
recognise a checkpoint (``model_type``), which transformers class loads it, the audio placeholder,
sampling rate and window arithmetic, which linear layers belong to the *language model* (LoRA's
default targets), which modules are the audio encoder and projector (frozen by default), and how
the assistant's reply is delimited in the chat template (for label masking). No other module
branches on the architecture: adding a model is adding one entry here plus its tiny builder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelFamilyError

# The guide's target list. Kept only to show users what it also matches (the audio encoder).
GUIDE_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The same names, but only under the language model: audiotune's default LoRA targets.
LM_LORA_REGEX = rf".*language_model\..*\.({'|'.join(GUIDE_LORA_TARGETS)})"


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
    assistant_header: str  # text that opens an assistant turn in the rendered template
    end_of_turn: str  # token that closes a turn; it is kept in the loss so the model learns to stop
    # The layout most of transformers' audio LLMs share: ``model.audio_tower``, ``model.multi_modal_projector`` and
    # ``model.language_model`` with Llama-style q/k/v/o/gate/up/down linears. Families that differ say so.
    lm_lora_regex: str = LM_LORA_REGEX  # full-name regex of the language model's linear layers
    encoder_prefixes: tuple[str, ...] = ("model.audio_tower",)  # module-name prefixes of the audio encoder
    projector_prefixes: tuple[str, ...] = ("model.multi_modal_projector",)
    default_system_prompt: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    requires_audio: bool = True  # the server refuses text-only requests unless told otherwise
    audio_features_method: str = "get_audio_features"  # encoder + projector, cached by audio_cache.py
    audio_tower_attribute: str = "audio_tower"
    max_audios: int = 1  # audios per conversation (AF3's processor pairs each text with exactly one audio)
    vllm_supported: bool = False  # vLLM can serve this architecture (with LoRA)
    # Placeholder tokens the processor expands a clip of ``seconds`` into (after the long-audio policy capped it).
    audio_token_count: Callable[[float], int] | None = None
    # The per-window audio-embedding cache (audio_cache.py) knows this family's audio-features signature.
    audio_cache: bool = False
    hub_id: str | None = None  # the main public checkpoint (``audiotune plan`` ships its architecture)
    other_tower_prefixes: tuple[str, ...] = ()  # e.g. a vision tower: frozen, never a LoRA target
    lm_config_attribute: str = "text_config"  # where the language model's config sits in the full config
    # Why the family cannot train with the pinned transformers (the family test is then a strict xfail).
    known_issue: str | None = None
    # False when the chat template closes no turn (GLM: a reply runs into the next role marker); the collator then
    # appends ``end_of_turn`` after the last assistant message so the model learns to stop.
    template_closes_turns: bool = True
    # Samples past a window boundary that the processor cannot handle (Music Flamingo gives a 0-token window and
    # breaks its time embeddings): such a tail, at most this long, is trimmed before the processor sees it.
    trim_window_tail_samples: int = 0
    # Shorter clips get no placeholder (Qwen2-Audio then crashes): they are padded with silence to this length.
    min_audio_samples: int = 0
    # False when the model's own loss ignores ``num_items_in_batch`` (Qwen2-Audio): the Trainer must then average
    # over gradient-accumulation steps itself, or the loss is too large by the accumulation factor.
    loss_uses_num_items: bool = True
    # Python packages the family needs beyond audiotune's own dependencies (its processor or its model class imports
    # them); checked when the processor loads, so a missing one is a one-line error, not an ImportError deep inside
    # transformers.
    requires_packages: tuple[str, ...] = ()
    # The audio tower is Whisper-style (conv front-end + learned positions + masked attention + pooling) and can run
    # over a batch's valid frames instead of the whole 30 s window (encoder_frames.py); False where the tower checks
    # the input length (Qwen2-Audio) or adds window-wide time embeddings (Music Flamingo).
    encoder_trims_to_valid_frames: bool = False
    # The processor tokenises only inside ``apply_chat_template`` (Voxtral's mistral-common backend): the collator
    # then hands it whole conversations, audio as base64 WAV parts.
    processor_tokenizes_chat: bool = False
    processor_kwargs: tuple[tuple[str, Any], ...] = ()  # extra ``AutoProcessor.from_pretrained`` arguments

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

    def audio_tokens(self, seconds: float) -> int:
        """Number of audio placeholder tokens a clip of ``seconds`` becomes in this family's processor."""
        seconds = min(seconds, self.max_audio_seconds)
        if self.audio_token_count is None:
            return _whisper_pooled_tokens(seconds)
        return self.audio_token_count(seconds)

    def is_encoder_module(self, name: str) -> bool:
        """In the audio encoder; a projector nested inside it (Qwen2.5-Omni's ``audio_tower.proj``) is not."""
        return any(_has_prefix(name, p) for p in self.encoder_prefixes) and not self.is_projector_module(name)

    def is_projector_module(self, name: str) -> bool:
        return any(_has_prefix(name, p) for p in self.projector_prefixes)

    def lm_lora_targets(self) -> str:
        return self.lm_lora_regex


def _whisper_pooled_tokens(seconds: float) -> int:
    """AF3 arithmetic: mel frames (100/s, over the 30 s windows) → conv stride 2 → average-pool 2."""
    frames = max(1, int(seconds * 100))
    conv = (frames - 1) // 2 + 1
    return (conv - 2) // 2 + 1


def _has_prefix(name: str, prefix: str) -> bool:
    # Module names may be wrapped (``base_model.model.`` by PEFT), so match the prefix anywhere
    # on a dotted boundary.
    return re.search(rf"(^|\.){re.escape(prefix)}(\.|$)", name) is not None



AUDIO_FLAMINGO_3 = Family(
    name="af3",
    model_types=("audioflamingo3",),
    model_class="AudioFlamingo3ForConditionalGeneration",
    audio_token="<sound>",
    sampling_rate=16000,
    window_seconds=30.0,
    max_audio_seconds=600.0,
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    default_system_prompt="You are a helpful assistant.",
    aliases=("audioflamingo3", "audio-flamingo-3"),
    encoder_trims_to_valid_frames=True,
    vllm_supported=True,
    audio_cache=True,
    hub_id="nvidia/audio-flamingo-3-hf",
)

def _mel_frames(seconds: float, rate: int = 16000, hop: int = 160) -> int:
    return max(1, math.ceil(round(seconds * rate) / hop))


def _music_flamingo_tokens(seconds: float) -> int:
    """AF3's arithmetic on exact mel frames (the processor also adds ``<|sound_bos|>``/``<|sound_eos|>``)."""
    conv = (_mel_frames(seconds) - 1) // 2 + 1
    return (conv - 2) // 2 + 1


def _glmasr_tokens(seconds: float) -> int:
    """Whisper frames → conv stride 2 → 4 frames merged into one token."""
    conv = (_mel_frames(seconds) - 1) // 2 + 1
    return (conv - 4) // 4 + 1


MUSIC_FLAMINGO = Family(
    name="musicflamingo",
    model_types=("musicflamingo",),
    model_class="MusicFlamingoForConditionalGeneration",
    audio_token="<sound>",
    sampling_rate=16000,
    window_seconds=30.0,
    max_audio_seconds=1200.0,
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    default_system_prompt=(
        "You are Music Flamingo, a multimodal assistant for language and music. On each turn you receive an audio "
        "clip which contains music and optional text, you will receive at least one or both; use your world "
        "knowledge and reasoning to help the user with any task. Interpret the entirety of the content any input "
        "music--regardlenss of whether the user calls it audio, music, or sound."),  # verbatim, typo included
    aliases=("music-flamingo", "music_flamingo"),
    vllm_supported=True,
    audio_token_count=_music_flamingo_tokens,
    hub_id="nvidia/music-flamingo-2601-hf",
    trim_window_tail_samples=320,  # ≤ 20 ms past a 30 s boundary gives a 0-token window (transformers 5.24)
)

GLM_ASR = Family(
    name="glmasr",
    model_types=("glmasr",),
    model_class="GlmAsrForConditionalGeneration",
    audio_token="<|pad|>",
    sampling_rate=16000,
    window_seconds=30.0,
    max_audio_seconds=630.0,  # max_audio_len=655 → 21 whole windows
    assistant_header="<|assistant|>\n",
    end_of_turn="<|user|>",
    aliases=("glm-asr", "glm_asr", "glm-asr-nano"),
    vllm_supported=True,
    audio_token_count=_glmasr_tokens,
    hub_id="zai-org/GLM-ASR-Nano-2512",
    template_closes_turns=False,
)

def _qwen_audio_tokens(max_frames: int) -> Callable[[float], int]:
    """Qwen2-Audio / Qwen2.5-Omni: mel frames kept by the mask (capped) → conv stride 2 → average-pool 2."""
    def count(seconds: float) -> int:
        frames = min(_mel_frames(seconds), max_frames)
        conv = (frames - 1) // 2 + 1
        return max(0, (conv - 2) // 2 + 1)
    return count


QWEN2_AUDIO = Family(
    name="qwen2audio",
    model_types=("qwen2_audio",),
    model_class="Qwen2AudioForConditionalGeneration",
    audio_token="<|AUDIO|>",
    sampling_rate=16000,
    window_seconds=30.0,
    max_audio_seconds=30.0,  # one 3000-frame window; the processor cuts the rest silently, so the policy decides
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    default_system_prompt="You are a helpful assistant.",
    aliases=("qwen2-audio", "qwen2_audio", "qwen2-audio-7b-instruct"),
    requires_audio=False,
    max_audios=8,
    vllm_supported=True,
    audio_token_count=_qwen_audio_tokens(3000),
    hub_id="Qwen/Qwen2-Audio-7B-Instruct",
    min_audio_samples=1600,
    loss_uses_num_items=False,
)

QWEN25_OMNI = Family(
    name="qwen25omni",
    model_types=("qwen2_5_omni_thinker", "qwen2_5_omni"),
    model_class="Qwen2_5OmniThinkerForConditionalGeneration",
    audio_token="<|AUDIO|>",
    sampling_rate=16000,
    window_seconds=300.0,  # the encoder attends in 2 s chunks; the processor takes up to 300 s in one go
    max_audio_seconds=300.0,
    projector_prefixes=("model.audio_tower.proj",),
    other_tower_prefixes=("model.visual",),
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    default_system_prompt="You are a helpful assistant.",
    aliases=("qwen2.5-omni", "qwen2_5_omni", "qwen25-omni", "qwen2.5-omni-thinker"),
    requires_audio=False,
    max_audios=8,
    vllm_supported=True,
    audio_token_count=_qwen_audio_tokens(30000),
    hub_id="Qwen/Qwen2.5-Omni-7B",
    min_audio_samples=1600,
    requires_packages=("torchvision",),
    known_issue=("transformers 5.24's Qwen2_5OmniProcessor cannot be built without torchvision (its video "
                 "processor is torchvision-only), and no torchvision build loads beside torch 2.13 CPU here. "
                 "The model, config and tokenizer load; on a GPU machine `pip install torchvision` matching torch "
                 "makes the family work."),
)

def _voxtral_tokens(seconds: float) -> int:
    """375 tokens per started 30 s window (12.5 tokens/s); the processor never truncates."""
    return 375 * max(1, math.ceil(round(seconds * 16000) / 480000))


def _granite_speech_tokens(seconds: float) -> int:
    """Stacked 20 ms frames, windows of 15 → 3 query tokens each (the Q-Former projector)."""
    return 3 * math.ceil(((round(seconds * 16000) // 160 + 1) // 2) / 15)


VOXTRAL = Family(
    name="voxtral",
    model_types=("voxtral",),
    model_class="VoxtralForConditionalGeneration",
    audio_token="[AUDIO]",
    sampling_rate=16000,
    window_seconds=30.0,
    max_audio_seconds=2400.0,  # more 30 s windows, up to the LM's context (the model card says 40 min)
    assistant_header="[/INST]",
    end_of_turn="</s>",
    aliases=("voxtral-mini", "mistral-voxtral"),
    max_audios=5,
    vllm_supported=True,
    audio_token_count=_voxtral_tokens,
    hub_id="mistralai/Voxtral-Mini-3B-2507",
    requires_packages=("mistral_common",),
    processor_tokenizes_chat=True,
    # "test" (the default) refuses a conversation ending with the assistant's reply, "finetuning" one without it.
    processor_kwargs=(("mode", "agnostic"),),
)


GRANITE_SPEECH = Family(
    name="granite_speech",
    model_types=("granite_speech",),
    model_class="GraniteSpeechForConditionalGeneration",
    audio_token="<|audio|>",
    sampling_rate=16000,
    window_seconds=4.0,  # the conformer's attention block (200 frames × 20 ms)
    max_audio_seconds=500.0,  # the processor does not cut; vLLM plans for 500 s
    encoder_prefixes=("model.encoder",),
    projector_prefixes=("model.projector",),
    assistant_header="<|start_of_role|>assistant<|end_of_role|>",
    end_of_turn="<|end_of_text|>",
    aliases=("granite-speech", "granitespeech"),
    audio_tower_attribute="encoder",
    vllm_supported=True,
    audio_token_count=_granite_speech_tokens,
    hub_id="ibm-granite/granite-speech-3.3-2b",
    requires_packages=("torchaudio",),
    known_issue=("GraniteSpeechFeatureExtractor needs torchaudio, which has no build that loads beside torch 2.13 "
                 "CPU (and breaks `import transformers` when forced). The checkpoint also bundles a speech LoRA "
                 "that transformers 5.24 loads only with peft ≥ 0.22 (not released; audiotune pins 0.21). The "
                 "model, config, LM-only LoRA regex and `audiotune plan` work."),
)

def _phi4mm_tokens(seconds: float) -> int:
    """25 ms windows every 10 ms, 8 frames per token; nothing under one window."""
    samples = round(seconds * 16000)
    if samples < 400:
        return 0
    return -(-((samples - 400) // 160 + 1) // 8)


GEMMA3N = Family(
    name="gemma3n",
    model_types=("gemma3n",),
    model_class="Gemma3nForConditionalGeneration",
    audio_token="<audio_soft_token>",
    sampling_rate=16000,
    window_seconds=30.0,
    max_audio_seconds=30.0,  # the feature extractor cuts at 480000 samples
    projector_prefixes=("model.embed_audio",),
    other_tower_prefixes=("model.vision_tower", "model.embed_vision"),
    assistant_header="<start_of_turn>model\n",
    end_of_turn="<end_of_turn>",
    aliases=("gemma-3n", "gemma_3n", "gemma-3n-e2b-it"),
    requires_audio=False,
    max_audios=8,
    audio_token_count=lambda seconds: 188,  # a fixed 188 soft tokens per clip
    hub_id="google/gemma-3n-E2B-it",
    min_audio_samples=513,
    loss_uses_num_items=False,
    requires_packages=("timm",),
    known_issue=("Gemma3nForConditionalGeneration always builds its vision tower through timm, which needs "
                 "torchvision; no torchvision build loads beside torch 2.13 CPU (PyPI's 0.28.0 fails with "
                 "'operator torchvision::nms does not exist' and then breaks `import transformers`). Config, "
                 "tokenizer, processor and `audiotune plan` work; the model needs timm and a matching torchvision "
                 "(a GPU machine)."),
)

PHI4_MULTIMODAL = Family(
    name="phi4mm",
    model_types=("phi4_multimodal",),
    model_class="Phi4MultimodalForCausalLM",
    audio_token="<|audio|>",
    sampling_rate=16000,
    window_seconds=40.0,
    max_audio_seconds=40.0,  # a batch with a longer clip crashes the encoder's unfold in transformers 5.24
    # The LM's linears are fused (qkv_proj, gate_up_proj): the guide's names would adapt the audio encoder only.
    lm_lora_regex=r"(^|.*\.)model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))",
    encoder_prefixes=("model.embed_tokens_extend.audio_embed.encoder",),
    projector_prefixes=tuple(f"model.embed_tokens_extend.audio_embed.{p}" for p in (
        "up_proj_for_speech", "down_proj_for_speech", "up_proj_for_vision_speech", "down_proj_for_vision_speech")),
    other_tower_prefixes=("model.embed_tokens_extend.image_embed",),
    assistant_header="<|assistant|>",
    end_of_turn="<|end|>",
    aliases=("phi-4-multimodal", "phi4-multimodal", "phi4_multimodal", "phi-4-multimodal-instruct"),
    requires_audio=False,
    audio_tower_attribute="embed_tokens_extend",
    max_audios=8,
    audio_token_count=_phi4mm_tokens,
    hub_id="microsoft/Phi-4-multimodal-instruct",
    lm_config_attribute="",  # the LM's sizes are the top-level config's
    min_audio_samples=400,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (AUDIO_FLAMINGO_3, MUSIC_FLAMINGO, QWEN2_AUDIO, VOXTRAL,
                                                   GRANITE_SPEECH, GEMMA3N, PHI4_MULTIMODAL, GLM_ASR, QWEN25_OMNI)}


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
