"""Training the audio encoder (#23.1): LoRA on its linears or the whole tower, saved with the adapter, reloaded and
merged exactly; the embedding cache off while it trains; the encoder's and projector's own learning rates reach
the optimizer."""

from __future__ import annotations

import pytest
import torch

from audiotune.engines.vllm_env import export_adapter
from audiotune.errors import ConfigError
from audiotune.merge import merge_adapter
from audiotune.models.loading import (AdaptationPlan, encoder_linear_names, load_model, lora_modules,
                                      prepare_for_training)
from audiotune.train import train
from audiotune.train_config import TrainConfig
from tests.conftest import tone


def _features(model, processor, family) -> torch.Tensor:
    """The audio tower's output for one 2 s clip (what the encoder hears)."""
    from audiotune.models.loading import to_model_inputs

    batch = processor.feature_extractor([tone(2.0, 440)], sampling_rate=16000, return_tensors="pt",
                                        return_attention_mask=True)
    batch = to_model_inputs(dict(batch), model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tower = base.get_submodule(family.encoder_prefixes[0])
    with torch.no_grad():
        return tower(batch["input_features"], input_features_mask=batch["attention_mask"]).last_hidden_state


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_only_the_named_encoder_parts_train(micro_af3, family, mode):
    model, _ = load_model(str(micro_af3))
    linears = set(encoder_linear_names(model, family))  # before PEFT wraps them in place
    assert linears and all(".self_attn." in n or ".fc" in n for n in linears)
    peft = prepare_for_training(model, family, AdaptationPlan(lora_r=4, train_audio_encoder=mode))
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    in_encoder = {n for n in trainable if family.is_encoder_module(n.replace("base_model.model.", ""))}
    assert in_encoder  # the encoder trains
    if mode == "lora":
        assert all(".lora_" in n for n in trainable)  # LoRA matrices only, on the LM and the encoder's linears
        wrapped = {n.replace("base_model.model.", "") for n in lora_modules(peft)}
        assert linears <= wrapped
    else:
        assert all(".lora_" in n or "modules_to_save" in n for n in trainable)  # the tower is saved whole
        assert all("modules_to_save" in n for n in in_encoder)
    frozen = prepare_for_training(load_model(str(micro_af3))[0], family, AdaptationPlan(lora_r=4))
    assert not any(p.requires_grad and family.is_encoder_module(n.replace("base_model.model.", ""))
                   for n, p in frozen.named_parameters())  # the default leaves it frozen


def test_an_encoder_lora_trains_reloads_and_merges_exactly(micro_af3, synth_data, micro_processor, family, tmp_path):
    run = tmp_path / "run"
    result = train(TrainConfig.from_flat(
        model=str(micro_af3), dataset=str(synth_data), output_dir=str(run), per_device_train_batch_size=4,
        gradient_accumulation_steps=1, learning_rate=5e-2, max_steps=3, eval_split=None, logging_steps=1,
        save_steps=3, train_audio_encoder="lora", lora_r=4, seed=0, audio_cache="memory"))
    assert result.audio_cache_hits == 0 and result.audio_cache_misses == 0  # no cache while the encoder trains
    base, _ = load_model(str(micro_af3))
    tuned, _ = load_model(str(micro_af3), adapter=str(run))
    before, after = _features(base, micro_processor, family), _features(tuned, micro_processor, family)
    assert not torch.allclose(before, after)  # the encoder's outputs moved: it trained, and the adapter holds it
    with pytest.raises(ConfigError, match="trains the audio encoder .* merge it"):  # vLLM would serve it untrained
        export_adapter(str(micro_af3), run, tmp_path / "exported", family)
    merged = merge_adapter(str(micro_af3), str(run), tmp_path / "merged")
    folded, _ = load_model(str(merged))
    assert torch.allclose(_features(folded, micro_processor, family), after, atol=1e-5)


def test_activation_checkpointing_reaches_the_encoder_and_it_still_learns(micro_af3, synth_data, micro_processor,
                                                                          family, tmp_path):
    """With --activation-checkpointing the Trainer checkpoints every GradientCheckpointingLayer, the audio tower's
    too; its LoRA must still receive gradients through the recomputed layers."""
    run = tmp_path / "run"
    train(TrainConfig.from_flat(
        model=str(micro_af3), dataset=str(synth_data), output_dir=str(run), per_device_train_batch_size=2,
        gradient_accumulation_steps=1, learning_rate=5e-2, max_steps=2, eval_split=None, save_steps=2,
        train_audio_encoder="lora", lora_r=4, seed=0, activation_checkpointing=True))
    base, _ = load_model(str(micro_af3))
    tuned, _ = load_model(str(micro_af3), adapter=str(run))
    assert not torch.allclose(_features(base, micro_processor, family), _features(tuned, micro_processor, family))
    base.gradient_checkpointing_enable()  # what the Trainer calls: the tower's layers are among the checkpointed
    assert all(layer.gradient_checkpointing for layer in base.get_submodule(family.encoder_prefixes[0]).layers)


def test_the_encoder_and_projector_learn_at_their_own_rates(micro_af3, synth_data, family, tmp_path):
    from audiotune.train import group_learning_rates
    from audiotune.trainer import AudiotuneTrainer

    cfg = TrainConfig.from_flat(model=str(micro_af3), dataset=str(synth_data), output_dir=str(tmp_path),
                                learning_rate=1e-4, train_audio_encoder="lora", train_projector=True,
                                encoder_learning_rate=1e-5, projector_learning_rate=3e-4, lora_r=4)
    model, _ = load_model(str(micro_af3))
    model = prepare_for_training(model, family, AdaptationPlan(lora_r=4, train_projector=True,
                                                                train_audio_encoder="lora"))
    trainer = AudiotuneTrainer(model=model, args=cfg.trainer_arguments(False, output_dir=str(tmp_path)))
    trainer.learning_rate_of = group_learning_rates(family, cfg.adapter)
    optimizer = trainer.create_optimizer()
    names = {id(p): n.replace("base_model.model.", "") for n, p in model.named_parameters()}
    rate_of = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert {rate for n, rate in rate_of.items() if family.is_projector_module(n)} == {3e-4}
    assert {rate for n, rate in rate_of.items()
            if family.is_encoder_module(n) and not family.is_projector_module(n)} == {1e-5}
    assert {rate for n, rate in rate_of.items()
            if not family.is_encoder_module(n) and not family.is_projector_module(n)} == {1e-4}
    assert len(rate_of) == sum(p.requires_grad for p in model.parameters())  # every trained parameter, once


def test_encoder_training_choices_are_checked():
    with pytest.raises(ConfigError, match="--train-audio-encoder 'some': choose one of none, lora, full"):
        TrainConfig.from_flat(model="m", dataset="d", train_audio_encoder="some")
    with pytest.raises(ConfigError, match="--full trains the language model"):
        TrainConfig.from_flat(model="m", dataset="d", full=True, train_audio_encoder="lora").validate()
