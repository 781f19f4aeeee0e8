"""Padding-free packing (``--packing``): each training batch's examples share rows up to ``--max-length`` tokens.

Why: a padded batch is as long as its longest conversation, and with clips of 1–30 s the audio placeholders alone
range from a few dozen tokens to hundreds (AF3: 750 per 30 s), so most of a batch can be padding. Packing puts the
batch's examples end to end in as few rows as fit (first-fit by length), so the language model computes on real
tokens only.

How it stays exact (what the tests check against the padded batch):

- **Attention stays inside an example.** Each example's ``position_ids`` restart at 0 and the batch carries no
  ``attention_mask``; transformers then builds a block-diagonal causal mask from the restarts for sdpa/eager
  (``masking_utils.find_packed_sequence_indices`` → ``packed_sequence_mask_function``, only when the 2-D mask is
  None and there is no cache, hence ``use_cache=False``), and its flash-attention path reads the same restarts as
  varlen boundaries (``modeling_flash_attention_utils.prepare_fa_kwargs_from_position_ids``) from a single row, so
  with flash attention a batch is one row (:attr:`PackingCollator.single_row`). On sdpa, ``train`` switches the
  language model to ``models/packed_attention.py`` (one sdpa call per example span: the dense mask would compute
  every other example's block too). TRL's padding-free collator builds its rows the same way
  (``trl/trainer/sft_trainer.py``, ``DataCollatorForLanguageModeling.get_position_ids_from_packed_seq_lengths``).
- **Labels per example.** Each example keeps its own labels (assistant tokens only); the first token of each
  example is never a target, so no example is trained to predict the next one's start.
- **Audio in order.** Every family here places audio embeddings at the audio-token positions in row-major order
  (``masked_scatter``), so the processor is called once on the examples *in packed order*: its features come out in
  the order their placeholders appear in the packed rows, whatever the family's feature layout (windows, clips).
- **Batch size counts examples**, as without packing: the schedule, the data order and ``num_items_in_batch``
  (the Trainer counts label tokens) are the unpacked run's; only the padding is gone.

A family whose positions cannot restart per example (3-D multimodal rotary positions) is refused
(:meth:`Family.packing_refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..conversation import Example
from ..errors import ConfigError
from .collator import IGNORE_INDEX, ConversationCollator

# Per-token tensors a processor returns beside input_ids (packed like input_ids); every other tensor is audio.
_PER_TOKEN = ("input_ids", "labels", "token_type_ids", "mm_token_type_ids")


def first_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of at most ``max_length`` (first-fit decreasing: longest first, each
    into the first bin it fits). A length over ``max_length`` gets a bin of its own: an example is never cut."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        slot = next((b for b, free in enumerate(room) if length <= free), None)
        if slot is None:
            bins.append([index])
            room.append(max_length - length)
        else:
            bins[slot].append(index)
            room[slot] -= length
    return bins


def next_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    """Consecutive indices grouped into bins of at most ``max_length`` (a new bin when the next does not fit): the
    exact split of an already ordered sequence, which keeps that order (and so the audio order) row by row."""
    bins: list[list[int]] = []
    used = 0
    for index, length in enumerate(lengths):
        if not bins or used + length > max_length:
            bins.append([])
            used = 0
        bins[-1].append(index)
        used += length
    return bins


def check_packing(family, config) -> None:
    """Refuse ``--packing`` for a family that cannot pack, naming it and what to do."""
    reason = family.packing_refusal(config)
    if reason:
        raise ConfigError(f"--packing: {reason}. Train {family.name} without --packing (padded batches; "
                          "--group-by-length also cuts padding).")


@dataclass
class PackingCollator:
    """A :class:`ConversationCollator` batch, repacked without padding: the examples of a batch end to end in rows of
    at most ``max_length`` tokens, ``position_ids`` restarting at 0 per example, no ``attention_mask``.

    Packing is planned with a cheap length estimate (audio tokens from each clip's duration, the text's tokens, and
    the template's overhead as seen so far), the processor runs once on the examples in that order, and the rows are
    then cut with the exact lengths, so no row exceeds ``max_length`` unless one example alone does.
    """

    collator: ConversationCollator
    max_length: int = 2048
    # All of a batch in one row, whatever its length: flash-attention's varlen path reads the restarts only from a
    # single flattened row (transformers ``modeling_flash_attention_utils._is_packed_sequence``: batch_size != 1 →
    # not packed, and the examples of a row would attend to each other). Its kernels skip the masked blocks, so one
    # long row costs no more than several short ones there; sdpa/eager compute a full row × row mask, hence rows.
    single_row: bool = False
    # Template tokens beyond prompt + answer text (role markers, BOS...): the largest seen, for planning only.
    overhead: int = field(default=0, init=False)
    rows_built: int = field(default=0, init=False)  # totals for the padding report (bench, logs)
    tokens_built: int = field(default=0, init=False)
    slots_built: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.collator.training:
            raise ConfigError("PackingCollator packs training batches (labels); generation batches stay padded.")
        if self.max_length < 1:
            raise ConfigError(f"--max-length must be at least 1 (got {self.max_length}).")

    def estimate(self, example: Example) -> int:
        """Tokens ``example`` will take: its clips' audio tokens plus its text's, plus the template overhead."""
        family = self.collator.family
        audio = sum(family.audio_tokens(len(family.prepare_audio(a)) / family.sampling_rate)
                    for a in example.audios())
        texts = [part["text"] for m in example.messages for part in
                 (m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}])
                 if part.get("type") == "text"]
        text = " ".join([*texts, self.collator._answer(example)])
        return audio + len(self.collator.processor.tokenizer.encode(text, add_special_tokens=False)) + self.overhead

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        estimates = [self.estimate(e) for e in examples]
        order = [i for pack in first_fit(estimates, self.max_length) for i in pack]
        ordered = [examples[i] for i in order]
        batch = self.collator(ordered)
        real = batch.pop("attention_mask").bool()
        lengths = real.sum(1).tolist()
        self.overhead = max(self.overhead, *(n - (e - self.overhead) for n, e in
                                             zip(lengths, (estimates[i] for i in order))))
        rows = [list(range(len(lengths)))] if self.single_row else next_fit(lengths, self.max_length)
        width = max(sum(lengths[i] for i in row) for row in rows)
        pad_id = self.collator.processor.tokenizer.pad_token_id or 0
        packed: dict[str, Any] = {}
        for key in [k for k in _PER_TOKEN if k in batch]:
            fill = IGNORE_INDEX if key == "labels" else pad_id if key == "input_ids" else 0
            packed[key] = _pack(batch.pop(key), real, rows, width, fill)
        # Positions restart at 0 per example; the padding tail counts on from 0 too (one more block, never a target).
        positions = [torch.cat([torch.arange(lengths[i]) for i in row] + [torch.arange(width - sum(lengths[i]
                                                                                                for i in row))])
                     for row in rows]
        packed["position_ids"] = torch.stack(positions)
        if "labels" in packed:  # an example's first token is predicted from the previous example: never a target
            packed["labels"][packed["position_ids"] == 0] = IGNORE_INDEX
        packed.update(batch)  # audio features (already in packed order) and the family's constant inputs
        packed["use_cache"] = False  # a cache turns transformers' packed-sequence detection off
        self.rows_built += len(rows)
        self.slots_built += len(rows) * width
        self.tokens_built += sum(lengths)
        return packed


def _pack(values: torch.Tensor, real: torch.Tensor, rows: list[list[int]], width: int, fill: int) -> torch.Tensor:
    """Each row's examples' real tokens (``real``: the processor's attention mask, either padding side) end to end,
    then ``fill`` up to ``width``."""
    out = torch.full((len(rows), width), fill, dtype=values.dtype)
    for r, row in enumerate(rows):
        tokens = torch.cat([values[i][real[i]] for i in row])
        out[r, : len(tokens)] = tokens
    return out

