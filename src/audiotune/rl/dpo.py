"""DPO on preference pairs (audio, prompt, chosen, rejected) with the audiotune collator.

TRL's ``DPOTrainer`` tokenises text prompts and completions itself (and takes images, not audio), so this is the
audiotune ``Trainer`` with TRL's ``DPOConfig`` as its arguments: the collator renders the chosen and the rejected
conversation of each row (one batch, chosen rows first, as TRL lays it out) with labels on the assistant's answer
only; the loss compares their summed log-probabilities under the policy and under the reference (the same model
with its adapter disabled) with :func:`audiotune.rl.losses.dpo_loss`, checked against TRL's in the tests. The clip
is the same in both rows, so the audio-embedding cache encodes it once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..data.collator import IGNORE_INDEX, ConversationCollator
from ..conversation import Example
from ..trainer import AudiotuneTrainer
from .common import MetricsLogMixin, reference_context, token_logps
from .losses import dpo_loss


@dataclasses.dataclass
class PreferenceCollator:
    """Examples of the preference task → one batch of 2B rows: the chosen answers, then the rejected ones."""

    processor: Any
    family: Any

    def __post_init__(self) -> None:
        self.inner = ConversationCollator(self.processor, self.family, training=True)

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        rejected = [dataclasses.replace(e, references=[e.meta["rejected"]]) for e in examples]
        return self.inner(list(examples) + rejected)


def answer_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled (answer) tokens, and how many there are."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1, :]
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    per_token = token_logps(logits, targets.clamp(min=0)) * mask
    return per_token.sum(1), mask.sum(1)


class DpoTrainer(MetricsLogMixin, AudiotuneTrainer):
    """``args`` is a TRL ``DPOConfig`` (``beta``, ``loss_type``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        if self.args.disable_dropout:  # policy and reference passes see the same network
            from trl.trainer.utils import disable_dropout_in_model

            disable_dropout_in_model(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, lengths = answer_logps(model, inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), reference_context(unwrapped):
            ref_logps, _ = answer_logps(model, inputs)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        chosen_lengths, rejected_lengths = lengths.chunk(2)
        result = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=self.args.beta,
                          loss_type=self.args.loss_type[0], chosen_lengths=chosen_lengths,
                          rejected_lengths=rejected_lengths)
        self.record("rewards/chosen", result.chosen_rewards.mean().item())
        self.record("rewards/rejected", result.rejected_rewards.mean().item())
        self.record("rewards/accuracies", result.accuracy)
        self.record("rewards/margins", result.margin)
        self.record("logps/chosen", chosen.detach().mean().item())
        self.record("logps/rejected", rejected.detach().mean().item())
        return (result.loss, None) if return_outputs else result.loss
