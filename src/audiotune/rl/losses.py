"""The GRPO (with GSPO and DAPO) and preference (DPO, KTO, ORPO, SimPO) objectives as plain functions of
log-probabilities.

Why not call TRL's trainers directly: their ``_compute_loss`` methods run the model themselves and take text or
image batches, not an audio collator's. The formulas are TRL's (same names, same constants, same reductions),
and ``tests/test_rl_losses.py`` runs TRL's own code on the same log-probabilities and checks the values agree:
``GRPOTrainer._compute_loss`` (token and sequence importance sampling, every loss type), ``DPOTrainer._compute_loss``,
``KTOTrainer._compute_loss``, ``experimental.orpo.ORPOTrainer.odds_ratio_loss`` and
``experimental.cpo.CPOTrainer.cpo_loss`` (``loss_type="simpo"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

# The types of RLConfig's choices (rl/config.py), and the values these functions accept.
GrpoLossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ImportanceSamplingLevel = Literal["token", "sequence"]
DpoLossType = Literal["sigmoid", "hinge", "ipo", "kto", "orpo", "simpo"]
ScaleRewards = Literal["group", "batch", "none"]
SamplerCorrectionMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
GRPO_LOSS_TYPES = get_args(GrpoLossType)
DPO_LOSS_TYPES = get_args(DpoLossType)
SCALE_REWARDS = get_args(ScaleRewards)
# Preference losses that never look at a reference model (no second forward pass, and --full can train them).
REFERENCE_FREE = ("orpo", "simpo")
# Preference losses on the mean log-probability per answer token rather than the sum (TRL's average_log_prob=True).
LENGTH_NORMALISED = ("orpo", "simpo")


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "group"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages: each completion's reward minus its group's mean, over a std (TRL's formula).

    ``rewards`` holds ``num_generations`` consecutive completions per prompt. ``scale``: divide by the group's
    std (``group``, GRPO), the whole batch's (``batch``) or not at all (``none``, Dr. GRPO). Returns the
    advantages and the std each was divided by (a zero std means the group carried no signal).
    """
    from trl.trainer.utils import nanstd

    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0), std


@dataclass
class GrpoLoss:
    loss: torch.Tensor
    kl: float  # mean per-token KL estimate to the reference over completion tokens (0 when beta is 0)
    clip_ratio: float  # share of completion tokens whose ratio was clipped (low or high region)
    clip_low: float
    clip_high: float


