"""The GRPO and DPO objectives as plain functions of log-probabilities.

Why not call TRL's trainers directly: their ``_compute_loss`` methods run the model themselves and take text or
image batches, not an audio collator's. The formulas are TRL's (same names, same constants, same reductions),
and ``tests/test_rl_losses.py`` runs TRL's own ``GRPOTrainer._compute_loss`` and ``DPOTrainer._compute_loss``
on the same log-probabilities and checks the values agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

# The types of RLConfig's choices (rl/config.py), and the values these functions accept.
GrpoLossType = Literal["grpo", "bnpo", "dr_grpo"]
DpoLossType = Literal["sigmoid", "hinge", "ipo"]
ScaleRewards = Literal["group", "batch", "none"]
GRPO_LOSS_TYPES = get_args(GrpoLossType)
DPO_LOSS_TYPES = get_args(DpoLossType)
SCALE_REWARDS = get_args(ScaleRewards)


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
              max_completion_length: int | None = None) -> GrpoLoss:
    """The clipped surrogate with a KL penalty, per completion token, reduced as ``loss_type`` says.

    ``per_token_logps`` (B, T) are the policy's (with grad), ``old_per_token_logps`` those the completions
    were sampled with (equal to the policy's on the first iteration, so the ratio is 1), ``ref_per_token_logps``
    the reference's; ``mask`` marks real completion tokens. KL is the k3 estimator
    ``exp(ref - logp) - (ref - logp) - 1``. ``grpo`` averages per sequence then over sequences, ``bnpo`` over all
    tokens, ``dr_grpo`` divides the token sum by ``B * max_completion_length``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    mask = mask.to(per_token_logps.dtype)
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
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
    else:
        raise ValueError(f"unknown GRPO loss type {loss_type!r}; choose one of {', '.join(GRPO_LOSS_TYPES)}")

    def masked_mean(x: torch.Tensor) -> float:
        return float((x * mask).sum() / mask.sum().clamp(min=1.0))

    low = (coef_1 < 1 - epsilon_low) & (advantages < 0)
    high = (coef_1 > 1 + epsilon_high) & (advantages > 0)
    return GrpoLoss(loss=loss, kl=masked_mean(per_token_kl.detach()) if per_token_kl is not None else 0.0,
                    clip_ratio=masked_mean((low | high).float()), clip_low=masked_mean(low.float()),
                    clip_high=masked_mean(high.float()))


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
