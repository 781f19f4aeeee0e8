"""Tiny, randomly initialised Gemma 3n checkpoints, built offline.

Why: tests must run the *real* transformers code path of ``google/gemma-3n-E2B-it``
(``Gemma3nForConditionalGeneration``, ``Gemma3nProcessor``, ``Gemma3nAudioFeatureExtractor``, the published
chat template) without network, GPU or a 5 B download.

What is real:
- the model and config classes (``Gemma3nConfig`` with text, audio and vision sub-configs) at small sizes,
  keeping the real *structure*: AltUp (4 streams), LAuReL, per-layer input embeddings, sliding/full
  attention layers with KV-cache sharing in the last layers, activation sparsity in the first layers,
  final-logit soft-capping, tied embeddings; the USM Conformer audio encoder with the real time
  arithmetic (SSCP convs 3x3 stride 2x2 twice, chunked local attention 12/13/0, reduction 4: a 30 s clip
  gives exactly 188 soft tokens) and the multimodal embedders (``embed_audio`` / ``embed_vision``);
- the token-id layout the model relies on: text ids below ``vocab_size_per_layer_input``, then 128
  vision ids starting with ``<end_of_image>``/``<image_soft_token>``, then 128 audio ids starting with
  ``<end_of_audio>``/``<audio_soft_token>`` (real: 262144 / 262272 offsets, vocabulary 262400), so the
  padding embedding (last audio id) and the hard/soft multimodal embeddings work as published;
- the feature extractor with the published settings (16 kHz, 128 mels, 32 ms frames / 10 ms hop,
  125-7600 Hz, pre-emphasis 0.97; a batch is padded to its longest clip, anything past 30 s is cut);
- the tokenizer class the checkpoint uses (``GemmaTokenizer``: BPE with byte fallback and ``▁`` for
  spaces, ``add_bos_token=True``) trained here on :func:`audiotune.models.tiny.tokenizer_corpus`, carrying
  the real special tokens (``<pad>``/``<eos>``/``<bos>``/``<unk>``/``<mask>``, ``<start_of_turn>``,
  ``<end_of_turn>``, ``<start_of_audio>``, ``<audio_soft_token>``, ``<end_of_audio>`` and the image ones);
- the published chat template (``<start_of_turn>user`` / ``<start_of_turn>model`` turns closed by
  ``<end_of_turn>``, the system text folded into the first user turn, ``<audio_soft_token>`` for an audio
  part), the real processor (188 audio tokens per clip) and the real image processor (SigLIP, PIL backend);
- a greedy ``GenerationConfig`` stopping at ``<eos>`` or ``<end_of_turn>`` (as published).

What is not: the vision backbone. The real one is timm's ``mobilenetv5_300m_enc`` (~300 M parameters, and
still ~7 M at the smallest channel multiplier because its fusion head is fixed at 2048 channels); the tiny
checkpoint uses timm's ``test_efficientnet`` (~0.1 M, same EfficientNet block family) on 64x64 images
(4 soft tokens per image). Audio and text paths do not touch it.

Requirement: ``Gemma3nForConditionalGeneration`` always builds its vision tower through
``TimmWrapperModel``, so building or loading the model needs ``timm`` (and timm needs ``torchvision``).
Without them :func:`build` raises ``ModelFamilyError``; the processor alone needs neither.
"""

from __future__ import annotations

import json
from pathlib import Path

