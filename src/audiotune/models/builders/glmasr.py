"""Tiny, randomly initialised GLM-ASR checkpoint (``GlmAsrForConditionalGeneration``), built offline.

Why: tests must run the real GLM-ASR code path (real config/model/processor classes,
``from_pretrained(dir)``, the real chat template and Whisper features) with no network and no GPU.

What is real: ``GlmAsrConfig`` (a Whisper-like encoder with partial rotary attention, whose outputs are
merged 4 at a time, i.e. ``intermediate_size = 4 × hidden_size``, a 2-layer projector and a Llama LM with
tied embeddings, as in ``zai-org/GLM-ASR-Nano-2512``), ``GlmAsrForConditionalGeneration``,
``GlmAsrProcessor`` (30 s windows, ``max_audio_len=655`` i.e. at most 21 windows = 630 s, ``<|pad|>``
expanded to N copies), ``WhisperFeatureExtractor(feature_size=128)`` at 16 kHz, a fast
``TokenizersBackend`` tokenizer (the class the checkpoint names) carrying GLM-4's special tokens
(``<|endoftext|>`` as eos *and* pad, ``<|system|>``/``<|user|>``/``<|assistant|>``/``<|observation|>`` role
markers, ``<|begin_of_audio|>``/``<|pad|>``/``<|end_of_audio|>``) and the published chat template, verbatim.
The generation stops on GLM's three eos ids (``<|endoftext|>``, ``<|user|>``, ``<|observation|>``).
What is not: the sizes, the weights, the BPE merges (trained here on
:func:`audiotune.models.tiny.tokenizer_corpus`) and the exact ids of the special tokens.

Note: GLM's template closes no turn: an assistant reply is followed directly by the next role marker
(``<|user|>``) and the last reply by nothing, so trainers must append the end-of-turn token themselves.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ...errors import ModelFamilyError
from ..tiny import PRESETS as AF3_PRESETS
from ..tiny import start_build, tokenizer_corpus

AUDIO_TOKEN = "<|pad|>"
END_OF_TURN = "<|user|>"
EOS_TOKEN = "<|endoftext|>"

# Verbatim from the published checkpoint (transformers' convert_glmasr_weights_to_hf.py): the audio part
# renders ``<|begin_of_audio|><|pad|><|end_of_audio|><|user|>\n`` (a second user marker before the text).
GLMASR_CHAT_TEMPLATE = """{%- macro to_text(content) -%}
{%- if content is string -%}
{{- content -}}
{%- elif content is iterable and content is not mapping -%}
{%- for item in content -%}
{%- if item is mapping and item.type == 'text' and item.text is defined -%}
{{- item.text -}}
{%- elif item is mapping and (item.type == 'audio' or 'audio' in item) -%}
<|begin_of_audio|><|pad|><|end_of_audio|><|user|>
{% elif item is string -%}
{{- item -}}
{%- endif -%}
{%- endfor -%}
{%- else -%}
{{- content -}}
{%- endif -%}
{%- endmacro -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}
<|system|>
{{ to_text(m.content) | trim }}
{%- elif m.role == 'user' -%}
<|user|>
{{ to_text(m.content) | trim }}
{%- elif m.role == 'assistant' -%}
<|assistant|>
{{ to_text(m.content) | trim }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{% endif -%}"""

# GLM-4's special tokens; the first ten in GLM-4's order, so that the checkpoint's eos ids
# (59246, 59253, 59255 = base + 0, 7, 9) map to <|endoftext|>, <|user|>, <|observation|> here too.
GLM_SPECIALS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
    AUDIO_TOKEN, "<|begin_of_audio|>", "<|end_of_audio|>", "<|begin_of_transcription|>", "<|end_of_transcription|>",
]
EOS_TOKENS = ["<|endoftext|>", "<|user|>", "<|observation|>"]

# AF3's sizes, except that GLM-ASR merges 4 encoder frames per token and so needs intermediate_size = 4 × hidden_size.
PRESETS: dict[str, dict] = copy.deepcopy(AF3_PRESETS)
PRESETS["micro"]["encoder"]["intermediate_size"] = 4 * PRESETS["micro"]["encoder"]["hidden_size"]


def build_glm_tokenizer(vocab_size: int):
    """Train a byte-level BPE and wrap it as the fast ``TokenizersBackend`` GLM-ASR ships, with GLM's specials."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import TokenizersBackend

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(GLM_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GLM_SPECIALS])
    tokenizer = TokenizersBackend(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                  clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in GLM_SPECIALS if t != EOS_TOKEN]})
    tokenizer.model_max_length = 8192
    return tokenizer


def build(out_dir: str | Path, seed: int = 0, preset: str = "micro") -> Path:
    """Build and save a tiny GLM-ASR (model + processor + generation config) in ``out_dir``."""
    import torch
    from transformers import (
        GenerationConfig,
        GlmAsrConfig,
        GlmAsrForConditionalGeneration,
        GlmAsrProcessor,
        WhisperFeatureExtractor,
    )

    sizes, out = start_build(out_dir, preset, PRESETS)

    tokenizer = build_glm_tokenizer(sizes["vocab_size"])
    tokenizer.chat_template = GLMASR_CHAT_TEMPLATE
    # As published: return_attention_mask stays False here; GlmAsrProcessor asks for the mask itself.
    feature_extractor = WhisperFeatureExtractor(feature_size=128)
    processor = GlmAsrProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                                chat_template=GLMASR_CHAT_TEMPLATE, audio_token=AUDIO_TOKEN, max_audio_len=655)

    pad_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS]
    encoder = sizes["encoder"]
    if encoder["intermediate_size"] != 4 * encoder["hidden_size"]:  # the projector merges 4 encoder frames
        raise ModelFamilyError("GLM-ASR needs encoder intermediate_size == 4 * hidden_size.")
    config = GlmAsrConfig(
        audio_config={"model_type": "glmasr_encoder", "num_mel_bins": 128, "max_position_embeddings": 1500,
                      **encoder},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "max_position_embeddings": 8192,
                     "bos_token_id": None, "eos_token_id": eos_ids, "pad_token_id": pad_id,
                     "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
                     **sizes["text"]},
        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
        tie_word_embeddings=True,  # the class default, stated: the published lm_head equals the embeddings
    )
    torch.manual_seed(seed)
    model = GlmAsrForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id, do_sample=False,
                                               max_new_tokens=64)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
