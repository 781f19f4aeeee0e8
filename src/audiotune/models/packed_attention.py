"""Attention over packed rows, one example at a time: what flash-attention's varlen kernels do, on sdpa.

Why: with ``--packing`` (``data/packing.py``) transformers' sdpa path masks a packed row with a block-diagonal
causal mask (``masking_utils.find_packed_sequence_indices``), but ``scaled_dot_product_attention`` still computes the
whole row × row score matrix and then discards the other examples' blocks. On a language model whose width is small
next to its rows (the tiny benchmark models: d=256, rows of ~1000 tokens) that dense attention is as costly as the
padding packing removed. Flash attention reads the restarts as varlen boundaries and skips those blocks
(``modeling_flash_attention_utils.prepare_fa_kwargs_from_position_ids``); without it (CPU, or a GPU without the
flash-attn package) this implementation does the same with sdpa: each example's span of the row gets its own causal
``scaled_dot_product_attention`` call, so the cost is the sum of the examples' squares, not the row's.

It is registered with transformers' own extension points (``AttentionInterface`` for the attention,
``AttentionMaskInterface`` with transformers' ``sdpa_mask`` for the masks) and set on the language model only; a
layer it cannot serve exactly (sliding-window layers, bidirectional modules, a single query, keys beyond the queries)
or a row that is not packed (no restart: a padded batch keeps its padding mask) goes through transformers'
``sdpa_attention_forward`` with its mask, unchanged.
"""

from __future__ import annotations

import torch

NAME = "audiotune_packed_sdpa"


def _segments(positions: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive positions: an example, or a padding tail, of a packed row."""
    bounds = [0] + [i for i in range(1, len(positions)) if positions[i] != positions[i - 1] + 1] + [len(positions)]
    return list(zip(bounds, bounds[1:]))


def packed_sdpa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          sliding_window: int | None = None, position_ids: torch.Tensor | None = None, **kwargs):
    """transformers' attention-function signature (query/key/value: batch × heads × length × head_dim; returns
    batch × length × heads × head_dim): causal sdpa per example span when the row is packed."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    exact = (position_ids is not None and position_ids.dim() == 2 and sliding_window is None
             and getattr(module, "is_causal", True) and key.shape[2] == length > 1 and position_ids.shape[-1] == length
             and kwargs.get("position_bias") is None)
    batch = query.shape[0]
    rows = [_segments(positions) for positions in position_ids.expand(batch, -1).tolist()] if exact else []
    if not exact or all(len(spans) == 1 for spans in rows):  # not packed (a padded batch keeps its mask)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    # split/cat, not slicing and writing into an output: their backward is one concatenation, where each slice's
    # backward would zero-fill a gradient of the whole tensor (per example, per layer).
    out = []
    for (spans, q_row, k_row, v_row) in zip(rows, query.split(1), key.split(1), value.split(1)):
        sizes = [end - start for start, end in spans]
        out.append(torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
            for q, k, v in zip(q_row.split(sizes, 2), k_row.split(sizes, 2), v_row.split(sizes, 2))], dim=2))
    return torch.cat(out).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`NAME` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_packed_attention(model, family) -> bool:
    """Switch the language model (only) from sdpa to :data:`NAME`; False when it runs another implementation (flash
    attention already skips the other examples; eager is the user's explicit choice)."""
    config = family.lm_config(model.config)
    if config._attn_implementation != "sdpa":
        return False
    register()
    config._attn_implementation = NAME
    return True
