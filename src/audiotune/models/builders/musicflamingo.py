"""Tiny, randomly initialised Music Flamingo checkpoint (``MusicFlamingoForConditionalGeneration``), built offline.

Why: tests must run the real Music Flamingo code path (real config/model/processor classes,
``from_pretrained(dir)``, the real chat template, Whisper features, the ``<|sound_bos|>``/``<|sound_eos|>``
boundaries and the rotary time embedding) with no network and no GPU.

What is real: ``MusicFlamingoConfig`` (an Audio Flamingo 3 Whisper-style encoder + Qwen2 LM, RoTE with
``rope_theta=1200`` and ``partial_rotary_factor=0.2`` left at the class defaults, as in
``nvidia/music-flamingo-2601-hf``), ``MusicFlamingoForConditionalGeneration``, ``MusicFlamingoProcessor``
(30 s windows, at most 40 = 20 min, ``<sound>`` expanded to ``<|sound_bos|>`` + N × ``<sound>`` +
``<|sound_eos|>``), ``WhisperFeatureExtractor`` with 128 mel bins at 16 kHz, a ``Qwen2Tokenizer`` with the
real special tokens (ChatML turn markers, ``<|endoftext|>`` pad, ``<|im_end|>`` eos, ``<sound>``,
``<|sound_bos|>``, ``<|sound_eos|>``) and the published chat template (Audio Flamingo 3's, with Music
Flamingo's default system prompt, typos included). What is not: the sizes, the weights and the BPE
merges (trained here on :func:`audiotune.models.tiny.tokenizer_corpus`).
"""

from __future__ import annotations

from pathlib import Path

from ..tiny import AF3_CHAT_TEMPLATE, PRESETS, build_tokenizer, start_build

AUDIO_TOKEN = "<sound>"
AUDIO_BOS_TOKEN = "<|sound_bos|>"
AUDIO_EOS_TOKEN = "<|sound_eos|>"
END_OF_TURN = "<|im_end|>"

# Verbatim from the published processor (transformers' convert_musicflamingo_to_hf.py and its processor
# test): note "music--regardlenss" (no space, typo) — the real checkpoint was trained with it.
MUSIC_FLAMINGO_SYSTEM_PROMPT = (
    "You are Music Flamingo, a multimodal assistant for language and music. "
    "On each turn you receive an audio clip which contains music and optional text, "
    "you will receive at least one or both; use your world knowledge and reasoning "
    "to help the user with any task. Interpret the entirety of the content any input music"
    "--regardlenss of whether the user calls it audio, music, or sound."
)

# Music Flamingo's template renders exactly like Audio Flamingo 3's (default system turn, ChatML turns,
# one ``<sound>`` before the turn's text when the turn has audio); only the default system prompt differs.
MUSICFLAMINGO_CHAT_TEMPLATE = AF3_CHAT_TEMPLATE.replace("You are a helpful assistant.", MUSIC_FLAMINGO_SYSTEM_PROMPT)
assert MUSICFLAMINGO_CHAT_TEMPLATE != AF3_CHAT_TEMPLATE



def build(out_dir: str | Path, seed: int = 0, preset: str = "micro") -> Path:
    """Build and save a tiny Music Flamingo (model + processor + generation config) in ``out_dir``."""
    import torch
    from transformers import (
        GenerationConfig,
        MusicFlamingoConfig,
        MusicFlamingoForConditionalGeneration,
        MusicFlamingoProcessor,
        WhisperFeatureExtractor,
    )

    sizes, out = start_build(out_dir, preset, PRESETS)

    # Qwen2 tokenizer with ChatML + <sound> (shared with the AF3 builder), plus the sound boundaries.
    tokenizer = build_tokenizer(sizes["vocab_size"], AUDIO_TOKEN)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", END_OF_TURN, AUDIO_TOKEN, AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN]}
    )
    tokenizer.chat_template = MUSICFLAMINGO_CHAT_TEMPLATE
    feature_extractor = WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)
    processor = MusicFlamingoProcessor(
        feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=MUSICFLAMINGO_CHAT_TEMPLATE,
        audio_token=AUDIO_TOKEN, audio_bos_token=AUDIO_BOS_TOKEN, audio_eos_token=AUDIO_EOS_TOKEN, max_audio_len=1200,
    )

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", END_OF_TURN, AUDIO_TOKEN,
                                                          AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN)}
    pad_id, eos_id = ids["<|endoftext|>"], ids[END_OF_TURN]
    config = MusicFlamingoConfig(
        audio_config={"model_type": "audioflamingo3_encoder", "num_mel_bins": 128, **sizes["encoder"]},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "max_position_embeddings": 8192,
                     "bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": pad_id,
                     "tie_word_embeddings": False, "rope_theta": 1000000.0, **sizes["text"]},
        audio_token_id=ids[AUDIO_TOKEN],
        audio_bos_token_id=ids[AUDIO_BOS_TOKEN],
        audio_eos_token_id=ids[AUDIO_EOS_TOKEN],
    )
    torch.manual_seed(seed)
    model = MusicFlamingoForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
