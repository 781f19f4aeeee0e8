"""The Trainer every recipe runs (supervised in ``train.py``, GRPO and DPO in ``rl/``).

Why its own module: the RL trainers subclass it, and ``train.py`` picks an RL trainer; with the class in the recipe
file the two imported each other.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from .checkpoints import AtomicCheckpointMixin


class AudiotuneTrainer(AtomicCheckpointMixin, Trainer):
    """The Trainer, with atomic checkpoints (see checkpoints.py) and length-grouped batches built from
    :func:`estimated_lengths` when asked for."""

    lengths: list[int] | None = None
    rank_split_stream = False  # the train stream is already split by rank (split_dataset_by_node)

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
