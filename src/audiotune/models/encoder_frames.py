"""Run a Whisper-style audio tower over a batch's valid frames instead of the whole 30 s window.

AF3's processor pads every clip to a 30 s window (3,000 mel frames) and its encoder attends over all of
them with the padding masked out. For a 5 s clip five sixths of that work is padding. Masked attention
means the valid frames never attend to the padding, so cutting the padding off changes only what the
convolution front-end sees at the clip's last frame (zeros instead of the log-mel of silence) and the
positional embeddings taken (a prefix of the same table). Measured on the tiny AF3: for most batches the audio
embeddings differ by ~1e-7, but a trained adapter's logits moved by up to 5e-2 on one test batch. ``make bench``
scores the demo's tuned model both ways (``bench_generation.demo_quality``): on 2026-12-02 CIDEr-D 1.1064 either
way, 50 of 50 captions identical, generation 3.98x the guide's against 2.47x with whole windows. It stays an
opt-in (``--encoder-frames valid``) all the same: by default audiotune's answers are the ones plain transformers
computes for the checkpoint (the pipeline, the tests' references, vLLM's whole-window encoder), and the gain is
AF3/Music Flamingo's alone.

A batch is cut to its longest clip, rounded up to a multiple of 4 frames (two stride-2 stages: the conv and
the pooling), so every clip keeps exactly the number of audio tokens the processor counted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError
from .family import Family

ENCODER_FRAMES = ("window", "valid")


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
