"""The audio tower over a batch's valid frames: fewer frames in, the same audio tokens and answers out."""

from __future__ import annotations

import pytest
import torch

from audiotune.data.collator import ConversationCollator
from audiotune.errors import ConfigError
from audiotune.generate import GenerationSettings, examples_from_audio, generate
from audiotune.models.families import QWEN2_AUDIO
from audiotune.models.loading import load_model, to_model_inputs
from tests.conftest import tone


def test_valid_frames_match_whole_windows(micro_af3, micro_processor, family):
    window, _ = load_model(micro_af3, encoder_frames="window")
    valid, _ = load_model(micro_af3, encoder_frames="valid")
    examples = examples_from_audio([tone(1.0, 440), tone(2.5, 220), tone(0.3, 880)], "Describe the audio.")
    batch = to_model_inputs(ConversationCollator(micro_processor, family, training=False)(examples), window)
    seen: list[int] = []
    valid.model.audio_tower.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    with torch.inference_mode():
        whole = window.get_audio_features(batch["input_features"], batch["input_features_mask"]).pooler_output
        cut = valid.get_audio_features(batch["input_features"], batch["input_features_mask"]).pooler_output
        logits = (window(**batch).logits, valid(**batch).logits)
    longest = int(batch["input_features_mask"].sum(-1).max())
    assert batch["input_features"].shape[-1] == 3000 and seen[0] == -(-longest // 4) * 4 < 3000
    assert cut.shape == whole.shape  # every clip keeps the audio tokens the processor counted
    assert torch.allclose(cut, whole, atol=1e-5) and torch.allclose(*logits, atol=1e-4)
    settings = GenerationSettings(max_new_tokens=8)
    assert generate(valid, micro_processor, family, examples, settings=settings) == \
        generate(window, micro_processor, family, examples, settings=settings)


def test_families_whose_tower_needs_whole_windows_refuse(micro_af3):
    from audiotune.models.encoder_frames import install_valid_frames

    with pytest.raises(ConfigError, match="qwen2audio family's audio tower needs whole windows"):
        install_valid_frames(torch.nn.Module(), QWEN2_AUDIO)
    with pytest.raises(ConfigError, match="choose window or valid"):
        load_model(micro_af3, encoder_frames="half")
