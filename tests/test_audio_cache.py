"""The audio-embedding cache changes nothing but the time: same logits, same adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from audiotune.audio_cache import AudioEmbeddingCache, cache_is_safe, install_audio_cache
from audiotune.train_config import TrainConfig
from audiotune.data.collator import ConversationCollator
from audiotune.conversation import Example, prompt_messages
from audiotune.models.loading import AdaptationPlan, load_model, load_base_model, prepare_for_training
from audiotune.train import train
from tests.conftest import tone


def _batch(processor, family, order=(0, 1, 2)):
    examples = [Example(str(i), prompt_messages(tone(1.0 + i, 200 + 300 * i), "Describe the audio."), ["A tone."])
                for i in range(3)]
    batch = ConversationCollator(processor, family)([examples[i] for i in order])
    batch.pop("labels")
    return batch


def test_logits_agree_with_and_without_cache(micro_af3, micro_processor, family, tmp_path):
    model, _ = load_model(micro_af3)
    batch = _batch(micro_processor, family)
    with torch.no_grad():
        reference = model(**batch).logits
    cache = AudioEmbeddingCache(directory=tmp_path / "cache")
    uninstall = install_audio_cache(model, family, cache)
    with torch.no_grad():
        first = model(**batch).logits
        again = model(**batch).logits
        shuffled = model(**_batch(micro_processor, family, (2, 0, 1))).logits
    assert cache.misses == 3 and cache.hits == 6
    assert torch.allclose(first, reference, atol=1e-5) and torch.allclose(again, reference, atol=1e-5)
    uninstall()
    with torch.no_grad():
        assert torch.allclose(shuffled, model(**_batch(micro_processor, family, (2, 0, 1))).logits, atol=1e-5)
    fresh = AudioEmbeddingCache(directory=tmp_path / "cache")  # a new process finds the disk entries
    install_audio_cache(model, family, fresh)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reference, atol=1e-5)
    assert fresh.hits == 3 and fresh.misses == 0


def test_entries_made_during_generation_work_in_training(micro_af3, micro_processor, family):
    model, _ = load_base_model(micro_af3)
    model = prepare_for_training(model, family, AdaptationPlan())
    install_audio_cache(model, family, AudioEmbeddingCache())
    batch = _batch(micro_processor, family)
    with torch.inference_mode():
        model(**batch)
    labels = batch["input_ids"].clone()
    model(**batch, labels=labels).loss.backward()  # would fail on an inference tensor
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_cache_refuses_a_trainable_encoder_or_projector(micro_af3, family):
    model, _ = load_base_model(micro_af3)
    assert cache_is_safe(prepare_for_training(model, family, AdaptationPlan()), family)
    model, _ = load_base_model(micro_af3)
    assert not cache_is_safe(prepare_for_training(model, family, AdaptationPlan(train_projector=True)), family)
    model, _ = load_base_model(micro_af3)
    assert not cache_is_safe(prepare_for_training(model, family, AdaptationPlan(lora_targets=["q_proj"])), family)


@pytest.mark.slow
def test_training_with_the_cache_gives_the_same_adapter(micro_af3, synth_data, tmp_path):
    runs = {}
    for mode in ("off", "memory"):
        result = train(TrainConfig.from_flat(model=str(micro_af3), dataset=str(synth_data),
                                             output_dir=str(tmp_path / mode), train_take=8, eval_take=4,
                                             per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=6,
                                             eval_steps=3, save_steps=6, learning_rate=3e-3, seed=3,
                                             eval_generate_take=2, max_new_tokens=4, audio_cache=mode))
        runs[mode] = (result, load_file(tmp_path / mode / "adapter_model.safetensors"))
    (off, off_weights), (on, on_weights) = runs["off"], runs["memory"]
    assert on.audio_cache_hits > 0 and off.audio_cache_hits == 0  # epochs 2-3 and later evaluations hit
    assert on.eval_loss == pytest.approx(off.eval_loss, abs=1e-5)
    for name in off_weights:
        assert torch.allclose(off_weights[name], on_weights[name], atol=1e-5), name


def test_length_grouping_cuts_padding_and_keeps_every_sample(micro_af3, synth_data, tmp_path):
    from audiotune.train import build_datasets, estimated_lengths
    from audiotune.trainer import AudiotuneTrainer
    from tests.conftest import offline_entry

    AUDIO_FLAMINGO_3 = offline_entry("af3")  # data code reads its facts: the tiny checkpoint's

    cfg = TrainConfig.from_flat(model=str(micro_af3), dataset=str(synth_data), output_dir=str(tmp_path),
                                per_device_train_batch_size=4, gradient_accumulation_steps=1)
    train_ds, _, _ = build_datasets(cfg, AUDIO_FLAMINGO_3, tmp_path)
    lengths = estimated_lengths(train_ds, AUDIO_FLAMINGO_3)
    # The audio part of each estimate (from the header) is what the processor gives that clip: the count of audio
    # placeholders in the collated row; the text part is a rough 4 characters a token.
    from audiotune.data.collator import ConversationCollator
    from audiotune.models.loading import load_processor

    collate = ConversationCollator(load_processor(micro_af3), AUDIO_FLAMINGO_3, training=True)
    audio_id = collate.processor.tokenizer.convert_tokens_to_ids(AUDIO_FLAMINGO_3.audio_token)
    for i in range(len(train_ds)):
        ids = collate([train_ds[i]])["input_ids"][0]
        text_part = len(train_ds[i].target) // 4 + 32
        assert lengths[i] - text_part == int((ids == audio_id).sum()), i
        assert abs(lengths[i] - len(ids)) <= 0.2 * len(ids), i  # and the whole estimate is close to the real one

    from transformers import TrainingArguments

    trainer = AudiotuneTrainer(model=torch.nn.Linear(1, 1), args=TrainingArguments(
        output_dir=str(tmp_path / "t"), per_device_train_batch_size=4, use_cpu=True, report_to="none", seed=1),
        train_dataset=train_ds)
    plain = list(trainer._get_train_sampler())
    trainer.lengths = lengths
    grouped = list(trainer._get_train_sampler())
    assert sorted(grouped) == sorted(plain) == list(range(len(train_ds)))  # every sample once per epoch

    def padding(order):
        batches = [order[i:i + 4] for i in range(0, len(order), 4)]
        return sum(max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches)

    # transformers keeps 4 shuffled mega-batches on tiny sets (here 38 rows), so the cut is modest here
    assert padding(grouped) < 0.85 * padding(plain)


@pytest.mark.slow
def test_dataloader_workers_give_the_same_adapter(micro_af3, synth_data, tmp_path):
    weights = {}
    for workers in (0, 2):
        train(TrainConfig.from_flat(model=str(micro_af3), dataset=str(synth_data),
                                    output_dir=str(tmp_path / str(workers)), train_take=8, eval_split=None,
                                    per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=3,
                                    save_steps=3, learning_rate=3e-3, seed=5, dataloader_num_workers=workers,
                                    eval_generate_take=0))
        weights[workers] = load_file(tmp_path / str(workers) / "adapter_model.safetensors")
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[2][name], atol=1e-6), name
