"""``--packing``: first-fit rows up to ``--max-length``, and a packed batch trains exactly as the padded one.

The reference for every equality is the ordinary padded batch (``ConversationCollator``) through an ordinary forward;
the packed batch must give the same per-token losses and the same LoRA gradients, per family, and a packed training
run with gradient accumulation the same losses and weights as the padded run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audiotune.conversation import Example, prompt_messages
from audiotune.data.collator import IGNORE_INDEX, ConversationCollator
from audiotune.data.packing import PackingCollator, check_packing, first_fit, next_fit
from audiotune.errors import ConfigError
from audiotune.models.loading import (AdaptationPlan, load_base_model, load_processor, prepare_for_training,
                                      resolve_family)
from audiotune.models.packed_attention import use_packed_attention
from audiotune.models.tiny import cached_tiny
from tests.conftest import tone

# (seconds, caption): lengths far apart, so the padded batch is mostly padding and the packer reorders them.
CLIPS = [(1.0, "A tone."), (3.5, "Two short beeps, then a long silence follows the beeps."), (2.0, "Noise."),
         (1.5, "A low hum and a click.")]


def test_first_fit_puts_longest_first_into_the_first_bin_with_room():
    # Decreasing order 9(i1), 6(i3), 5(i0), 4(i4), 3(i2), 2(i5); capacity 10:
    # 9 → bin0 [1 free]; 6 → bin1 [4]; 5 → bin2 [5]; 4 → bin1 [0]; 3 → bin2 [2]; 2 → bin2 [0].
    assert first_fit([5, 9, 3, 6, 4, 2], 10) == [[1], [3, 4], [0, 2, 5]]
    assert first_fit([3, 3, 3], 9) == [[0, 1, 2]]


def test_an_example_longer_than_max_length_gets_a_row_of_its_own():
    assert first_fit([12, 2, 3], 10) == [[0], [2, 1]]
    assert next_fit([4, 12, 3, 3, 5], 10) == [[0], [1], [2, 3], [4]]


def _examples(family) -> list[Example]:
    return [Example(str(i), prompt_messages(tone(seconds, 330 + 110 * i, family.sampling_rate), "Describe the audio."),
                    [caption]) for i, (seconds, caption) in enumerate(CLIPS)]


@pytest.fixture(scope="module")
def af3_parts():
    path = cached_tiny("af3")
    family = resolve_family(str(path))
    return family, load_processor(path)


def test_packed_rows_fit_max_length_restart_positions_and_keep_every_label(af3_parts):
    family, processor = af3_parts
    examples = _examples(family)
    padded = ConversationCollator(processor, family)(examples)
    lengths = padded["attention_mask"].sum(1).tolist()
    max_length = max(lengths) + min(lengths)  # the longest plus the shortest fit; not everything
    packed = PackingCollator(ConversationCollator(processor, family), max_length=max_length)(examples)

    assert "attention_mask" not in packed and packed["use_cache"] is False
    assert packed["input_ids"].shape[1] <= max_length
    assert 1 < packed["input_ids"].shape[0] < len(examples)
    starts = (packed["position_ids"] == 0).sum().item()
    pad_id = processor.tokenizer.pad_token_id
    tails = sum(int(row[-1] == pad_id and (row != pad_id).any()) for row in packed["input_ids"])
    assert starts - tails == len(examples)  # one restart per example (plus one per padded row tail)
    # Every real token is there once: the same multiset of ids, and the same label tokens.
    real = padded["input_ids"][padded["attention_mask"].bool()]
    assert sorted(packed["input_ids"][packed["input_ids"] != pad_id].tolist()) == sorted(real[real != pad_id].tolist())
    assert sorted(packed["labels"][packed["labels"] != IGNORE_INDEX].tolist()) == \
        sorted(padded["labels"][padded["labels"] != IGNORE_INDEX].tolist())


def test_flash_attention_gets_the_whole_batch_in_one_row(af3_parts):
    """flash-attention's varlen path finds packed examples only in a batch of one row (transformers
    modeling_flash_attention_utils._is_packed_sequence), so its packer ignores --max-length for rows."""
    from audiotune.train import training_collator
    from audiotune.train_config import TrainConfig

    family, processor = af3_parts
    examples = _examples(family)
    config = TrainConfig.from_flat(model="m", dataset="d", packing=True, max_length=64)

    class Flash(torch.nn.Module):
        config = type("Config", (), {"_attn_implementation": "flash_attention_2"})()

    class Sdpa(torch.nn.Module):
        config = type("Config", (), {"_attn_implementation": "sdpa"})()

    one = training_collator(config, processor, family, Flash())(examples)
    assert one["input_ids"].shape[0] == 1 and (one["position_ids"] == 0).sum() == len(examples)
    assert (one["labels"] != IGNORE_INDEX).sum() > 0 and one["input_ids"].shape[1] > 64
    assert training_collator(config, processor, family, Sdpa())(examples)["input_ids"].shape[0] == len(examples)


def _per_token_losses(model, batch) -> torch.Tensor:
    """Cross-entropy of every label token (next-token shift), computed here, not by the model's loss."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction="none")


