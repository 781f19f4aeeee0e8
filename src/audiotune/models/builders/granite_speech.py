"""Tiny, randomly initialised Granite Speech checkpoint (``ibm-granite/granite-speech-3.3-2b`` layout), built offline.

Why: tests must exercise the real Granite Speech code path (``GraniteSpeechForConditionalGeneration``,
``GraniteSpeechProcessor``, ``GraniteSpeechFeatureExtractor``, a GPT-2 style byte-level BPE
tokenizer and the Granite chat format) without network.

What is real here:

* the model: ``GraniteSpeechConfig`` → Conformer CTC encoder (``granite_speech_encoder``: 160-dim
  input = two stacked 80-bin log-mel frames, block attention over 200 frames, self-conditioning
  from the middle layer), the windowed Q-Former projector (``blip_2_qformer``, windows of 15
  encoder frames, 15 // 5 = 3 queries per window) and a Granite LM (embedding/attention/residual/
  logit multipliers, tied embeddings), ``has_lora_adapter=True``.
* the bundled modality LoRA: like the real checkpoint, the directory carries a PEFT adapter
  (``adapter_config.json`` + ``adapter_model.safetensors``) on the LM's ``q_proj``/``v_proj``;
  ``from_pretrained(dir)`` loads it automatically (transformers' PEFT integration) and
  ``generate`` enables it only when audio features are given. Its B matrices are random here so
  that it visibly changes the output.
* the tokenizer: ``GPT2Tokenizer`` (byte-level BPE, what Granite 3.x ships) trained here on
  :func:`tokenizer_corpus`, with Granite's specials: ``<|end_of_text|>`` at id 0 as bos/eos/pad/unk,
  ``<|start_of_role|>``, ``<|end_of_role|>``, ``<|tool_call|>`` and the audio placeholder
  ``<|audio|>`` (the last id, as in the real vocabulary), left padding.
* the chat template renders what Granite 3.3's renders for plain chats
  (``<|start_of_role|>ROLE<|end_of_role|>CONTENT<|end_of_text|>\\n``, a dated default system turn,
  ``<|start_of_role|>assistant<|end_of_role|>`` as generation prompt); in addition it accepts
  content *parts* (the real one only takes strings with ``<|audio|>`` typed in): an audio part
  becomes ``<|audio|>``, text parts follow in order.
* the feature extractor: ``GraniteSpeechFeatureExtractor`` with the real settings (16 kHz, n_fft 512,
  win 400, hop 160, 80 mels, projector window 15 / downsample 5).

Using the processor needs ``torchaudio`` (the feature extractor computes its mel spectrogram with
``torchaudio.transforms.MelSpectrogram``); building only writes files and does not.
"""

from __future__ import annotations

import json
from pathlib import Path

HUB_ID = "ibm-granite/granite-speech-3.3-2b"
AUDIO_TOKEN = "<|audio|>"
END_OF_TEXT = "<|end_of_text|>"
ROLE_SPECIALS = ["<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"]

# Granite 3.3's chat template for plain chats (no tools/documents/thinking), extended to content parts.
GRANITE_SPEECH_CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part.get('type') == 'audio' or 'audio' in part or 'path' in part -%}<|audio|>"
    "{%- elif part.get('type') == 'text' or 'text' in part -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = render(messages[0]['content']) -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = \"Knowledge Cutoff Date: April 2024.\\nToday's Date: \" + strftime_now('%B %d, %Y')"
    " + \".\\nYou are Granite, developed by IBM. You are a helpful AI assistant.\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\\n' -}}"
    "{%- for message in loop_messages -%}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + render(message['content'])"
    " + '<|end_of_text|>\\n' -}}"
    "{%- if loop.last and add_generation_prompt -%}{{- '<|start_of_role|>assistant<|end_of_role|>' -}}{%- endif -%}"
    "{%- endfor -%}"
)

FEATURE_EXTRACTOR = {
    "sampling_rate": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 80,
    "projector_window_size": 15, "projector_downsample_rate": 5,
}

PRESETS: dict[str, dict] = {
    "micro": {
        "encoder": {"hidden_dim": 32, "num_layers": 2, "num_heads": 2, "dim_head": 16, "output_dim": 42},
        "projector": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "text": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 128},
        "lora_r": 4,
        "vocab_size": 1024,
    },
    "default": {
        "encoder": {"hidden_dim": 128, "num_layers": 4, "num_heads": 4, "dim_head": 32, "output_dim": 42},
        "projector": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "intermediate_size": 512},
        "text": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "intermediate_size": 1024},
        "lora_r": 8,
        "vocab_size": 2048,
    },
}


