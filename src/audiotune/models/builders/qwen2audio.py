"""Tiny, randomly initialised Qwen2-Audio (``Qwen2AudioForConditionalGeneration``), built offline.

Why: tests and benchmarks exercise the real Qwen2-Audio code path (``from_pretrained`` of the real
transformers classes, the real chat template, feature extractor and processor) without the network.

What is real: the config classes (``Qwen2AudioConfig`` with a ``qwen2_audio_encoder`` audio config
and a ``qwen2`` text config), the model class, ``Qwen2AudioProcessor`` with a ``WhisperFeatureExtractor``
set as in Qwen/Qwen2-Audio-7B-Instruct (128 mel bins, 16 kHz, hop 160, one 30 s window of 3000 frames,
attention mask on), the special tokens (``<|AUDIO|>`` placeholder wrapped in ``<|audio_bos|>`` /
``<|audio_eos|>``, ChatML ``<|im_start|>`` / ``<|im_end|>``, ``<|endoftext|>`` as pad) and the
Instruct chat template. What is small: every size (layers, widths, a byte-level BPE vocabulary of
a few hundred tokens trained here on :func:`audiotune.models.tiny.tokenizer_corpus`). The encoder
keeps the real 1500 positions (``max_source_positions``): Qwen2-Audio's encoder only accepts mel
input padded to exactly 3000 frames, so every clip costs a full 30 s window, as in the real model.
The LM keeps Qwen-7B's shape choices: full multi-head attention (no GQA), rope theta 10000,
RMSNorm eps 1e-5, untied embeddings.
"""

from __future__ import annotations

from pathlib import Path

from ..tiny import start_build

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"

# The published Instruct template (chat_template.json of Qwen/Qwen2-Audio-7B-Instruct): a default system
# turn, ChatML turns, and per audio part "Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\n". One addition:
# a part whose ``type`` is "audio" also counts as audio (the published test is ``'audio' in content or
# 'audio_url' in content``, which misses ``{"type": "audio", "path": ...}``); the rendering of every
# input the published template handles is unchanged.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or content.get('type') == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

PRESETS: dict[str, dict] = {
    "default": {
        "encoder": {"d_model": 128, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 512},
        "text": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8,
                 "intermediate_size": 1024},
        "vocab_size": 2048,
    },
    "micro": {
        "encoder": {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64},
        "text": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                 "intermediate_size": 128},
        "vocab_size": 1024,
    },
}


def build_tokenizer(vocab_size: int):
    """The shared tiny Qwen2 tokenizer plus Qwen2-Audio's audio delimiters as special tokens."""
    from ..tiny import build_tokenizer as build_chatml_tokenizer

    tokenizer = build_chatml_tokenizer(vocab_size - 2, AUDIO_TOKEN)
    tokenizer.add_special_tokens({"extra_special_tokens": [AUDIO_BOS, AUDIO_EOS]},
                                 replace_extra_special_tokens=False)
    return tokenizer


def build(out_dir: str | Path, seed: int = 0, preset: str = "micro") -> Path:
    """Build and save a tiny Qwen2-Audio (model + processor + generation config) in ``out_dir``."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    sizes, out = start_build(out_dir, preset, PRESETS)

    tokenizer = build_tokenizer(sizes["vocab_size"])
    tokenizer.chat_template = CHAT_TEMPLATE
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
        padding_value=0.0, return_attention_mask=True,
    )
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE, audio_token=AUDIO_TOKEN,
                                    audio_bos_token=AUDIO_BOS, audio_eos_token=AUDIO_EOS)

    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "max_source_positions": 1500,
                      "activation_function": "gelu", "scale_embedding": False, **sizes["encoder"]},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "max_position_embeddings": 8192,
                     "bos_token_id": pad_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
                     "tie_word_embeddings": False, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
                     **sizes["text"]},
        audio_token_index=audio_id,
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id,
        do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
