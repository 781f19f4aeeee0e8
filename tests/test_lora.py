"""Default LoRA adapts the language model only; the audio encoder and projector stay frozen."""

from __future__ import annotations

from audiotune.models.family import GUIDE_LORA_TARGETS
from audiotune.models.loading import AdaptationPlan, count_parameters, load_base_model, lora_modules, \
    prepare_for_training


def test_default_lora_targets_only_the_language_model(micro_af3, family):
    model, _ = load_base_model(micro_af3)
    peft_model = prepare_for_training(model, family, AdaptationPlan())
    adapted = lora_modules(peft_model)
    assert adapted, "LoRA adapted nothing"
    assert not [n for n in adapted if "audio_tower" in n or "multi_modal_projector" in n]
    kinds = {n.rsplit(".", 1)[-1] for n in adapted}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_guide_target_list_also_hits_the_audio_encoder(micro_af3, family):
    model, _ = load_base_model(micro_af3)
    peft_model = prepare_for_training(model, family, AdaptationPlan(lora_targets=GUIDE_LORA_TARGETS))
    assert [n for n in lora_modules(peft_model) if "audio_tower" in n]


def test_train_projector_and_full(micro_af3, family):
    model, _ = load_base_model(micro_af3)
    with_projector = prepare_for_training(model, family, AdaptationPlan(train_projector=True))
    trainable = [n for n, p in with_projector.named_parameters() if p.requires_grad]
    assert any("multi_modal_projector" in n for n in trainable)
    assert not any("audio_tower" in n for n in trainable)

    model, _ = load_base_model(micro_af3)
    full = prepare_for_training(model, family, AdaptationPlan(full=True))
    trainable_names = [n for n, p in full.named_parameters() if p.requires_grad]
    assert any("language_model" in n for n in trainable_names)
    assert not any("audio_tower" in n or "multi_modal_projector" in n for n in trainable_names)
    n_trainable, n_total = count_parameters(full)
    assert 0 < n_trainable < n_total