def build_tokenizer(vocab_size: int):
    """Byte-level BPE trained on the tiny corpus, wrapped as Granite's ``GPT2Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    from ..tiny import tokenizer_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ROLE_SPECIALS) - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[END_OF_TEXT],  # id 0, as in Granite's vocabulary
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    tokenizer = GPT2Tokenizer(
        vocab=model["vocab"], merges=merges, unk_token=END_OF_TEXT, bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT, pad_token=END_OF_TEXT, add_prefix_space=False, padding_side="left",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [*ROLE_SPECIALS, AUDIO_TOKEN]})
    tokenizer.model_max_length = 131072
    tokenizer.chat_template = GRANITE_SPEECH_CHAT_TEMPLATE
    return tokenizer


def _save_processor(out: Path, tokenizer) -> None:
    """``GraniteSpeechProcessor.save_pretrained`` when torchaudio is importable, else the same files by hand."""
    from transformers.utils import is_torchaudio_available

    if is_torchaudio_available():
        try:
            from transformers import GraniteSpeechFeatureExtractor, GraniteSpeechProcessor

            feature_extractor = GraniteSpeechFeatureExtractor(**FEATURE_EXTRACTOR)
            GraniteSpeechProcessor(audio_processor=feature_extractor, tokenizer=tokenizer,
                                   audio_token=AUDIO_TOKEN, chat_template=GRANITE_SPEECH_CHAT_TEMPLATE,
                                   ).save_pretrained(out)
            return
        except ImportError:  # torchaudio present but not loadable with this torch
            pass
    tokenizer._set_processor_class("GraniteSpeechProcessor")  # as ProcessorMixin.save_pretrained does
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(GRANITE_SPEECH_CHAT_TEMPLATE, encoding="utf-8")
    audio_processor = {
        "feature_extractor_type": "GraniteSpeechFeatureExtractor",
        "feature_size": FEATURE_EXTRACTOR["n_mels"],
        "melspec_kwargs": {"hop_length": 160, "n_fft": 512, "n_mels": 80, "sample_rate": 16000, "win_length": 400},
        "padding_side": "right",
        "padding_value": 0.0,
        "projector_downsample_rate": 5,
        "projector_window_size": 15,
        "return_attention_mask": True,
        "sampling_rate": 16000,
    }
    processor = {"audio_processor": audio_processor, "audio_token": AUDIO_TOKEN,
                 "processor_class": "GraniteSpeechProcessor"}
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n",
                                               encoding="utf-8")


def build(out_dir: str | Path, seed: int = 0, preset: str = "micro") -> Path:
    """Build and save a tiny Granite Speech (model + bundled LoRA, processor files, generation config)."""
    import torch
    from peft import LoraConfig
    from transformers import GenerationConfig, GraniteSpeechConfig, GraniteSpeechForConditionalGeneration

    if preset not in PRESETS:
        from ...errors import ModelFamilyError

        raise ModelFamilyError(f"Unknown tiny preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    sizes = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(sizes["vocab_size"])
    _save_processor(out, tokenizer)

    eot_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    text = sizes["text"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    config = GraniteSpeechConfig(
        encoder_config={"model_type": "granite_speech_encoder", "input_dim": 160, "context_size": 200,
                        "max_pos_emb": 512, "feedforward_mult": 4, "conv_kernel_size": 15,
                        "conv_expansion_factor": 2, "dropout": 0.1, **sizes["encoder"]},
        projector_config={"model_type": "blip_2_qformer", "encoder_hidden_size": sizes["encoder"]["hidden_dim"],
                          "cross_attention_frequency": 1, "hidden_act": "gelu", "max_position_embeddings": 2048,
                          "layer_norm_eps": 1e-12, "use_qformer_text_input": False, **sizes["projector"]},
        text_config={"model_type": "granite", "vocab_size": len(tokenizer), "max_position_embeddings": 131072,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0},
                     "embedding_multiplier": 12.0, "logits_scaling": 8.0, "residual_multiplier": 0.22,
                     "attention_multiplier": 1.0 / head_dim, "rms_norm_eps": 1e-05, "tie_word_embeddings": True,
                     "bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id, **text},
        audio_token_index=audio_id,
        has_lora_adapter=True,
        downsample_rate=5,
        window_size=15,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = GraniteSpeechForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id, do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out)
    # The bundled modality LoRA (real one: q_proj/v_proj of the LM), saved as a PEFT adapter next to
    # the weights. Built with peft directly: transformers' own ``add_adapter`` needs peft >= 0.22.
    # Random B so that it is not a no-op.
    from peft import get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=sizes["lora_r"], lora_alpha=2 * sizes["lora_r"],
                                                  lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                                  bias="none"))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    # Save it under the key names of the published adapter (written when the LM was a nested
    # ``language_model.model``, like the base weights that save_pretrained writes above).
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    peft_model.peft_config["default"].save_pretrained(out)
    state = get_peft_model_state_dict(peft_model)
    legacy = {k.replace("base_model.model.model.language_model.", "base_model.model.language_model.model."):
              v.detach().contiguous() for k, v in state.items()}
    save_file(dict(sorted(legacy.items())), out / "adapter_model.safetensors", metadata={"format": "pt"})
    adapter_config = out / "adapter_config.json"
    cfg = json.loads(adapter_config.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = None  # the directory itself is the base model (no path baked in)
    cfg["target_modules"] = sorted(cfg["target_modules"])  # peft keeps a set: fix the order
    adapter_config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