def grpo_loss(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor,
              ref_per_token_logps: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
              epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.04, loss_type: str = "grpo",
              max_completion_length: int | None = None, importance_sampling_level: str = "token",
              num_items: float | torch.Tensor | None = None,
              importance_sampling_ratio: torch.Tensor | None = None) -> GrpoLoss:
    """The clipped surrogate with a KL penalty, per completion token, reduced as ``loss_type`` says.

    ``per_token_logps`` (B, T) are the policy's (with grad), ``old_per_token_logps`` those the completions
    were sampled with (equal to the policy's on the first iteration, so the ratio is 1), ``ref_per_token_logps``
    the reference's; ``mask`` marks real completion tokens. KL is the k3 estimator
    ``exp(ref - logp) - (ref - logp) - 1``. ``grpo`` averages per sequence then over sequences, ``bnpo`` over all
    tokens, ``dr_grpo`` divides the token sum by ``B * max_completion_length``, ``dapo`` divides it by
    ``num_items``, the completion tokens of the whole generation batch (default: this batch's, ``mask.sum()``).

    ``importance_sampling_level="sequence"`` is GSPO (arXiv:2507.18071): one ratio per completion,
    ``exp(mean over its tokens of (logp - old))``, the geometric mean of its token ratios, clipped as a whole —
    TRL's ``GRPOTrainer._compute_loss`` (``log_importance_weights``), followed here.

    ``importance_sampling_ratio`` (from :func:`sampler_correction`; (B, T) or (B, 1)) weights the clipped term of
    each token, before the KL is added, where TRL multiplies ``inputs["importance_sampling_ratio"]`` in.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    mask = mask.to(per_token_logps.dtype)
    log_ratio = per_token_logps - old_per_token_logps
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # (B, 1)
    elif importance_sampling_level != "token":
        raise ValueError(f"unknown importance sampling level {importance_sampling_level!r}; token or sequence")
    coef_1 = torch.exp(log_ratio)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if importance_sampling_ratio is not None:
        per_token_loss = per_token_loss * importance_sampling_ratio
    per_token_kl = None
    if beta != 0.0:
        if ref_per_token_logps is None:
            raise ValueError("beta > 0 needs the reference log-probabilities")
        delta = ref_per_token_logps - per_token_logps
        per_token_kl = torch.exp(delta) - delta - 1
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        length = max_completion_length or per_token_logps.size(1)
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * length)
    elif loss_type == "dapo":
        loss = (per_token_loss * mask).sum() / torch.as_tensor(mask.sum() if num_items is None else num_items,
                                                                 dtype=mask.dtype).clamp(min=1.0)
    else:
        raise ValueError(f"unknown GRPO loss type {loss_type!r}; choose one of {', '.join(GRPO_LOSS_TYPES)}")

    def masked_mean(x: torch.Tensor) -> float:
        if x.shape[1] == 1:  # sequence level: one value per completion, averaged over completions (as TRL does)
            return float(x.mean())
        return float((x * mask).sum() / mask.sum().clamp(min=1.0))

    low = (coef_1 < 1 - epsilon_low) & (advantages < 0)
    high = (coef_1 > 1 + epsilon_high) & (advantages > 0)
    return GrpoLoss(loss=loss, kl=masked_mean(per_token_kl.detach()) if per_token_kl is not None else 0.0,
                    clip_ratio=masked_mean((low | high).float()), clip_low=masked_mean(low.float()),
                    clip_high=masked_mean(high.float()))


@dataclass
class SamplerCorrection:
    ratio: torch.Tensor  # (B, T) per token, or (B, 1) per completion: the weight of each token's clipped term
    stats: dict[str, float]  # TRL's metric names: the log-probability gap and the ratio's spread


def sampler_correction(policy_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor,
                       mode: str = "token_truncate", clip_max: float | None = 3.0,
                       clip_min: float | None = None) -> SamplerCorrection:
    """Truncated (or masked) importance sampling between the sampler and the learner, TRL's correction for a vLLM
    sampler (huggingface/trl, ``trl/trainer/grpo_trainer.py``, ``GRPOTrainer._generate_and_score_completions``:
    ``vllm_importance_sampling_correction``, ``vllm_importance_sampling_mode``,
    ``vllm_importance_sampling_clip_max``/``_min``, the latter once ``vllm_importance_sampling_cap``).

    Why: vLLM's kernels compute slightly different probabilities than the training forward pass (and, with stale
    weights, very different ones), so the completions are not quite samples of the policy being trained. Each
    token's loss is weighted by ``π_learner / π_sampler = exp(policy − sampler)`` (the difference over masked
    tokens; a NaN sampler value counts as no difference), per token or, in the ``sequence_*`` modes, one ratio per
    completion from the summed difference; ``*_truncate`` clamps it to ``[clip_min, clip_max]``, ``*_mask`` zeroes
    it outside. Stats as TRL logs them: ``sampling/sampling_logp_difference/{mean,max}`` (|difference| over real
    tokens) and ``sampling/importance_sampling_ratio/{min,mean,max}`` (over real tokens, or over completions).
    """
    mask = mask.to(policy_logps.dtype)
    diff = torch.nan_to_num((policy_logps - sampler_logps) * mask, nan=0.0)
    sequence = mode in ("sequence_truncate", "sequence_mask")
    ratio = torch.exp(diff.sum(-1, keepdim=True) if sequence else diff)
    if mode.endswith("_truncate"):
        ratio = torch.clamp(ratio, min=clip_min, max=clip_max)
    elif mode.endswith("_mask"):
        low = clip_min if clip_min is not None else -math.inf
        high = clip_max if clip_max is not None else math.inf
        ratio = ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
    else:
        raise ValueError(f"unknown sampler correction mode {mode!r}; choose one of "
                         f"{', '.join(get_args(SamplerCorrectionMode))}")
    real = mask.bool()
    gap = (policy_logps - sampler_logps).abs()[real & ~torch.isnan(sampler_logps)]
    spread = ratio.flatten() if sequence else ratio[real]

    def stat(x: torch.Tensor, reduce) -> float:
        return float(reduce(x)) if x.numel() else 0.0

    return SamplerCorrection(ratio, {
        "sampling/sampling_logp_difference/mean": stat(gap, torch.mean),
        "sampling/sampling_logp_difference/max": stat(gap, torch.max),
        "sampling/importance_sampling_ratio/min": stat(spread, torch.min),
        "sampling/importance_sampling_ratio/mean": stat(spread, torch.mean),
        "sampling/importance_sampling_ratio/max": stat(spread, torch.max)})


@dataclass
class DpoLoss:
    loss: torch.Tensor
    chosen_rewards: torch.Tensor  # beta * (log pi - log ref) of the chosen answers, detached
    rejected_rewards: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float((self.chosen_rewards > self.rejected_rewards).float().mean())

    @property
    def margin(self) -> float:
        return float((self.chosen_rewards - self.rejected_rewards).mean())


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None) -> DpoLoss:
    """DPO on summed answer log-probabilities: ``sigmoid`` (-log σ(β Δ)), ``hinge`` (relu(1 - β Δ)) or ``ipo``
    (((Δ per token) - 1/(2β))², TRL's length-normalised form; needs the answer lengths), where Δ is the chosen
    log-ratio minus the rejected one."""
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("the ipo loss needs the answers' token counts")
        ipo_delta = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
        losses = (ipo_delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; choose one of {', '.join(DPO_LOSS_TYPES)}")
    return DpoLoss(loss=losses.mean(), chosen_rewards=beta * chosen_logratios.detach(),
                   rejected_rewards=beta * rejected_logratios.detach())


def simpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float = 0.1,
               gamma: float = 0.5) -> DpoLoss:
    """SimPO (arXiv:2405.14734): ``-log σ(β (mean log π(chosen) - mean log π(rejected)) - γ)``, reference-free.

    ``*_logps`` are each answer's **mean** log-probability per token (the length normalisation that replaces
    DPO's reference). TRL keeps it in ``trl.experimental.cpo.CPOTrainer.cpo_loss`` with ``loss_type="simpo"``,
    which writes the margin as ``β (Δ - γ/β)``; this is that formula with ``label_smoothing=0`` and without the
    CPO NLL term (``cpo_alpha=0``: the paper's SimPO). The rewards are ``β · mean log π``, TRL's.
    """
    losses = -F.logsigmoid(beta * (chosen_logps - rejected_logps) - gamma)
    return DpoLoss(loss=losses.mean(), chosen_rewards=beta * chosen_logps.detach(),
                   rejected_rewards=beta * rejected_logps.detach())


def orpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_nll: torch.Tensor,
              beta: float = 0.1) -> DpoLoss:
    """ORPO (arXiv:2403.07691): the chosen answer's NLL plus ``β · -log σ(log odds(chosen) - log odds(rejected))``,
    where ``odds(y) = p / (1 - p)`` and ``p = exp(mean log π(y))``; reference-free.

    Follows ``trl.experimental.orpo.ORPOTrainer.odds_ratio_loss`` and ``get_batch_loss_metrics`` (``loss =
    nll - mean(β · log σ(log odds ratio))``; TRL's ``beta`` is the paper's λ), with ``log(1 - p)`` computed as
    TRL does (``log1mexp``). ``*_logps`` are mean log-probabilities per answer token; ``chosen_nll`` is the mean
    token NLL of the chosen answers. One deviation, on purpose: TRL's NLL covers prompt and answer, ours the answer
    tokens only (the paper's L_SFT is on the response, and audiotune's loss never covers the prompt).
    """
    import warnings

    with warnings.catch_warnings():  # TRL warns on every import from trl.experimental; the function is stable
        warnings.simplefilter("ignore")
        from trl.experimental.orpo.orpo_trainer import log1mexp

    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    loss = chosen_nll - (beta * F.logsigmoid(log_odds)).mean()
    return DpoLoss(loss=loss, chosen_rewards=beta * chosen_logps.detach(),
                   rejected_rewards=beta * rejected_logps.detach())


def kto_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, kl: torch.Tensor, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> DpoLoss:
    """KTO (arXiv:2402.01306, eq. 7) on unpaired examples: a desirable answer's loss is
    ``1 - σ(β (log-ratio - z))``, an undesirable one's ``1 - σ(β (z - log-ratio))``, averaged over all of them.

    ``z`` (``kl``) is the reference point: the batch's mean policy-minus-reference log-probability of mismatched
    (prompt, answer) pairs, clamped at 0 and detached — TRL's ``KTOTrainer._compute_loss`` (``loss_type="kto"``),
    followed here; the log-probabilities are sums over the answer tokens, as there. The two sides need not have
    the same count.
    """
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    z = kl.detach().clamp(min=0)
    losses = torch.cat([desirable_weight * (1 - torch.sigmoid(beta * (chosen_logratios - z))),
                        undesirable_weight * (1 - torch.sigmoid(beta * (z - rejected_logratios)))])
    return DpoLoss(loss=losses.nanmean(), chosen_rewards=beta * chosen_logratios.detach(),
                   rejected_rewards=beta * rejected_logratios.detach())
