"""``audiotune plan``: exact parameter counts offline, and a memory estimate that moves the right way."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from audiotune.cli import app
from audiotune.errors import ConfigError, ModelFamilyError
from audiotune.models.families import FAMILIES
from audiotune.models.family import GUIDE_LORA_TARGETS
from audiotune.models.loading import load_model
from audiotune.plan import make_plan, published_ids

AF3 = "nvidia/audio-flamingo-3-hf"


def _qwen2_decoder_parameters(h, i, layers, heads, kv_heads, vocab):
    """Qwen2.5 by hand: q/k/v have biases, o and the MLP do not; two RMSNorms per layer; untied head."""
    head_dim = h // heads
    kv = kv_heads * head_dim
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h
    mlp = 3 * h * i
    return layers * (attention + mlp + 2 * h) + 2 * vocab * h + h


def _whisper_large_v3_encoder_parameters(d=1280, ffn=5120, layers=32, mels=128, positions=1500):
    conv = mels * d * 3 + d + d * d * 3 + d
    attention = 3 * d * d + 2 * d + d * d + d  # k_proj has no bias in Whisper
    layer = attention + 2 * d * ffn + ffn + d + 4 * d
    return conv + positions * d + layers * layer + 2 * d


def test_af3_counts_match_the_published_architecture_by_hand():
    plan = make_plan(AF3)
    lm = _qwen2_decoder_parameters(3584, 18944, 28, 28, 4, 151672)
    encoder = _whisper_large_v3_encoder_parameters()
    projector = 1280 * 3584 + 3584 + 3584 * 3584 + 3584  # linear → GELU → linear
    assert plan.parameters.language_model == lm
    assert plan.parameters.audio_encoder == encoder
    assert plan.parameters.projector == projector
    assert plan.parameters.total == lm + encoder + projector
    # LoRA r=16 on every LM linear: r·(in+out) per module, 7 modules per layer.
    h, i, kv = 3584, 18944, 512
    per_layer = 16 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    assert plan.lora_lm_only.trainable == 28 * per_layer
    assert plan.lora_lm_only.encoder_modules == 0
    # The guide's list also adapts the encoder's q/k/v in all 32 layers.
    assert plan.lora_guide.encoder_modules == 32 * 3
    assert plan.lora_guide.trainable == plan.lora_lm_only.trainable + 32 * 3 * 16 * (1280 + 1280)


def test_training_the_encoder_is_counted_by_hand():
    """Whisper-large-v3's encoder (AF3's) has 32 layers of q/k/v/out (1280→1280) and fc1/fc2 (1280↔5120): LoRA r=16
    on them adds 32·16·(4·2560 + 2·6400) parameters to the LM's; the full tower adds all its weights, whose
    gradients and Adam moments the state then holds."""
    lm = make_plan(AF3)
    encoder_lora = make_plan(AF3, train_audio_encoder="lora")
    assert encoder_lora.lora_lm_only.encoder_modules == 32 * 6
    assert encoder_lora.trainable == lm.trainable + 32 * 16 * (4 * (1280 + 1280) + 2 * (1280 + 5120))
    full = make_plan(AF3, train_audio_encoder="full")
    assert full.trainable == lm.trainable + _whisper_large_v3_encoder_parameters()
    assert full.memory[0].trainable_state_gb == pytest.approx(16 * full.trainable / 1e9)
    assert full.memory[1].activations_per_sample_gb > lm.memory[1].activations_per_sample_gb  # the tower's, kept


def test_memory_estimate_moves_the_right_way():
    lora = make_plan(AF3, batch=4, audio_seconds=10)
    with_ckpt, without = lora.memory
    assert with_ckpt.gradient_checkpointing and not without.gradient_checkpointing
    assert with_ckpt.activations_per_sample_gb < without.activations_per_sample_gb
    assert with_ckpt.max_batch[24] <= with_ckpt.max_batch[48] <= with_ckpt.max_batch[80]
    assert without.max_batch[80] < with_ckpt.max_batch[80]
    qlora = make_plan(AF3, mode="qlora")
    assert qlora.memory[0].weights_gb < 0.5 * lora.memory[0].weights_gb
    full = make_plan(AF3, mode="full")
    assert full.trainable == full.parameters.language_model
    assert full.memory[0].trainable_state_gb > 10 * lora.memory[0].trainable_state_gb
    longer = make_plan(AF3, audio_seconds=30)
    assert longer.audio_tokens == 750 and longer.memory[0].activations_per_sample_gb > lora.memory[0].activations_per_sample_gb
    # With the guide's target list the frozen encoder must keep its activations for the backward pass.
    guide = make_plan(AF3, lora_targets=GUIDE_LORA_TARGETS)
    assert guide.memory[1].activations_per_sample_gb > 1.5 * without.activations_per_sample_gb
    # The guide's batch of 4 (10 s clips, bf16, LoRA) fits a 24 GB card only with gradient checkpointing.
    assert without.max_batch[24] < 4 <= with_ckpt.max_batch[24]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_shipped_architecture_plans_offline(name):
    family = FAMILIES[name]
    if family.known_issue:  # a blocked family (OmniASR) says why instead of planning a prompt it would refuse
        with pytest.raises(ModelFamilyError, match="not supported yet"):
            make_plan(family.hub_id)
        return
    plan = make_plan(family.hub_id)
    assert plan.family == name
    parts = plan.parameters
    assert parts.total > 3e8 and parts.language_model > parts.audio_encoder  # Fun-ASR-Nano: 0.8 B
    # Gemma 4 unified has no audio encoder: raw waveform frames go through its embedder (a projector).
    assert parts.audio_encoder > 0 or (name == "gemma4_unified" and parts.projector > 0)
    assert plan.lora_lm_only.modules > 0 and plan.lora_lm_only.encoder_modules == 0


def test_local_checkpoint_and_unknown_id(micro_af3):
    plan = make_plan(str(micro_af3), batch=2, audio_seconds=3)
    model, _ = load_model(micro_af3)  # the real weights: the meta-device count is exact
    assert plan.family == "af3" and plan.parameters.total == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError) as error:
        make_plan("nobody/no-such-model")
    assert AF3 in str(error.value) and all(i in str(error.value) for i in published_ids())
    with pytest.raises(ConfigError):
        make_plan(AF3, source="hub")  # offline (HF_HUB_OFFLINE=1): the Hub path is really taken, and fails clearly
    assert make_plan(AF3, source="shipped").parameters.total == make_plan(AF3).parameters.total


def test_plan_cli():
    result = CliRunner().invoke(app, ["plan", "--model", AF3, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["parameters"] == make_plan(AF3).to_dict()["parameters"]
    assert plan["parameters"]["total"] == 8_267_215_360  # test_af3_counts_match_the_published_architecture_by_hand
    assert plan["lora_lm_only"]["trainable"] == 40_370_176 and plan["lora_guide"]["trainable"] == 44_302_336
    result = CliRunner().invoke(app, ["plan", "--model", AF3])
    assert result.exit_code == 0, result.output
    assert "40,370,176" in result.output and "44,302,336" in result.output  # LM-only LoRA vs the guide's list