# google/gemma-3n-E2B-it's chat template (published verbatim).
GEMMA3N_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
                {{ '<audio_soft_token>' }}
            {%- elif item['type'] == 'image' -%}
                {{ '<image_soft_token>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# Text-range specials (real ids: 0-4, 105, 106, 255999, 256000).
TEXT_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                 "<start_of_image>", "<start_of_audio>"]
MULTIMODAL_VOCAB = 128  # ids per modality (vision, then audio) after the text vocabulary, as published
NAMED_TOKENS = {
    "image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
    "audio_token": "<audio_soft_token>", "boa_token": "<start_of_audio>", "eoa_token": "<end_of_audio>",
}
AUDIO_TOKEN = "<audio_soft_token>"
END_OF_TURN = "<end_of_turn>"
AUDIO_SOFT_TOKENS = 188  # per clip, fixed: what the encoder makes of a full 30 s window
IMAGE_SIZE = 64  # tiny vision: 64x64 input, test_efficientnet (stride 32) -> 2x2 = 4 soft tokens
VISION_ARCHITECTURE = "test_efficientnet"
VISION_CHANNELS = 256  # test_efficientnet's feature channels

PRESETS: dict[str, dict] = {
    "micro": {
        "text": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1,
                 "head_dim": 32, "intermediate_size": 128, "hidden_size_per_layer_input": 16, "laurel_rank": 8,
                 "num_kv_shared_layers": 2,
                 "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                 "activation_sparsity_pattern": [0.95, 0.0, 0.0, 0.0]},
        "audio": {"hidden_size": 32, "conf_num_hidden_layers": 1, "conf_num_attention_heads": 2,
                  "sscp_conv_channel_size": [8, 8]},
        "vocab_size": 1024,
    },
    "default": {
        "text": {"hidden_size": 256, "num_hidden_layers": 10, "num_attention_heads": 4, "num_key_value_heads": 1,
                 "head_dim": 64, "intermediate_size": 1024, "hidden_size_per_layer_input": 32, "laurel_rank": 16,
                 "num_kv_shared_layers": 5, "layer_types": None,  # the real 4 sliding + 1 full pattern
                 "activation_sparsity_pattern": [0.95] * 3 + [0.0] * 7},
        "audio": {"hidden_size": 128, "conf_num_hidden_layers": 2, "conf_num_attention_heads": 4,
                  "sscp_conv_channel_size": [32, 16]},
        "vocab_size": 2048,
    },
}


def build_tokenizer(vocab_size: int):
    """Gemma-style BPE (``▁`` for spaces, byte fallback) trained on the shared corpus, as ``GemmaTokenizer``.

    Layout: text specials, the 256 byte-fallback tokens, the trained pieces (``vocab_size`` bounds the
    text part; the small corpus may yield fewer), then 128 vision ids and 128 audio ids, each range starting
    with its end/soft tokens exactly as in the published vocabulary.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    from ..tiny import tokenizer_corpus

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    text_budget = vocab_size - 2 * MULTIMODAL_VOCAB
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=text_budget - len(TEXT_SPECIALS) - len(byte_tokens),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    trained = json.loads(tok.to_str())["model"]

    vocab: dict[str, int] = {}
    for token in TEXT_SPECIALS + byte_tokens:
        vocab[token] = len(vocab)
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    text_size = len(vocab)
    vocab["<end_of_image>"], vocab["<image_soft_token>"] = text_size, text_size + 1
    vocab["<end_of_audio>"] = text_size + MULTIMODAL_VOCAB
    vocab["<audio_soft_token>"] = text_size + MULTIMODAL_VOCAB + 1
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in trained["merges"]]

    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
                               extra_special_tokens=dict(NAMED_TOKENS))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>", *NAMED_TOKENS.values()]},
        replace_extra_special_tokens=False)
    tokenizer.model_max_length = 32768
    tokenizer.chat_template = GEMMA3N_CHAT_TEMPLATE
    return tokenizer, text_size


def _require_timm() -> None:
    """Fail early and clearly when the vision tower's backend cannot be imported."""
    from ...errors import ModelFamilyError

    try:
        import timm  # noqa: F401  (imports torchvision, which must match the installed torch)
    except Exception as error:  # ImportError, or torchvision's RuntimeError against a mismatched torch
        raise ModelFamilyError(
            "Gemma 3n's model class always builds its vision tower with timm, which needs a torchvision matching "
            f"the installed torch ({type(error).__name__}: {error}). Install both to build or load a Gemma 3n "
            "model; the processor alone needs neither.") from error


def build(out_dir: str | Path, seed: int = 0, preset: str = "micro") -> Path:
    """Build and save a tiny Gemma 3n (model + processor + generation config) in ``out_dir``."""
    from ...errors import ModelFamilyError

    if preset not in PRESETS:
        raise ModelFamilyError(f"Unknown tiny preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    _require_timm()

    import torch
    from transformers import (
        Gemma3nAudioFeatureExtractor,
        Gemma3nConfig,
        Gemma3nForConditionalGeneration,
        Gemma3nProcessor,
        GenerationConfig,
        SiglipImageProcessorPil,
    )

    sizes = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer, text_size = build_tokenizer(sizes["vocab_size"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in [*TEXT_SPECIALS, *NAMED_TOKENS.values()]}
    feature_extractor = Gemma3nAudioFeatureExtractor()  # the published settings are the defaults
    image_processor = SiglipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=2, do_normalize=False,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    tiny_image_tokens = (IMAGE_SIZE // 32) ** 2
    processor = Gemma3nProcessor(feature_extractor=feature_extractor, image_processor=image_processor,
                                 tokenizer=tokenizer, chat_template=GEMMA3N_CHAT_TEMPLATE,
                                 audio_seq_length=AUDIO_SOFT_TOKENS, image_seq_length=tiny_image_tokens)

    text = dict(sizes["text"])
    if text.get("layer_types") is None:
        text.pop("layer_types", None)
    eos_ids = [ids["<eos>"], ids[END_OF_TURN]]
    config = Gemma3nConfig(
        text_config={
            "model_type": "gemma3n_text", **text,
            "vocab_size": text_size + 2 * MULTIMODAL_VOCAB, "vocab_size_per_layer_input": text_size,
            "max_position_embeddings": 32768, "sliding_window": 512, "final_logit_softcapping": 30.0,
            "altup_num_inputs": 4, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
            "pad_token_id": ids["<pad>"], "eos_token_id": ids["<eos>"], "bos_token_id": ids["<bos>"],
            "tie_word_embeddings": True,
        },
        audio_config={
            "model_type": "gemma3n_audio", **sizes["audio"], "input_feat_size": 128,
            "vocab_size": MULTIMODAL_VOCAB, "vocab_offset": text_size + MULTIMODAL_VOCAB, "rms_norm_eps": 1e-6,
        },
        vision_config={
            "model_type": "gemma3n_vision", "architecture": VISION_ARCHITECTURE, "hidden_size": VISION_CHANNELS,
            "vocab_size": MULTIMODAL_VOCAB, "vocab_offset": text_size, "rms_norm_eps": 1e-6, "do_pooling": False,
            "num_labels": 2,
        },
        audio_soft_tokens_per_image=AUDIO_SOFT_TOKENS,
        vision_soft_tokens_per_image=tiny_image_tokens,
        boi_token_id=ids["<start_of_image>"], eoi_token_id=ids["<end_of_image>"],
        image_token_id=ids["<image_soft_token>"], boa_token_id=ids["<start_of_audio>"],
        eoa_token_id=ids["<end_of_audio>"], audio_token_id=ids[AUDIO_TOKEN],
        eos_token_id=eos_ids, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma3nForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"], eos_token_id=eos_ids, pad_token_id=ids["<pad>"],
        do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
