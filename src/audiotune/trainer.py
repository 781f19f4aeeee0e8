"""The Trainer every recipe runs (supervised in ``train.py``, GRPO and DPO in ``rl/``).

Why its own module: the RL trainers subclass it, and ``train.py`` picks an RL trainer; with the class in the recipe
file the two imported each other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import Trainer

from .checkpoints import AtomicCheckpointMixin


class AudiotuneTrainer(AtomicCheckpointMixin, Trainer):
    """The Trainer, with atomic checkpoints (see checkpoints.py) and length-grouped batches built from
    :func:`estimated_lengths` when asked for."""

    lengths: list[int] | None = None
    rank_split_stream = False  # the train stream is already split by rank (split_dataset_by_node)
    # parameter name → its own learning rate (the encoder's and the projector's, --encoder/--projector-learning-rate)
    learning_rate_of: Callable[[str], float | None] | None = None

    def create_optimizer(self, *args, **kwargs):
        """The Trainer's optimizer, each of its groups split where a parameter has its own learning rate: the
        encoder and projector then learn at theirs, with the same weight decay and the same schedule's shape."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.learning_rate_of is None:
            return optimizer
        names = {id(p): n for n, p in self.model.named_parameters()}
        groups = []
        for group in optimizer.param_groups:
            by_rate: dict[float | None, list] = {}
            for parameter in group["params"]:
                by_rate.setdefault(self.learning_rate_of(names.get(id(parameter), "")), []).append(parameter)
            for rate, parameters in by_rate.items():
                groups.append({**group, "params": parameters, **({"lr": rate} if rate is not None else {})})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def get_train_dataloader(self):
        if not self.rank_split_stream:
            return super().get_train_dataloader()
        # accelerate would split it again (or make rank 0 read everything and dispatch); this stream is
        # this rank's own already, so it gets a plain DataLoader. The Trainer moves batches to the device.
        return torch.utils.data.DataLoader(self.train_dataset, batch_size=self._train_batch_size,
                                           collate_fn=self.data_collator,
                                           num_workers=self.args.dataloader_num_workers)

    def _get_train_sampler(self, *args, **kwargs):
        if self.lengths is None:
            return super()._get_train_sampler(*args, **kwargs)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        generator = torch.Generator().manual_seed(self.args.data_seed or self.args.seed)
        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    lengths=self.lengths, generator=generator)
