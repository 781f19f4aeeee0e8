"""Tiny, randomly initialised Qwen2.5-Omni *thinker* (audio + text in, text out), built offline.

Why: tests and benchmarks exercise the real Qwen2.5-Omni thinker code path (``from_pretrained`` of
``Qwen2_5OmniThinkerForConditionalGeneration``, the real chat template, feature extractor and
``Qwen2_5OmniProcessor``) without the network. Only the thinker is built: no talker, no token2wav
(audiotune trains and serves text output only), so the folder's ``config.json`` is a
``qwen2_5_omni_thinker`` config, which ``AutoConfig`` and ``AutoModelForMultimodalLM`` resolve.

What is real: the config classes (``Qwen2_5OmniThinkerConfig`` with its audio, vision and text
sub-configs, multimodal RoPE sections scaled to the tiny head size), the model class, and the
processor as Qwen/Qwen2.5-Omni-7B ships it: ``WhisperFeatureExtractor`` with 128 mel bins at 16 kHz,
hop 160, ``chunk_length`` 300 s (4.8 M samples, 30000 frames: the Omni encoder runs 2 s chunks, not
one 30 s window), a ``Qwen2VLImageProcessor`` and ``Qwen2VLVideoProcessor`` (the processor class
requires both even for audio-only input), the named multimodal special tokens (``<|AUDIO|>`` wrapped
in ``<|audio_bos|>``/``<|audio_eos|>``, ``<|IMAGE|>``, ``<|VIDEO|>``, ``<|vision_bos|>``/``<|vision_eos|>``),
ChatML turns, and the published chat template. What is small: every size, and a byte-level BPE
vocabulary of a few hundred tokens trained here on :func:`audiotune.models.tiny.tokenizer_corpus`.
The vision tower is kept minimal in both presets (it is part of the thinker class but unused for audio).

transformers 5.24's ``Qwen2_5OmniProcessor`` cannot be constructed without torchvision (its
``video_processor`` attribute is checked against a torchvision-only base class). Where torchvision is
missing, the builder writes the same processor files from the component classes (tokenizer, feature
extractor, and the processor/preprocessor JSON ``save_pretrained`` would write); loading them with
``AutoProcessor`` still needs torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tiny import start_build

AUDIO_TOKEN = "<|AUDIO|>"
NAMED_TOKENS = {
    "audio_token": AUDIO_TOKEN,
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
EXTRA_TOKENS = [t for t in NAMED_TOKENS.values() if t != AUDIO_TOKEN] + ["<|vision_pad|>"]

# The published template of Qwen/Qwen2.5-Omni-7B, verbatim: a default system turn, ChatML turns, and per
# audio part "<|audio_bos|><|AUDIO|><|audio_eos|>" with no separator (``add_audio_id`` adds "Audio N: ").
# It tests ``content['type'] == 'audio'``, so ``{"type": "audio", "path": ...}`` parts render too.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_VISION = {"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "fullatt_block_indexes": [0]}

# mrope_section splits head_dim/2 rotary pairs over (time, height, width) as the real 128-dim heads do
# (16, 24, 24 of 64): a quarter, three eighths, three eighths.
PRESETS: dict[str, dict] = {
    "default": {
        "encoder": {"d_model": 128, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 512},
        "text": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "intermediate_size": 1024},
        "mrope_section": [4, 6, 6],
        "vision": _VISION,
        "vocab_size": 2048,
    },
    "micro": {
        "encoder": {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64},
        "text": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 128},
        "mrope_section": [2, 3, 3],
        "vision": _VISION,
        "vocab_size": 1024,
    },
}

# The published preprocessor_config.json's image settings (Qwen2-VL's: CLIP mean/std, 14 px patches merged 2x2).
_CLIP_MEAN_STD = {"image_mean": [0.48145466, 0.4578275, 0.40821073],
                  "image_std": [0.26862954, 0.26130258, 0.27577711]}
_IMAGE_PROCESSOR = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
                    "temporal_patch_size": 2, **_CLIP_MEAN_STD}
# What ``save_pretrained`` writes for Qwen2VLImageProcessor(**_IMAGE_PROCESSOR) and Qwen2VLVideoProcessor()
# (checked byte for byte), for the no-torchvision path.
_FLAGS = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True, "resample": 3,
          "rescale_factor": 1 / 255, "merge_size": 2, "patch_size": 14, "temporal_patch_size": 2}
_IMAGE_PROCESSOR_SAVED = {**_FLAGS, **_CLIP_MEAN_STD, "image_processor_type": "Qwen2VLImageProcessor",
                          "size": {"longest_edge": 12845056, "shortest_edge": 3136}}
_VIDEO_PROCESSOR_SAVED = {**_FLAGS, **_CLIP_MEAN_STD, "video_processor_type": "Qwen2VLVideoProcessor",
                          "do_sample_frames": False, "max_frames": 768, "max_video_tokens": 128000, "min_frames": 4,
                          "return_metadata": False, "size": {"longest_edge": 602112, "shortest_edge": 100352}}


def build_tokenizer(vocab_size: int):
    """The shared tiny Qwen2 tokenizer plus Qwen2.5-Omni's multimodal tokens, the named ones as attributes.

    ``Qwen2_5OmniProcessor`` reads ``tokenizer.audio_token``, ``tokenizer.audio_token_id`` and the like; a
    saved tokenizer_config.json keeps them as top-level ``*_token`` keys, which ``from_pretrained`` restores.
    """
    from ..tiny import build_tokenizer as build_chatml_tokenizer

    tokenizer = build_chatml_tokenizer(vocab_size - len(EXTRA_TOKENS), AUDIO_TOKEN)
    tokenizer.add_special_tokens({"extra_special_tokens": EXTRA_TOKENS}, replace_extra_special_tokens=False)
    # No public API names a special token after construction; this is what __init__ does with ``*_token`` kwargs.
    tokenizer._set_model_specific_special_tokens(dict(NAMED_TOKENS))
    return tokenizer


def _torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def build(out_dir: str | Path, seed: int = 0, preset: str = "micro") -> Path:
    """Build and save a tiny Qwen2.5-Omni thinker (model + processor + generation config) in ``out_dir``."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    sizes, out = start_build(out_dir, preset, PRESETS)

    tokenizer = build_tokenizer(sizes["vocab_size"])
    tokenizer.chat_template = CHAT_TEMPLATE
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300, n_fft=400,
        padding_value=0.0, dither=0.0, return_attention_mask=True,
    )

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in NAMED_TOKENS.items()}
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bos_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    hidden = sizes["text"]["hidden_size"]
    config = Qwen2_5OmniThinkerConfig(
        audio_config={"model_type": "qwen2_5_omni_audio_encoder", "num_mel_bins": 128, "max_source_positions": 1500,
                      "n_window": 100, "output_dim": hidden, "activation_function": "gelu",
                      "scale_embedding": False, **sizes["encoder"]},
        vision_config={"model_type": "qwen2_5_omni_vision_encoder", "hidden_act": "silu", "in_channels": 3,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                       "out_hidden_size": hidden, **sizes["vision"]},
        text_config={"model_type": "qwen2_5_omni_text", "vocab_size": len(tokenizer), "max_position_embeddings": 32768,
                     "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "use_sliding_window": False,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                         "mrope_section": sizes["mrope_section"]},
                     "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, **sizes["text"]},
        audio_token_index=ids["audio_token"],
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
        vision_token_id=tokenizer.convert_tokens_to_ids("<|vision_pad|>"),
        user_token_id=tokenizer.convert_tokens_to_ids("user"),
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id,
        do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out)
    _save_processor(out, tokenizer, feature_extractor)
    return out


def _save_processor(out: Path, tokenizer, feature_extractor) -> None:
    if _torchvision_available():
        from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        processor = Qwen2_5OmniProcessor(
            image_processor=Qwen2VLImageProcessor(**_IMAGE_PROCESSOR),
            video_processor=Qwen2VLVideoProcessor(),
            feature_extractor=feature_extractor,
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
        )
        processor.save_pretrained(out)
        return
    # Without torchvision: the same files, written from the components (see the module docstring).
    tokenizer._set_processor_class("Qwen2_5OmniProcessor")
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    feature_config = feature_extractor.to_dict()
    feature_config.pop("processor_class", None)
    processor_config = {
        "feature_extractor": feature_config,
        "image_processor": _IMAGE_PROCESSOR_SAVED,
        "processor_class": "Qwen2_5OmniProcessor",
        "video_processor": _VIDEO_PROCESSOR_SAVED,
    }
    (out / "processor_config.json").write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")

