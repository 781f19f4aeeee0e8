"""Run a Whisper-style audio tower over a batch's valid frames instead of the whole 30 s window.

AF3's processor pads every clip to a 30 s window (3,000 mel frames) and its encoder attends over all of
them with the padding masked out. For a 5 s clip five sixths of that work is padding. Masked attention
means the valid frames never attend to the padding, so cutting the padding off changes only what the
convolution front-end sees at the clip's last frame (zeros instead of the log-mel of silence) and the
positional embeddings taken (a prefix of the same table). On the tiny AF3 the audio embeddings differ by
~1e-7 and greedy answers are unchanged (BENCHMARKS.md measures speed and CIDEr-D both ways), so ``auto``, the
default of :func:`~audiotune.models.loading.load_model`, uses it wherever the family allows it.

A batch is cut to its longest clip, rounded up to a multiple of 4 frames (two stride-2 stages: the conv and
the pooling), so every clip keeps exactly the number of audio tokens the processor counted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import ConfigError
from .models.families import Family

ENCODER_FRAMES = ("window", "valid")  # and "auto" in load_model: valid where the family allows it


class _Positions(torch.nn.Module):
    """A prefix of the tower's positional table, under the attribute name its forward reads."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight


def install_valid_frames(model: torch.nn.Module, family: Family) -> Callable[[], None]:
    """Make ``model``'s audio tower skip the padding of each batch; returns a function that undoes it."""
    if not family.encoder_trims_to_valid_frames:
        raise ConfigError(f"--encoder-frames valid: the {family.name} family's audio tower needs whole windows; "
                          "use --encoder-frames window.")
    tower = next(m for name, m in model.named_modules() if name.split(".")[-1] == family.audio_tower_attribute)
    forward = tower.forward

    def trimmed(input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None, **kwargs):
        full = input_features.shape[-1]
        if input_features_mask is None:
            return forward(input_features, input_features_mask, **kwargs)
        frames = min(full, -(-int(input_features_mask.sum(-1).max()) // 4) * 4)
        if frames >= full:
            return forward(input_features, input_features_mask, **kwargs)
        positions = tower.embed_positions
        tower.embed_positions = _Positions(positions.weight[: (frames - 1) // 2 + 1])
        try:
            return forward(input_features[..., :frames], input_features_mask[..., :frames], **kwargs)
        finally:
            tower.embed_positions = positions

    tower.forward = trimmed
    return lambda: delattr(tower, "forward")


def apply_encoder_frames(model: torch.nn.Module, family: Family, mode: str) -> None:
    """``mode``: ``window`` (the architecture's own behaviour) or ``valid`` (see the module docstring)."""
    if mode not in ENCODER_FRAMES:
        raise ConfigError(f"--encoder-frames {mode!r}: choose {' or '.join(ENCODER_FRAMES)}.")
    if mode == "valid":
        install_valid_frames(model, family)
