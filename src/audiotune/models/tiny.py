"""Tiny, randomly initialised checkpoints of real architectures, built offline.

Why: tests, the demo and the benchmarks must exercise the *real* code path
(``from_pretrained(dir)`` of the real transformers classes, the real chat template and feature
extractor) on a machine with no network and no GPU. A tiny checkpoint is the real architecture with
small sizes, random weights, and a byte-level BPE tokenizer trained here in a second.

Compute proportions (the benchmarks depend on them). The real Audio Flamingo 3 pairs a
Whisper-large-v3 encoder (32 layers, d=1280, always run over full 30 s windows of 1500 positions)
with Qwen2.5-7B. For a typical 10 s AudioCaps clip the encoder costs ≈2.3 TFLOP per window
(linear ≈1.9 + attention ≈0.4) while the LM costs ≈13 GFLOP/token × ≈310 tokens (250 audio
tokens + prompt + caption) ≈ 4 TFLOP forward: an encoder/LM forward ratio of ≈0.55.
The ``default`` preset keeps that proportion: a 2-layer d=128 encoder still runs over all 1500
positions of a 30 s window (≈3.5 GFLOP: attention dominates at this width) and an 8-layer d=256
Qwen2 LM costs ≈15 MFLOP/token, ≈4.7 GFLOP for the same 310 tokens: ratio ≈0.75 (measured on
CPU: encoder ≈0.03 s vs LM ≈0.06 s per clip, ≈0.5). ``tests/test_tiny.py`` guards the proportion.
The ``micro`` preset is for unit tests only: same structure, far smaller, no proportion promised.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelFamilyError
from .families import AUDIO_FLAMINGO_3, Family, family_by_name

# Renders exactly what AF3's published chat template renders: a default system turn, ChatML turns,
# and for a turn with audio the placeholder first, then the turn's text.
AF3_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages if message['content'] is not none %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% set state = namespace(has_audio=False, text='') %}"
    "{% for part in message['content'] %}"
    "{% if part.get('type') == 'audio' or 'audio' in part %}{% set state.has_audio = True %}"
    "{% elif part.get('type') == 'text' or 'text' in part %}{% set state.text = state.text + part['text'] %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if state.has_audio %}<sound>{% endif %}{{ state.text }}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

PRESETS: dict[str, dict] = {
    "default": {
        "encoder": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512},
        "text": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "intermediate_size": 1024},
        "vocab_size": 2048,
    },
    "micro": {
        "encoder": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "text": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 128},
        "vocab_size": 1024,
    },
}


def start_build(out_dir: str | Path, preset: str, presets: dict[str, dict] | None = None) -> tuple[dict, Path]:
    """``(sizes, folder)`` for a builder: the preset's sizes (a clear error for an unknown one), the folder made."""
    presets = PRESETS if presets is None else presets
    if preset not in presets:
        raise ModelFamilyError(f"Unknown tiny preset {preset!r}; choose one of {', '.join(presets)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return presets[preset], out


def tokenizer_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: chat framing, common prompts and caption words."""
    from ..data.synthetic import vocabulary_text

    prompts = [
        "You are a helpful assistant.", "Describe the audio.", "Describe the audio in detail.",
        "Transcribe the input speech.", "What do you hear?", "Caption this sound.",
        "What sound is this? Answer with one of:", "system", "user", "assistant",
    ]
    general = (
        "the a an of and to in is it that for on with as was at by this be from or are not but have "
        "sound audio speech music noise voice person man woman dog bird car engine water wind rain "
        "door bell phone beep tone whistle hum buzz click knock loud quiet soft short long first then "
        "after before while one two three four five six seven eight nine ten yes no"
    )
    return prompts * 20 + [vocabulary_text()] * 20 + [general] * 20


def build_tokenizer(vocab_size: int, audio_token: str):
    """Train a byte-level BPE (Qwen2's pre-tokenisation) and wrap it as a ``Qwen2Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(CHATML_SPECIALS) - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", audio_token]})
    tokenizer.model_max_length = 32768
    return tokenizer


def build_tiny_af3(out_dir: str | Path, seed: int = 0, preset: str = "default") -> Path:
    """Build and save a tiny Audio Flamingo 3 (model + processor + generation config) in ``out_dir``."""
    import torch
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
        GenerationConfig,
        WhisperFeatureExtractor,
    )

    sizes, out = start_build(out_dir, preset)
    family: Family = AUDIO_FLAMINGO_3

    tokenizer = build_tokenizer(sizes["vocab_size"], family.audio_token)
    feature_extractor = WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)
    processor = AudioFlamingo3Processor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                                        chat_template=AF3_CHAT_TEMPLATE, audio_token=family.audio_token)
    tokenizer.chat_template = AF3_CHAT_TEMPLATE

    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos_id = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    audio_id = tokenizer.convert_tokens_to_ids(family.audio_token)
    config = AudioFlamingo3Config(
        audio_config={"model_type": "audioflamingo3_encoder", "num_mel_bins": 128, **sizes["encoder"]},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "max_position_embeddings": 8192,
                     "bos_token_id": pad_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
                     "tie_word_embeddings": False, "rope_theta": 1000000.0, **sizes["text"]},
        audio_token_id=audio_id,
    )
    torch.manual_seed(seed)
    model = AudioFlamingo3ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id,
        do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# family name → module under audiotune.models.builders (AF3's builder lives here, the others in their modules).
BUILDER_MODULES = {
    "musicflamingo": "musicflamingo",
    "qwen2audio": "qwen2audio",
    "qwen25omni": "qwen25omni",
    "voxtral": "voxtral",
    "granite_speech": "granite_speech",
    "gemma3n": "gemma3n",
    "phi4mm": "phi4mm",
    "glmasr": "glmasr",
}


def builder_for(family: str):
    """The tiny builder of ``family`` (a name or alias), imported on demand."""
    import importlib

    name = family_by_name(family).name
    if name == AUDIO_FLAMINGO_3.name:
        return build_tiny_af3
    if name not in BUILDER_MODULES:
        raise ModelFamilyError(f"No tiny builder for family {name!r} yet; available: af3, "
                               f"{', '.join(BUILDER_MODULES)}.")
    return importlib.import_module(f"{__package__}.builders.{BUILDER_MODULES[name]}").build


def build_tiny(family: str, out_dir: str | Path, seed: int = 0, preset: str = "default") -> Path:
    """Build the tiny checkpoint of ``family`` in ``out_dir`` (``preset``: default or micro)."""
    if preset not in PRESETS:
        raise ModelFamilyError(f"Unknown tiny preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return builder_for(family)(out_dir, seed=seed, preset=preset)
