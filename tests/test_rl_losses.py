"""GRPO (GSPO, DAPO) and preference (DPO, KTO, ORPO, SimPO) losses: hand-computed examples, and TRL's own code on
the same log-probabilities.

TRL's methods are called unbound, with an object that carries the attributes they read and returns the fixed
log-probabilities where they would run a model: the arithmetic that runs is TRL's, line for line.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from audiotune.rl.losses import (dpo_loss, group_advantages, grpo_loss, kto_loss, orpo_loss, sampler_correction,
                                 simpo_loss)


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


def _trl_grpo_loss(accelerator, logps, old, ref, advantages, mask, beta, loss_type, epsilon, max_length,
                   level="token", is_ratio=None):
    from trl import GRPOTrainer

    batch, length = logps.shape
    host = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level,
        beta=beta, loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon, use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=is_ratio is not None, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_length, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)), accelerator=accelerator,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1))
    inputs = {"prompt_ids": torch.ones(batch, 3, dtype=torch.long), "prompt_mask": torch.ones(batch, 3),
              "completion_ids": torch.ones(batch, length, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}  # dapo: the generation batch's tokens (here the whole batch)
    if is_ratio is not None:  # a vLLM sampler's correction, as _generate_and_score_completions leaves it
        inputs["importance_sampling_ratio"] = is_ratio
    loss = GRPOTrainer._compute_loss(host, None, inputs)
    return loss, host._metrics["train"]


@pytest.mark.parametrize("loss_type,beta,level", [
    ("grpo", 0.04, "token"), ("grpo", 0.0, "token"), ("bnpo", 0.1, "token"), ("dr_grpo", 0.04, "token"),
    ("dapo", 0.04, "token"), ("dapo", 0.0, "token"),
    ("grpo", 0.04, "sequence"), ("grpo", 0.0, "sequence"), ("bnpo", 0.04, "sequence"), ("dapo", 0.0, "sequence")])
def test_grpo_loss_matches_trl(accelerator, loss_type, beta, level):
    generator = torch.Generator().manual_seed(0)
    logps = -torch.rand(6, 5, generator=generator) * 3
    old = logps + 0.3 * torch.randn(6, 5, generator=generator)  # ratios far enough from 1 to clip
    ref = logps + 0.2 * torch.randn(6, 5, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float32)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    advantages, _ = group_advantages(rewards, num_generations=2)
    if level == "sequence":  # a per-sequence offset, so that whole sequences' ratios clip too
        old = old + 0.4 * torch.randn(6, 1, generator=torch.Generator().manual_seed(4))  # clips low and high
    ours = grpo_loss(logps, old, ref, advantages, mask, epsilon_low=0.2, epsilon_high=0.2, beta=beta,
                     loss_type=loss_type, max_completion_length=8, importance_sampling_level=level)
    theirs, metrics = _trl_grpo_loss(accelerator, logps, old, ref, advantages, mask, beta, loss_type, 0.2, 8, level)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    assert ours.clip_ratio == pytest.approx(metrics["clip_ratio/region_mean"][0], abs=1e-6)
    assert ours.clip_ratio > 0
    if beta:
        assert ours.kl == pytest.approx(metrics["kl"][0], rel=1e-5)


@pytest.mark.parametrize("loss_type,beta,mode", [("grpo", 0.04, "token_truncate"), ("bnpo", 0.0, "token_mask"),
                                                  ("dapo", 0.04, "sequence_truncate"), ("grpo", 0.0, "sequence_mask")])
def test_grpo_loss_with_the_vllm_sampler_correction_matches_trl(accelerator, loss_type, beta, mode):
    """The truncated importance-sampling weight multiplies each token's clipped term before the KL, as TRL's
    ``_compute_loss`` does with ``use_vllm`` and ``vllm_importance_sampling_correction``."""
    generator = torch.Generator().manual_seed(1)
    logps = -torch.rand(4, 5, generator=generator) * 3
    old = logps + 0.3 * torch.randn(4, 5, generator=generator)
    ref = logps + 0.2 * torch.randn(4, 5, generator=generator)
    sampler = old + 0.8 * torch.randn(4, 5, generator=generator)  # a sampler far off, so the cap bites
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    advantages, _ = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), num_generations=2)
    ratio = sampler_correction(old, sampler, mask, mode, clip_max=2.0).ratio
    assert ratio.shape == ((4, 1) if mode.startswith("sequence") else (4, 5))
    ours = grpo_loss(logps, old, ref, advantages, mask, beta=beta, loss_type=loss_type,
                     importance_sampling_ratio=ratio)
    theirs, _ = _trl_grpo_loss(accelerator, logps, old, ref, advantages, mask, beta, loss_type, 0.2, 8,
                               is_ratio=ratio)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    plain = grpo_loss(logps, old, ref, advantages, mask, beta=beta, loss_type=loss_type)
    assert ours.loss.item() != pytest.approx(plain.loss.item(), abs=1e-4)  # the weight changed the loss


def test_sampler_correction_by_hand():
    """TRL's four modes on learner − sampler log-prob gaps of log 2, log 4 and a padded token (gap log 8, masked),
    cap 3: per token 2 and 4 → truncated to 2, 3 or masked to 2, 0; per completion exp(log 2 + log 4) = 8 → 3 or 0."""
    policy = torch.log(torch.tensor([[2.0, 4.0, 8.0]]))
    sampler = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = {"token_truncate": [[2.0, 3.0, 1.0]], "token_mask": [[2.0, 0.0, 1.0]],
                "sequence_truncate": [[3.0]], "sequence_mask": [[0.0]]}
    for mode, ratio in expected.items():
        result = sampler_correction(policy, sampler, mask, mode, clip_max=3.0)
        assert torch.allclose(result.ratio, torch.tensor(ratio)), mode
    stats = sampler_correction(policy, sampler, mask, "token_truncate", clip_max=3.0).stats
    assert stats["sampling/sampling_logp_difference/mean"] == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert stats["sampling/sampling_logp_difference/max"] == pytest.approx(math.log(4))
    assert (stats["sampling/importance_sampling_ratio/min"], stats["sampling/importance_sampling_ratio/mean"],
            stats["sampling/importance_sampling_ratio/max"]) == pytest.approx((2.0, 2.5, 3.0))
    # A token vLLM could not score (NaN) counts as no gap: ratio 1, and left out of the gap's mean.
    unscored = sampler_correction(policy, torch.tensor([[0.0, float("nan"), 0.0]]), mask, "token_truncate")
    assert torch.allclose(unscored.ratio, torch.tensor([[2.0, 1.0, 1.0]]))
    assert unscored.stats["sampling/sampling_logp_difference/mean"] == pytest.approx(math.log(2))


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


def test_gspo_sequence_ratio_by_hand():
    # Token ratios (1.5, 0.5) and (1.5, 1.5), advantages +1 and +1, epsilon 0.2. GSPO's ratio per sequence is the
    # geometric mean of its token ratios: sqrt(1.5 * 0.5) = sqrt(0.75) (inside the clip range), and 1.5 (clipped to
    # 1.2). Loss: mean(-sqrt(0.75), -1.2). Per token it would be mean(mean(-1.2, -0.5), -1.2) = -1.025.
    logps = torch.log(torch.tensor([[1.5, 0.5], [1.5, 1.5]]))
    old, ones = torch.zeros(2, 2), torch.ones(2, 2)
    result = grpo_loss(logps, old, None, torch.tensor([1.0, 1.0]), ones, beta=0.0, importance_sampling_level="sequence")
    assert result.loss.item() == pytest.approx((-math.sqrt(0.75) - 1.2) / 2, abs=1e-6)
    assert result.clip_high == pytest.approx(0.5) and result.clip_low == 0  # one of two sequences clipped
    token = grpo_loss(logps, old, None, torch.tensor([1.0, 1.0]), ones, beta=0.0)
    assert token.loss.item() == pytest.approx(-1.025, abs=1e-6)
    # the ratio averages the log-ratios of real tokens only: mask the 0.5 and sequence 1's ratio is 1.5, clipped
    masked = grpo_loss(logps, old, None, torch.tensor([1.0, 1.0]), torch.tensor([[1, 0], [1, 1]]), beta=0.0,
                       importance_sampling_level="sequence")
    assert masked.loss.item() == pytest.approx(-1.2, abs=1e-6)


def test_dapo_token_level_normalisation_by_hand():
    # The clipped example above, sequence 1's second token padded: token losses -1.2 | 1.5, 0.8 (A = +1 | -1).
    # dapo: their sum over the batch's 3 tokens; grpo: each sequence's mean, then the mean of the two.
    logps = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]]))
    args = (logps, torch.zeros(2, 2), None, torch.tensor([1.0, -1.0]), torch.tensor([[1, 0], [1, 1]]))
    assert grpo_loss(*args, beta=0.0, loss_type="dapo").loss.item() == pytest.approx(1.1 / 3, abs=1e-6)
    assert grpo_loss(*args, beta=0.0, loss_type="grpo").loss.item() == pytest.approx((-1.2 + 1.15) / 2, abs=1e-6)
    # with a generation batch of 6 tokens (num_items), this micro-batch's share
    assert grpo_loss(*args, beta=0.0, loss_type="dapo", num_items=6).loss.item() == pytest.approx(1.1 / 6, abs=1e-6)


def _pairs(seed: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return -torch.rand(n, generator=generator) * 2 - 0.1, -torch.rand(n, generator=generator) * 2 - 0.1


def test_simpo_matches_trl_cpo_and_hand(accelerator):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOTrainer

    chosen, rejected = _pairs(2)
    host = SimpleNamespace(alpha=0.0, beta=2.0, loss_type="simpo", simpo_gamma=0.5, label_smoothing=0.0,
                           accelerator=accelerator)
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(host, chosen, rejected)
    ours = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5)
    assert ours.loss.item() == pytest.approx(losses.mean().item(), rel=1e-6)
    assert torch.allclose(ours.chosen_rewards, chosen_rewards) and torch.allclose(ours.rejected_rewards,
                                                                                    rejected_rewards)
    # by hand: mean log-probs -1 and -2, beta 2, gamma 0.5: -log σ(2·1 - 0.5) = log(1 + e^-1.5)
    one = simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=0.5)
    assert one.loss.item() == pytest.approx(math.log(1 + math.exp(-1.5)), rel=1e-6)


def test_orpo_matches_trl_and_hand(accelerator):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOTrainer

    chosen, rejected = _pairs(3)
    nll = torch.tensor(0.7)
    host = SimpleNamespace(beta=0.1, accelerator=accelerator)
    losses, chosen_rewards, _, _, _ = ORPOTrainer.odds_ratio_loss(host, chosen, rejected)
    ours = orpo_loss(chosen, rejected, nll, beta=0.1)
    assert ours.loss.item() == pytest.approx((nll - losses.mean()).item(), rel=1e-6)  # TRL: nll - mean(β log σ)
    assert torch.allclose(ours.chosen_rewards, chosen_rewards)
    # by hand: p(chosen) 1/2 (odds 1), p(rejected) 1/4 (odds 1/3): log odds ratio log 3; nll - β log σ(log 3)
    one = orpo_loss(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25])), nll, beta=0.1)
    assert one.loss.item() == pytest.approx(0.7 - 0.1 * math.log(3 / 4), rel=1e-6)


def _trl_kto_loss(accelerator, policy, reference, policy_kl, reference_kl, labels, beta):
    """TRL's ``KTOTrainer._compute_loss`` on fixed per-token log-probabilities (0 outside the answers, as TRL's
    fused head gives): rows of ``input_ids`` are 1, those of ``KL_input_ids`` 2, so the fake model can tell them
    apart."""
    from trl import KTOTrainer

    def fake(main, mismatched):
        def forward(**kwargs):
            log_probs = mismatched if int(kwargs["input_ids"][0, 0]) == 2 else main
            zeros = torch.zeros_like(log_probs)
            return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, aux_loss=None)
        return forward

    module = torch.nn.Module()
    module.is_gradient_checkpointing = False
    rows, width = policy.shape[0], policy.shape[1] + 1
    host = SimpleNamespace(
        model=module, accelerator=accelerator, calculate_KL=True, precompute_ref_logps=False,
        ref_model=fake(reference, reference_kl), aux_loss_enabled=False, loss_type="kto", beta=beta,
        desirable_weight=1.0, undesirable_weight=1.0, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1, args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    host._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(host, model, batch)
    ones = torch.ones(rows, width, dtype=torch.long)
    inputs = {"input_ids": ones, "attention_mask": ones, "completion_mask": ones, "KL_input_ids": ones * 2,
              "KL_attention_mask": ones, "KL_completion_mask": ones, "label": labels}
    loss = KTOTrainer._compute_loss(host, fake(policy, policy_kl), inputs, return_outputs=False)
    return loss, host._metrics["train"]


@pytest.mark.parametrize("kl_shift", [0.0, 1.5])  # 1.5: the mismatched pairs' log-ratio is positive, z > 0
def test_kto_matches_trl(accelerator, kl_shift):
    generator = torch.Generator().manual_seed(4)
    # 3 pairs unpaired: rows 0-2 desirable (the chosen answers), 3-5 undesirable; 5 answer positions each
    policy, reference = (-torch.rand(6, 5, generator=generator) * 2 for _ in range(2))
    reference_kl = -torch.rand(6, 5, generator=generator) * 2
    policy_kl = reference_kl + kl_shift / 5 + 0.1 * torch.randn(6, 5, generator=generator)
    labels = torch.tensor([True] * 3 + [False] * 3)
    theirs, metrics = _trl_kto_loss(accelerator, policy, reference, policy_kl, reference_kl, labels, beta=0.1)
    summed = policy.sum(1), reference.sum(1)
    kl = (policy_kl.sum(1) - reference_kl.sum(1)).mean()
    ours = kto_loss(summed[0][:3], summed[0][3:], summed[1][:3], summed[1][3:], kl, beta=0.1)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-6)
    assert float(kl.clamp(min=0)) == pytest.approx(metrics["kl"][0], abs=1e-6)
    assert (metrics["kl"][0] > 0) == (kl_shift > 0)
    assert ours.margin == pytest.approx(metrics["rewards/margins"][0], rel=1e-5)


def test_kto_by_hand():
    # desirable log-ratio 2, undesirable -2, reference point z = 0.5, beta 0.1:
    # mean(1 - σ(0.1 · 1.5), 1 - σ(0.1 · 2.5)); a negative KL estimate is clamped to z = 0
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    result = kto_loss(torch.tensor([-1.0]), torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                      torch.tensor(0.5), beta=0.1)
    assert result.loss.item() == pytest.approx((2 - sigmoid(0.15) - sigmoid(0.25)) / 2, rel=1e-6)
    clamped = kto_loss(torch.tensor([-1.0]), torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                       torch.tensor(-1.0), beta=0.1)
    assert clamped.loss.item() == pytest.approx((2 - sigmoid(0.2) - sigmoid(0.2)) / 2, rel=1e-6)
