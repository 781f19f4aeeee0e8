"""Tiny, randomly initialised Voxtral checkpoint (``mistralai/Voxtral-Mini-3B-2507`` layout), built offline.

Why: tests must exercise the real Voxtral code path (``VoxtralForConditionalGeneration``,
``VoxtralProcessor``, the Whisper feature extractor and Mistral's own tokenizer) without network.

What is real here:

* the model: ``VoxtralConfig`` → Whisper-style encoder (``voxtral_encoder``, 128 mel bins, 1500
  positions per 30 s window: the processor always feeds 3000-frame chunks, so this cannot shrink),
  the 2-layer GELU projector that concatenates 4 encoder frames (``intermediate_size = 4 ×
  hidden_size`` as in the real checkpoint, hence 375 audio tokens per 30 s window) and a Llama LM.
* the tokenizer: a *tekken* file (``tekken.json``, Mistral's native format read by
  ``mistral-common`` through transformers' ``MistralCommonBackend``) with the real special-token
  ranks (``<s>``=1, ``</s>``=2, ``[INST]``=3, ``[/INST]``=4, ``<pad>``=11, ``[AUDIO]``=24 — the id
  ``VoxtralProcessor`` hard-codes —, ``[BEGIN_AUDIO]``=25, ``[TRANSCRIBE]``=34), the real
  pre-tokenisation regex and the real audio section (16 kHz, 12.5 audio tokens/s, audio padded to
  30 s chunks). The byte-level BPE ranks are trained here on :func:`tokenizer_corpus` with the
  ``tokenizers`` library and written in tekken's rank order (256 single bytes, then merges in
  training order), which is exactly how tiktoken/tekken apply BPE.
* no Jinja chat template: like the real checkpoint, the prompt format comes from mistral-common
  (``<s>[INST][BEGIN_AUDIO][AUDIO]×N text[/INST]reply</s>``).
* the feature extractor: ``WhisperFeatureExtractor`` with Voxtral's settings (128 mel bins, 16 kHz,
  hop 160, n_fft 400, 30 s chunks).

What is small: special-token count (64 instead of 1000), vocabulary (whatever the tiny corpus
yields, ≈670 ids in both presets), layer counts and widths.

Using the processor needs ``mistral-common`` (``MistralCommonBackend``); building only writes files
and does not (with it installed the processor files come from ``VoxtralProcessor.save_pretrained``,
without it the same bytes are written directly). Load it with
``AutoProcessor.from_pretrained(dir, mode="agnostic")``: the default ``"test"`` mode rejects a
conversation that ends with the assistant's reply (training), ``"finetuning"`` rejects one that does
not (generation).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

HUB_ID = "mistralai/Voxtral-Mini-3B-2507"

# tiktoken pattern of Mistral's tekken tokenizers.
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_VERSION = "v7"  # the audio models (Voxtral 2507) ship a v7 tekken file
NUM_SPECIAL_TOKENS = 64  # the real file has 1000; every named one below keeps its real rank
NAMED_SPECIAL_TOKENS = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]",
    11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]", 24: "[AUDIO]",
    25: "[BEGIN_AUDIO]", 34: "[TRANSCRIBE]",
}
BOS_ID, EOS_ID, PAD_ID, AUDIO_ID = 1, 2, 11, 24
AUDIO_SECTION = {
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "chunk_length_s": 30.0,
}

PRESETS: dict[str, dict] = {
    "micro": {
        "encoder": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128},
        "text": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "head_dim": 16, "intermediate_size": 128},
        "vocab_size": 1024,
    },
    "default": {
        "encoder": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512},
        "text": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "head_dim": 32, "intermediate_size": 1024},
        "vocab_size": 2048,
    },
}


def build_tekken(vocab_size: int) -> dict:
    """A tekken tokenizer file (as a dict): byte-level BPE trained on the tiny corpus, real specials."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from ..tiny import tokenizer_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TEKKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - NUM_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]

    unicode_to_byte = {u: b for b, u in bytes_to_unicode().items()}

    def to_bytes(piece: str) -> bytes:
        return bytes(unicode_to_byte[ch] for ch in piece)

    ranks = [bytes([i]) for i in range(256)]
    for merge in merges:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        ranks.append(to_bytes(left) + to_bytes(right))

    def as_str(token: bytes) -> str | None:
        try:
            return token.decode("utf-8")
        except UnicodeDecodeError:
            return None

    vocab = [{"rank": i, "token_bytes": base64.b64encode(t).decode("ascii"), "token_str": as_str(t)}
             for i, t in enumerate(ranks)]
    specials = [{"rank": i, "token_str": NAMED_SPECIAL_TOKENS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                for i in range(NUM_SPECIAL_TOKENS)]
    return {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": NUM_SPECIAL_TOKENS + len(vocab),
            "default_num_special_tokens": NUM_SPECIAL_TOKENS,
            "version": TEKKEN_VERSION,
        },
        "vocab": vocab,
        "special_tokens": specials,
        "audio": AUDIO_SECTION,
    }


def build(out_dir: str | Path, seed: int = 0, preset: str = "micro") -> Path:
    """Build and save a tiny Voxtral (model, tekken tokenizer, processor files, generation config)."""
    import torch
    from transformers import (
        GenerationConfig,
        VoxtralConfig,
        VoxtralForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    if preset not in PRESETS:
        from ...errors import ModelFamilyError

        raise ModelFamilyError(f"Unknown tiny preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    sizes = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tekken = build_tekken(sizes["vocab_size"])
    vocab_size = tekken["config"]["default_vocab_size"]
    (out / "tekken.json").write_text(json.dumps(tekken, ensure_ascii=False), encoding="utf-8")

    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
        padding_value=0.0, return_attention_mask=False,
    )
    from transformers.utils import is_mistral_common_available

    if is_mistral_common_available():
        from transformers import MistralCommonBackend, VoxtralProcessor

        tokenizer = MistralCommonBackend(tokenizer_path=str(out / "tekken.json"))
        VoxtralProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)
    else:
        # Byte-identical to what VoxtralProcessor.save_pretrained writes next to tekken.json; the
        # processor itself can only be instantiated with mistral-common installed.
        processor_dict = {"feature_extractor": feature_extractor.to_dict(), "processor_class": "VoxtralProcessor"}
        processor_dict["feature_extractor"].pop("processor_class", None)
        (out / "processor_config.json").write_text(
            json.dumps(processor_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    config = VoxtralConfig(
        audio_config={"model_type": "voxtral_encoder", "num_mel_bins": 128, "max_source_positions": 1500,
                      **sizes["encoder"]},
        text_config={"model_type": "llama", "vocab_size": vocab_size, "max_position_embeddings": 131072,
                     "rope_theta": 100000000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
                     "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, **sizes["text"]},
        audio_token_id=AUDIO_ID,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = VoxtralForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out)
    return out
