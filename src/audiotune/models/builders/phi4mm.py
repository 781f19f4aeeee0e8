"""Tiny, randomly initialised Phi-4-multimodal checkpoints, built offline.

Why: tests must run the *real* transformers code path of ``microsoft/Phi-4-multimodal-instruct``
(``Phi4MultimodalForCausalLM``, ``Phi4MultimodalProcessor``, ``Phi4MultimodalFeatureExtractor``, the
published chat template) without network, GPU or a 5.6 B download.

What is real:
- the model class and config classes (``Phi4MultimodalConfig`` with its audio and vision sub-configs) at
  small sizes, keeping the real *structure*: fused ``qkv_proj`` / ``gate_up_proj`` LM linears, partial
  rotary (0.75) with LongRoPE, tied embeddings, the Conformer audio encoder with its 8x NeMo-conv time
  reduction, 80 mel bins and T5 relative bias (max distance 500), the two-layer speech projector, and a
  SigLIP-style vision tower (448 px, 14 px patches) inside ``model.embed_tokens_extend``;
- the feature extractor with the published settings (16 kHz, 80 mels, 25 ms window / 10 ms hop, 8x
  compression: ``ceil(frames / 8)`` audio tokens per clip);
- the tokenizer class the native checkpoint uses (``GPT2Tokenizer``, byte-level BPE, trained here on
  :func:`audiotune.models.tiny.tokenizer_corpus`) with the real special tokens ``<|endoftext|>``
  (bos/eos/pad/unk), ``<|image|>``, ``<|audio|>``, ``<|system|>``, ``<|user|>``, ``<|assistant|>``,
  ``<|end|>`` and the tool tokens, in the published relative order;
- the processor's published chat template (``<|role|>content<|end|>`` turns, ``<|audio|>`` for an audio
  part, ``eos_token`` appended when no generation prompt is asked for);
- a greedy ``GenerationConfig`` stopping at ``<|end|>`` or ``<|endoftext|>`` (as published).

What is not: the image processor. The real ``Phi4MultimodalImageProcessor`` exists only with a torchvision
backend, and this project's CPU torch has no matching torchvision, so the processor is saved with a
PIL-backed ``SiglipImageProcessorPil`` (448x448, mean/std 0.5, bicubic: the real resize/normalisation).
Audio and text processing are unaffected; image inputs are not supported by the tiny checkpoint.
The real checkpoint also ships a ``speech-lora`` adapter that its card loads for audio tasks; the tiny
checkpoint has none.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tiny import start_build

# The native checkpoint's processor chat template (transformers' ``Phi4MultimodalProcessor``): an audio part
# renders as ``<|audio|>``, a text part as its text, each turn closes with ``<|end|>``, and a rendering without
# a generation prompt ends with the eos token.
PHI4MM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'audio' %}{{ '<|audio|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{ '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}"
    "{% endif %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

# Special tokens in the published relative order (real ids: 199999, 200010, 200011, 200019..200028).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|image|>", "<|audio|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>",
    "<|tool|>", "<|/tool|>", "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>", "<|tag|>",
]
AUDIO_TOKEN = "<|audio|>"
IMAGE_TOKEN = "<|image|>"
END_OF_TURN = "<|end|>"
EOS_TOKEN = "<|endoftext|>"

PRESETS: dict[str, dict] = {
    "micro": {
        "text": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 128},
        "audio": {"hidden_size": 32, "num_blocks": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "vocab_size": 1024,
    },
    "default": {
        "text": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "intermediate_size": 1024},
        "audio": {"hidden_size": 128, "num_blocks": 2, "num_attention_heads": 4, "intermediate_size": 192},
        "vision": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
        "vocab_size": 2048,
    },
}


def build_tokenizer(vocab_size: int):
    """Byte-level BPE trained on the shared corpus, specials appended last, wrapped as ``GPT2Tokenizer``.

    ``vocab_size`` is an upper bound: the small corpus yields fewer merges, and the model's vocabulary is sized
    to the tokenizer so that every id it can generate decodes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    from ..tiny import tokenizer_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    vocab = dict(trained["vocab"])
    base = len(vocab)
    for offset, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = base + offset
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in trained["merges"]]
    tokenizer = GPT2Tokenizer(
        vocab=vocab, merges=merges, unk_token=EOS_TOKEN, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN, extra_special_tokens={"image_token": IMAGE_TOKEN, "audio_token": AUDIO_TOKEN},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]},
                                 replace_extra_special_tokens=False)
    tokenizer.model_max_length = 131072
    tokenizer.chat_template = PHI4MM_CHAT_TEMPLATE
    return tokenizer


def build(out_dir: str | Path, seed: int = 0, preset: str = "micro") -> Path:
    """Build and save a tiny Phi-4-multimodal (model + processor + generation config) in ``out_dir``."""
    import torch
    from transformers import (
        GenerationConfig,
        Phi4MultimodalConfig,
        Phi4MultimodalFeatureExtractor,
        Phi4MultimodalForCausalLM,
        Phi4MultimodalProcessor,
        SiglipImageProcessorPil,
    )

    sizes, out = start_build(out_dir, preset, PRESETS)

    tokenizer = build_tokenizer(sizes["vocab_size"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    audio_processor = Phi4MultimodalFeatureExtractor()  # the published settings are the defaults
    image_processor = SiglipImageProcessorPil(
        size={"height": 448, "width": 448}, resample=3, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = Phi4MultimodalProcessor(image_processor=image_processor, audio_processor=audio_processor,
                                        tokenizer=tokenizer, chat_template=PHI4MM_CHAT_TEMPLATE)

    text = sizes["text"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    rotary_half = int(head_dim * 0.75) // 2
    # LongRoPE like the published config: short factors 1.0, long factors rising (here a smooth ramp from 1.0
    # to 47.77, the published range).
    long_factor = [round(1.0 + 46.77 * (i / max(1, rotary_half - 1)) ** 2, 4) for i in range(rotary_half)]
    audio_hidden = sizes["audio"]["hidden_size"]
    config = Phi4MultimodalConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                         "short_factor": [1.0] * rotary_half, "long_factor": long_factor},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        sliding_window=262144,
        bos_token_id=ids[EOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[EOS_TOKEN],
        audio_config={
            **sizes["audio"], "ext_pw_out_channel": audio_hidden, "depthwise_separable_out_channel": audio_hidden,
            "nemo_conv_channels": audio_hidden, "input_size": 80, "time_reduction": 8, "bias_max_distance": 500,
            "audio_token_id": ids[AUDIO_TOKEN],
        },
        vision_config={**sizes["vision"], "image_size": 448, "crop_size": 448, "patch_size": 14,
                       "image_token_id": ids[IMAGE_TOKEN]},
        **text,
    )
    torch.manual_seed(seed)
    model = Phi4MultimodalForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[EOS_TOKEN], eos_token_id=[ids[END_OF_TURN], ids[EOS_TOKEN]], pad_token_id=ids[EOS_TOKEN],
        do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
