"""DPO (and KTO, ORPO, SimPO) on preference pairs (audio, prompt, chosen, rejected) with the audiotune collator.

TRL's ``DPOTrainer`` tokenises text prompts and completions itself (and takes images, not audio), so this is the
audiotune ``Trainer`` with TRL's ``DPOConfig`` as its arguments: the collator renders the chosen and the rejected
conversation of each row (one batch, chosen rows first, as TRL lays it out) with labels on the assistant's answer
only; the loss compares their summed log-probabilities under the policy and under the reference (the same model
with its adapter disabled) with :func:`audiotune.rl.losses.dpo_loss`, checked against TRL's in the tests. The clip
is the same in both rows, so the audio-embedding cache encodes it once.

``--dpo-loss-type`` picks the objective, each checked against TRL's own code in ``tests/test_rl_losses.py``:
``sigmoid``/``hinge``/``ipo`` (TRL's ``DPOTrainer``), ``simpo`` and ``orpo`` (reference-free, on each answer's mean
token log-probability: TRL's experimental ``CPOTrainer`` and ``ORPOTrainer``), and ``kto`` (TRL's ``KTOTrainer``),
which learns from unpaired examples: each pair is unpaired as TRL's ``unpair_preference_dataset`` does (the chosen
answer is a desirable example, the rejected one an undesirable one, same prompt), so a preference dataset trains
KTO as it is; the KL reference point comes from mismatched (prompt, answer) rows, each row's prompt with the
previous row's answer, as TRL's ``KTOTrainer`` builds its ``KL_completion_ids``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..data.collator import IGNORE_INDEX, ConversationCollator
from ..conversation import Example
from ..trainer import AudiotuneTrainer
from .common import MetricsLogMixin, reference_context, token_logps
from .losses import REFERENCE_FREE, dpo_loss, kto_loss, orpo_loss, simpo_loss


@dataclasses.dataclass
class PreferenceCollator:
    """Examples of the preference task → one batch of 2B rows: the chosen answers, then the rejected ones. With
    ``kto``, also ``batch["kl"]``: the same 2B prompts, each with the previous row's answer (cycled)."""

    processor: Any
    family: Any
    kto: bool = False

    def __post_init__(self) -> None:
        self.inner = ConversationCollator(self.processor, self.family, training=True)

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        rows = list(examples) + [dataclasses.replace(e, references=[e.meta["rejected"]]) for e in examples]
        batch = self.inner(rows)
        if self.kto:
            mismatched = [dataclasses.replace(row, references=rows[i - 1].references) for i, row in enumerate(rows)]
            batch["kl"] = self.inner(mismatched)
        return batch


def answer_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled (answer) tokens, and how many there are."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1, :]
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    per_token = token_logps(logits, targets.clamp(min=0)) * mask
    return per_token.sum(1), mask.sum(1)


class DpoTrainer(MetricsLogMixin, AudiotuneTrainer):
    """``args`` is a TRL ``DPOConfig`` (``beta``, ``loss_type``); ``simpo_gamma`` is SimPO's margin (TRL keeps it
    in ``CPOConfig``, which this trainer does not take)."""

    def __init__(self, *args: Any, simpo_gamma: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.simpo_gamma = simpo_gamma
        self.model_accepts_loss_kwargs = False
        if self.args.disable_dropout:  # policy and reference passes see the same network
            from trl.trainer.utils import disable_dropout_in_model

            disable_dropout_in_model(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_type, beta = self.args.loss_type[0], self.args.beta
        inputs = dict(inputs)
        mismatched = inputs.pop("kl", None)
        logps, lengths = answer_logps(model, inputs)
        chosen, rejected = logps.chunk(2)
        chosen_lengths, rejected_lengths = lengths.chunk(2)
        if loss_type in REFERENCE_FREE:  # mean log-probability per answer token; no reference pass
            mean_chosen, mean_rejected = chosen / chosen_lengths.clamp(min=1), rejected / rejected_lengths.clamp(min=1)
            if loss_type == "simpo":
                result = simpo_loss(mean_chosen, mean_rejected, beta=beta, gamma=self.simpo_gamma)
            else:
                nll = -chosen.sum() / chosen_lengths.sum().clamp(min=1)  # token mean over the chosen answers
                result = orpo_loss(mean_chosen, mean_rejected, nll, beta=beta)
                self.record("nll_loss", nll.item())
        else:
            unwrapped = self.accelerator.unwrap_model(model)
            with torch.no_grad(), reference_context(unwrapped):
                ref_logps, _ = answer_logps(model, inputs)
                ref_mismatched = answer_logps(model, mismatched)[0] if loss_type == "kto" else None
            ref_chosen, ref_rejected = ref_logps.chunk(2)
            if loss_type == "kto":
                with torch.no_grad():  # the mean over every process's rows, as TRL's KTOTrainer gathers it
                    kl = (answer_logps(model, mismatched)[0] - ref_mismatched).mean().reshape(1)
                    kl = self.accelerator.gather(kl).mean().clamp(min=0)
                result = kto_loss(chosen, rejected, ref_chosen, ref_rejected, kl, beta=beta)
                self.record("kl", kl.item())
            else:
                result = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, loss_type=loss_type,
                                  chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
        self.record("rewards/chosen", result.chosen_rewards.mean().item())
        self.record("rewards/rejected", result.rejected_rewards.mean().item())
        self.record("rewards/accuracies", result.accuracy)
        self.record("rewards/margins", result.margin)
        self.record("logps/chosen", chosen.detach().mean().item())
        self.record("logps/rejected", rejected.detach().mean().item())
        return (result.loss, None) if return_outputs else result.loss
