"""The tiny builder makes a real AF3 checkpoint that stock transformers loads, deterministically."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

from audiotune.errors import ModelFamilyError
from audiotune.models.tiny import build_tiny


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_loads_with_stock_transformers(micro_af3):
    processor = AutoProcessor.from_pretrained(micro_af3)
    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(micro_af3)
    assert type(processor).__name__ == "AudioFlamingo3Processor"
    assert processor.feature_extractor.feature_size == 128
    assert model.config.audio_token_id == processor.tokenizer.convert_tokens_to_ids("<sound>")
    assert model.config.text_config.vocab_size == len(processor.tokenizer)


def test_same_seed_gives_identical_files(tmp_path):
    a = build_tiny("af3", tmp_path / "a", seed=3, preset="micro")
    b = build_tiny("af3", tmp_path / "b", seed=3, preset="micro")
    c = build_tiny("af3", tmp_path / "c", seed=4, preset="micro")
    assert _digests(a) == _digests(b)
    assert _digests(a)["model.safetensors"] != _digests(c)["model.safetensors"]


def test_chat_template_is_af3s(micro_processor):
    conversation = [{"role": "user", "content": [{"type": "text", "text": "Describe the audio."},
                                                 {"type": "audio", "audio": np.zeros(16000, dtype=np.float32)}]}]
    text = micro_processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<sound>Describe the audio.<|im_end|>\n<|im_start|>assistant\n")
    with_system = [{"role": "system", "content": "Be brief."}] + conversation
    text = micro_processor.apply_chat_template(with_system, tokenize=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "helpful" not in text


def test_processor_expands_audio_placeholder(micro_processor):
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": np.zeros(32000, dtype=np.float32)},
                                                 {"type": "text", "text": "Describe the audio."}]}]
    text = micro_processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    batch = micro_processor(text=text, audio=[np.zeros(32000, dtype=np.float32)])
    audio_id = micro_processor.tokenizer.convert_tokens_to_ids("<sound>")
    # 2 s → 200 mel frames → conv stride 2 → 100 → pool 2 → 50 placeholder tokens
    assert int((batch["input_ids"] == audio_id).sum()) == 50
    assert batch["input_features"].shape[-1] == 3000  # one full 30 s window, as the real AF3


def test_unknown_family_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFamilyError, match="Supported: af3"):
        build_tiny("nope", tmp_path)


def test_default_preset_keeps_af3_encoder_lm_proportion(tmp_path):
    """Encoder/LM forward FLOPs for a 10 s clip stay near the real AF3's ≈0.55 (see models/tiny.py)."""
    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(build_tiny("af3", tmp_path / "d"))
    enc = model.config.audio_config
    txt = model.config.text_config
    positions = 1500
    enc_linear = enc.num_hidden_layers * 12 * enc.hidden_size**2 * positions * 2
    enc_attention = enc.num_hidden_layers * 4 * positions**2 * enc.hidden_size
    kv = txt.num_key_value_heads * (txt.hidden_size // txt.num_attention_heads)
    per_token = txt.num_hidden_layers * 2 * (2 * txt.hidden_size**2 + 2 * txt.hidden_size * kv
                                             + 3 * txt.hidden_size * txt.intermediate_size)
    ratio = (enc_linear + enc_attention) / (per_token * 310)
    assert 0.3 < ratio < 1.2, ratio


def test_the_tiny_cache_is_keyed_by_the_builders_inputs(tmp_path, monkeypatch):
    """A cached tiny checkpoint is reused only while everything it was built from is unchanged: an edit to the
    builder or a published file gives a new build, never the stale one."""
    from audiotune.models import tiny
    from audiotune.models.families import AUDIO_FLAMINGO_3

    inputs = {p.name for p in tiny.builder_files(AUDIO_FLAMINGO_3)}
    assert {"tiny.py", "families.py", "nvidia--audio-flamingo-3-hf.json", "tokenizer_config.json"} <= inputs
    monkeypatch.setenv("AUDIOTUNE_CACHE", str(tmp_path / "cache"))
    edited = tmp_path / "an-input.py"
    edited.write_text("v1")
    real = tiny.builder_files
    monkeypatch.setattr(tiny, "builder_files", lambda family: real(family) + [edited])
    first = tiny.cached_tiny("af3")
    assert (first / "config.json").exists() and tiny.cached_tiny("af3") == first
    edited.write_text("v2")
    second = tiny.cached_tiny("af3")
    assert second != first and (second / "config.json").exists()


def _all_families():
    from audiotune.models.families import FAMILIES

    return [pytest.param(name, marks=pytest.mark.slow, id=name) for name in FAMILIES]


@pytest.mark.parametrize("name", _all_families())
def test_every_family_builds_and_loads_at_the_default_preset(name, tmp_path):
    """`audiotune tiny --family NAME` builds the default preset (the family test runs on micro): Gemma 4's per-layer
    widths and dots3's sliding-window MLA heads once failed here. The build must load back with its own class, at
    the preset's language-model width, its placeholder a real token of its vocabulary."""
    import transformers
    from transformers import AutoConfig

    from audiotune.models.facts import model_class_for
    from audiotune.models.families import family_by_name
    from audiotune.models.tiny import PRESETS

    entry = family_by_name(name)  # unbound: a blocked family (OmniASR) still builds, it only refuses to train
    out = build_tiny(name, tmp_path / name)
    config = AutoConfig.from_pretrained(out)
    model_class = entry.model_class or model_class_for(config.model_type)
    model = getattr(transformers, model_class).from_pretrained(out)
    text = model.config.get_text_config(decoder=True)
    assert text.hidden_size == PRESETS["default"]["text"]["hidden"]
    processor = AutoProcessor.from_pretrained(out, **dict(entry.processor_kwargs))
    tokenizer = processor.tokenizer
    placeholder = entry.audio_token or getattr(processor, "audio_token", None) or tokenizer.audio_token
    assert tokenizer.convert_tokens_to_ids(placeholder) != tokenizer.unk_token_id