def _gradients(model, losses: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    losses.sum().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "per-example"])
@pytest.mark.parametrize("name", ["af3", "qwen2audio", "voxtral", "gemma3n"])
def test_packed_batch_gives_the_padded_batchs_losses_and_gradients(name, attention):
    """sdpa: transformers' block-diagonal mask from the restarting positions; per-example: the language model on
    models/packed_attention.py (one sdpa call per example span), as ``train --packing`` runs it."""
    path = cached_tiny(name)
    family = resolve_family(str(path))
    processor = load_processor(path)
    torch.manual_seed(0)
    model, _ = load_base_model(str(path))
    if attention == "per-example":
        assert use_packed_attention(model, family)
    model = prepare_for_training(model, family, AdaptationPlan(lora_dropout=0.0))
    for parameter_name, parameter in model.named_parameters():
        if "lora_B" in parameter_name:  # LoRA starts at B = 0: give the adapter a non-zero path to differentiate
            torch.nn.init.normal_(parameter, std=0.05)
    model.train()
    examples = _examples(family)

    padded = ConversationCollator(processor, family)(examples)
    packed = PackingCollator(ConversationCollator(processor, family), max_length=100_000)(examples)
    assert packed["input_ids"].shape[0] == 1  # all four in one row
    reference = _per_token_losses(model, padded)
    reference_grads = _gradients(model, reference)
    losses = _per_token_losses(model, packed)
    grads = _gradients(model, losses)

    assert losses.numel() == reference.numel() > 0
    # The packer reorders the examples: compare the token losses as sorted lists, and their sum.
    torch.testing.assert_close(losses.sort().values, reference.sort().values, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(losses.sum(), reference.sum(), rtol=1e-5, atol=1e-4)
    assert reference_grads.keys() == grads.keys() and any("lora_A" in n for n in grads)
    for parameter_name, gradient in reference_grads.items():
        torch.testing.assert_close(grads[parameter_name], gradient, rtol=1e-3, atol=2e-4, msg=parameter_name)


def test_packing_is_refused_for_3d_rotary_positions_and_recurrent_layers(tmp_path, synth_data):
    from transformers import AutoConfig

    from audiotune.train import train
    from audiotune.train_config import TrainConfig

    path = cached_tiny("qwen25omni")
    family = resolve_family(str(path))
    with pytest.raises(ConfigError, match=r"--packing: the qwen25omni language model uses 3-D .*mrope_section"):
        check_packing(family, AutoConfig.from_pretrained(path))
    check_packing(resolve_family(str(cached_tiny("qwen2audio"))), AutoConfig.from_pretrained(cached_tiny("qwen2audio")))
    # Nemotron-H's Mamba-2 layers run their state from one example into the next (measured: packed and padded
    # per-token losses differ by up to 2e-2 on its tiny checkpoint).
    nemotron = cached_tiny("nemotron_omni")
    with pytest.raises(ConfigError, match=r"--packing: the nemotron_omni language model has recurrent"):
        check_packing(resolve_family(str(nemotron)), AutoConfig.from_pretrained(nemotron))
    # train() refuses before it reads data or loads the model.
    with pytest.raises(ConfigError, match="qwen25omni"):
        train(TrainConfig.from_flat(model=str(path), dataset=str(synth_data), output_dir=str(tmp_path), packing=True,
                                    max_steps=1))


def _run(cli, micro_af3, synth_data, out, *extra) -> tuple[dict, dict]:
    code, _, err = cli("train", "--model", micro_af3, "--dataset", synth_data, "--output-dir", out,
                       "--per-device-train-batch-size", 2, "--gradient-accumulation-steps", 2, "--max-steps", 3,
                       "--learning-rate", 0.5, "--optim", "sgd", "--lora-dropout", 0, "--logging-steps", 1,
                       "--eval-split", "none", "--eval-take", 4, "--eval-steps", 100, "--save-steps", 100,
                       "--eval-generate-take", 0, "--audio-cache", "off", "--seed", 3, *extra)
    assert code == 0, err
    from safetensors.torch import load_file

    metrics = json.loads((out / "train_metrics.json").read_text())
    return metrics, load_file(out / "adapter_model.safetensors")


@pytest.mark.slow
def test_packed_training_with_accumulation_matches_the_padded_run(cli, micro_af3, synth_data, tmp_path):
    """num_items_in_batch (the label tokens of the accumulated batches) is the same packed or padded, so each step's
    loss and update are too: a wrong count (a padding label counted, a label lost) changes the loss and the weights."""
    padded, padded_weights = _run(cli, micro_af3, synth_data, tmp_path / "padded")
    packed, packed_weights = _run(cli, micro_af3, synth_data, tmp_path / "packed", "--packing", "--max-length", 160)

    losses = [e["loss"] for e in padded["log_history"] if "loss" in e]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert [e["loss"] for e in packed["log_history"] if "loss" in e] == pytest.approx(losses, rel=1e-4)
    assert packed["eval_loss"] == pytest.approx(padded["eval_loss"], rel=1e-4)
    assert padded_weights.keys() == packed_weights.keys()
    moved = 0
    for name, weight in padded_weights.items():
        torch.testing.assert_close(packed_weights[name], weight, rtol=1e-4, atol=1e-5, msg=name)
        moved += int("lora_B" in name and weight.abs().max() > 1e-3)
    assert moved  # the runs trained (B left zero would make the comparison empty)


def test_packing_is_refused_with_an_rl_method_and_a_bad_max_length():
    from audiotune.train_config import TrainConfig

    with pytest.raises(ConfigError, match="--packing packs supervised batches; --method grpo"):
        TrainConfig.from_flat(model="m", dataset="d", packing=True, method="grpo").validate()
    with pytest.raises(ConfigError, match="max_length must be at least 1"):
        TrainConfig.from_flat(model="m", dataset="d", packing=True, max_length=0).validate()
    TrainConfig.from_flat(model="m", dataset="d", packing=True).validate()
