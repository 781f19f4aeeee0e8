"""GRPO and DPO losses: a hand-computed example, and TRL's own ``_compute_loss`` on the same log-probabilities.

TRL's methods are called unbound, with an object that carries the attributes they read and returns the fixed
log-probabilities where they would run a model: the arithmetic that runs is TRL's, line for line.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from audiotune.rl.losses import dpo_loss, group_advantages, grpo_loss


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 3.0, 1.0])
    advantages, std = group_advantages(rewards, num_generations=2)
    spread = 0.5 / (math.sqrt(0.5) + 1e-4)  # group (1, 0): mean 0.5, sample std sqrt(0.5)
    assert torch.allclose(advantages, torch.tensor([spread, -spread, 0.0, 0.0, 1 / (math.sqrt(2) + 1e-4),
                                                    -1 / (math.sqrt(2) + 1e-4)]), atol=1e-6)
    assert std[2] == 0  # an all-equal group carries no signal
    unscaled, _ = group_advantages(rewards, num_generations=2, scale="none")
    assert torch.allclose(unscaled, torch.tensor([0.5, -0.5, 0.0, 0.0, 1.0, -1.0]))


def test_clipped_loss_by_hand():
    # ratios exp(logp - old): 1.5 and 0.5 in both sequences; advantages +1 and -1; epsilon 0.2.
    logps = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]]))
    old = torch.zeros(2, 2)
    result = grpo_loss(logps, old, None, torch.tensor([1.0, -1.0]), torch.ones(2, 2), beta=0.0)
    # seq 1: -min(1.5, 1.2) = -1.2, -min(0.5, 0.8) = -0.5 → -0.85; seq 2: 1.5 and 0.8 → 1.15; mean 0.15
    assert result.loss.item() == pytest.approx(0.15, abs=1e-6)
    assert result.clip_ratio == pytest.approx(0.5)  # (1.5, A>0) clipped high, (0.5, A<0) clipped low
    assert result.clip_high == pytest.approx(0.25) and result.clip_low == pytest.approx(0.25)
    # a padded token does not count: mask it and sequence 1's loss is its first token's alone
    masked = grpo_loss(logps, old, None, torch.tensor([1.0, -1.0]), torch.tensor([[1, 0], [1, 1]]), beta=0.0)
    assert masked.loss.item() == pytest.approx((-1.2 + 1.15) / 2, abs=1e-6)


def _trl_grpo_loss(accelerator, logps, old, ref, advantages, mask, beta, loss_type, epsilon, max_length):
    from trl import GRPOTrainer

    batch, length = logps.shape
    host = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_length, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)), accelerator=accelerator,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False))
    inputs = {"prompt_ids": torch.ones(batch, 3, dtype=torch.long), "prompt_mask": torch.ones(batch, 3),
              "completion_ids": torch.ones(batch, length, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref}
    loss = GRPOTrainer._compute_loss(host, None, inputs)
    return loss, host._metrics["train"]


@pytest.mark.parametrize("loss_type,beta", [("grpo", 0.04), ("grpo", 0.0), ("bnpo", 0.1), ("dr_grpo", 0.04)])
def test_grpo_loss_matches_trl(accelerator, loss_type, beta):
    generator = torch.Generator().manual_seed(0)
    logps = -torch.rand(6, 5, generator=generator) * 3
    old = logps + 0.3 * torch.randn(6, 5, generator=generator)  # ratios far enough from 1 to clip
    ref = logps + 0.2 * torch.randn(6, 5, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float32)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    advantages, _ = group_advantages(rewards, num_generations=2)
    ours = grpo_loss(logps, old, ref, advantages, mask, epsilon_low=0.2, epsilon_high=0.2, beta=beta,
                     loss_type=loss_type, max_completion_length=8)
    theirs, metrics = _trl_grpo_loss(accelerator, logps, old, ref, advantages, mask, beta, loss_type, 0.2, 8)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    assert ours.clip_ratio == pytest.approx(metrics["clip_ratio/region_mean"][0], abs=1e-6)
    assert ours.clip_ratio > 0
    if beta:
        assert ours.kl == pytest.approx(metrics["kl"][0], rel=1e-5)


def _trl_dpo_loss(accelerator, policy, reference, mask, beta, loss_type):
    from trl import DPOTrainer

    def fake(log_probs):
        return lambda **kwargs: SimpleNamespace(log_probs=log_probs, entropy=torch.zeros_like(log_probs),
                                                mean_logits=torch.zeros_like(log_probs),
                                                is_top1=torch.zeros_like(log_probs, dtype=torch.bool))

    module = torch.nn.Module()  # TRL asks accelerate whether self.model is a PEFT model; it is not
    module.is_gradient_checkpointing = False
    host = SimpleNamespace(
        model=module, accelerator=accelerator,
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=False, ref_model=fake(reference),
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
        use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    inputs = {"input_ids": torch.ones_like(mask, dtype=torch.long), "attention_mask": torch.ones_like(mask),
              "completion_mask": mask}
    return DPOTrainer._compute_loss(host, fake(policy), inputs, return_outputs=False), host._metrics["train"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_loss_matches_trl(accelerator, loss_type):
    generator = torch.Generator().manual_seed(1)
    # 3 pairs: rows 0-2 chosen, 3-5 rejected; 6 positions, the first 2 are the prompt.
    mask = torch.zeros(6, 7)
    for row, answer in enumerate([4, 3, 5, 2, 4, 1]):
        mask[row, 2 : 2 + answer] = 1
    shifted = mask[:, 1:]
    policy = -torch.rand(6, 6, generator=generator) * 2 * shifted  # 0 outside the answers, as TRL's head gives
    reference = -torch.rand(6, 6, generator=generator) * 2 * shifted
    beta = 0.1
    lengths = shifted.sum(1)
    ours = dpo_loss(policy[:3].sum(1), policy[3:].sum(1), reference[:3].sum(1), reference[3:].sum(1), beta=beta,
                    loss_type=loss_type, chosen_lengths=lengths[:3], rejected_lengths=lengths[3:])
    theirs, metrics = _trl_dpo_loss(accelerator, policy, reference, mask, beta, loss_type)
    assert ours.loss.item() == pytest.approx(float(theirs), rel=1e-5)
    assert ours.accuracy == pytest.approx(metrics["rewards/accuracies"][0])
    assert ours.margin == pytest.approx(metrics["rewards/margins"][0], rel=1e-5)


def test_dpo_loss_by_hand():
    # chosen log-ratio +2, rejected -1: -log sigmoid(0.1 * 3)
    result = dpo_loss(torch.tensor([-3.0]), torch.tensor([-6.0]), torch.tensor([-5.0]), torch.tensor([-5.0]),
                      beta=0.1)
    assert result.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.3))), rel=1e-6)
    assert result.accuracy == 1.0 and result.margin == pytest.approx(0.3)
