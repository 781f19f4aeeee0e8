"""Architectures transformers ships with an audio side that audiotune refuses, each with the upstream reason.

Why a list of its own: without it, such a checkpoint falls through to "infer every fact" and fails later with an
error about a missing chat template or audio token that says nothing about the real obstacle. With it, loading
stops at once with the reason, and ``audiotune models`` / docs/models.md show the same words. Each reason names
the transformers file it was read from (transformers 5.24, the version ``pyproject.toml`` pins the floor of).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Unsupported:
    """One architecture audiotune does not train or run, and why (the upstream fact, not a guess)."""

    name: str
    model_types: tuple[str, ...]
    hub_id: str  # the checkpoint transformers' configuration docstring names
    reason: str


UNSUPPORTED: dict[str, Unsupported] = {u.name: u for u in (
    Unsupported(
        "voxtral_realtime", ("voxtral_realtime",), "mistralai/Voxtral-Mini-4B-Realtime-2602",
        "streaming ASR without a chat template: VoxtralRealtimeProcessor.__call__ takes audio only and builds a "
        "mistral_common TranscriptionRequest itself (transformers models/voxtral_realtime/"
        "processing_voxtral_realtime.py); the text is time-aligned to the audio behind num_delay_tokens delay "
        "tokens, so training needs time-aligned targets, which audiotune's prompt/answer collator cannot make"),
    Unsupported(
        "kyutai_speech_to_text", ("kyutai_speech_to_text",), "kyutai/stt-2.6b-en-trfs",
        "streaming ASR without a chat template: KyutaiSpeechToTextProcessor is a 24 kHz feature extractor plus a "
        "tokenizer (transformers models/kyutai_speech_to_text/processing_kyutai_speech_to_text.py), and the model "
        "reads the waveform through its Mimi codec one frame per text token, generating at most one token per "
        "audio frame (modeling_kyutai_speech_to_text.py, generate); there is no prompt/answer split to train on"),
    Unsupported(
        "cosmos3_omni", ("cosmos3_omni",), "nvidia/Cosmos3-Nano",
        "no audio path in transformers: Cosmos3OmniForConditionalGeneration is the Reasoner with "
        "input_modalities image, video and text, it drops the checkpoint's sound towers on load "
        "(_keys_to_ignore_on_load_unexpected in models/cosmos3_omni/modeling_cosmos3_omni.py), and there is no "
        "Cosmos3Omni processor (only an image processor mapping)"),
)}


def unsupported_for(model_type: str | None) -> Unsupported | None:
    """The refused architecture a checkpoint's ``model_type`` belongs to, or None."""
    return next((u for u in UNSUPPORTED.values() if model_type in u.model_types), None)
