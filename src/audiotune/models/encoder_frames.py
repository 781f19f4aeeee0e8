"""Compute features and run a Whisper-style audio tower only as far as a batch's clips reach, not over whole windows.

Whisper-style processors pad every clip to a fixed window (30 s; Qwen2.5-Omni's 300 s) before computing its log-mel
features, and the encoder then runs over all of it. For a batch of 5 s clips most of that work is padding. How much
of it can go depends on what the audio path reads, the family's ``valid_frames`` (``family.py``):

- ``"selected"`` (Qwen2.5-Omni): the model keeps each clip's valid frames and drops the rest before its encoder, so
  the features are computed only as far as the batch's longest clip reaches, always: identical answers, less work.
- ``"masked"`` (AF3, Music Flamingo, Qwen2-Audio): the tower attends over the whole window with the padding masked
  out. ``--encoder-frames valid`` runs it over a batch's valid frames plus :data:`MARGIN` frames, and the features
  only that far. The margin keeps what every valid frame sees the same as in the whole window: the first convolution
  reads one frame either side, the stride-2 second one a frame of the first's output either side, so a valid frame's
  output depends on at most two padding frames past the clip, which the margin keeps, with the window's values.
  Masked attention never mixes the padding in, the positional table is read as a prefix of the same table, and each
  clip keeps the audio tokens the processor counted: the audio embeddings equal the whole window's up to float
  rounding (the order of the attention sums). (Cut at the clip's own end, as before 2026-12, the last valid frames
  read the convolutions' zero padding instead, and a trained adapter's logits moved by up to 5e-2.) It stays an
  opt-in all the same: by default audiotune's answers are the ones plain transformers computes for the checkpoint
  (the pipeline, the tests' references, vLLM's whole-window encoder), and a greedy answer can still flip where two
  tokens' logits tie to within that rounding; ``make bench`` scores the demo's tuned adapter both ways
  (``bench_generation.demo_quality``).
- ``None``: the tower attends over the padding too (Voxtral, GLM-ASR), so cutting it changes what the valid frames
  see; such families keep whole windows.

The features over the cut window are the whole window's exactly: every kept frame's STFT window ends before the
clip's zeros run out (the margin frames are zeros, and the reflection at the cut edge mirrors zeros), and the
log-mel floor of each clip is its own maximum minus 8, which padding (log10 of the 1e-10 floor) never sets. A batch
with a clip that fills a whole window (a long clip's first chunk) keeps whole windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .family import Family

ENCODER_FRAMES = ("window", "valid")
MARGIN = 2  # padding frames past the longest clip that its last valid frames read through the two convolutions
_MARK = "audiotune_valid_frames"  # set on a tower that runs over valid frames


def span_frames(valid: int, window: int) -> int:
    """Frames of a batch whose longest clip has ``valid`` frames: those plus :data:`MARGIN`, rounded up to a
    multiple of 4 (two stride-2 stages, so the tower's output has whole positions), at most the ``window``."""
    return min(window, -(-(valid + MARGIN) // 4) * 4)


def feature_samples(family: Family, extractor: Any, lengths: Sequence[int], encoder_frames: str) -> int | None:
    """Samples to pad a batch's clips to (the feature extractor's ``max_length``) so that its features cover every
    frame the model reads, or None for the whole window. ``lengths``: the clips' samples, as the processor gets them;
    ``encoder_frames``: how the model runs its tower (``valid`` or ``window``)."""
    reads = family.valid_frames
    if not lengths or reads is None or (reads == "masked" and encoder_frames != "valid"):
        return None
    hop, window, n_fft = (getattr(extractor, k, None) for k in ("hop_length", "n_samples", "n_fft"))
    if not (hop and window and n_fft) or n_fft // 2 > (MARGIN + 1) * hop:  # the STFT would read past the margin
        return None
    longest = max(lengths)
    if longest >= window:
        return None
    frames = span_frames(-(-longest // hop), window // hop)
    return frames * hop if frames * hop < window else None


def _tower(model: torch.nn.Module, family: Family) -> torch.nn.Module:
    return next(m for name, m in model.named_modules() if name.split(".")[-1] == family.audio_tower_attribute)


class _Positions(torch.nn.Module):
    """A prefix of the tower's positional table, under the attribute name its forward reads."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight


def install_valid_frames(model: torch.nn.Module, family: Family) -> Callable[[], None]:
    """Make ``model``'s audio tower run over each batch's valid frames; returns a function that undoes it."""
    if family.valid_frames is None:
        raise ConfigError(f"--encoder-frames valid: the {family.name} family's audio tower attends over the padding "
                          "of its window, so only whole windows give its answers; use --encoder-frames window.")
    if family.valid_frames == "selected":  # the model reads valid frames only, with or without the flag
        return lambda: None
    tower = _tower(model, family)
    forward, positions = tower.forward, tower.embed_positions

    def trimmed(input_features: torch.Tensor, *args, **kwargs):
        # AF3's towers take the 2-D frame mask (first argument or input_features_mask): whole windows are cut here.
        # Qwen2-Audio's takes a 4-D attention mask its model built for the features it was given (already cut).
        mask = args[0] if args else kwargs.get("input_features_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            frames = span_frames(int(mask.sum(-1).max()), input_features.shape[-1])
            input_features, mask = input_features[..., :frames], mask[..., :frames]
            args, kwargs = ((mask, *args[1:]), kwargs) if args else (args, {**kwargs, "input_features_mask": mask})
        length = (input_features.shape[-1] - 1) // 2 + 1  # positions after the stride-2 convolution
        if length >= positions.weight.shape[0]:
            return forward(input_features, *args, **kwargs)
        # Qwen2-Audio's tower refuses any input but config.max_source_positions × its strides (transformers 5.24
        # qwen2_audio/modeling_qwen2_audio.py Qwen2AudioEncoder.forward): it is told the cut length for this call.
        config = tower.config
        window = config.max_source_positions
        tower.embed_positions, config.max_source_positions = _Positions(positions.weight[:length]), length
        try:
            return forward(input_features, *args, **kwargs)
        finally:
            tower.embed_positions, config.max_source_positions = positions, window

    tower.forward = trimmed
    setattr(tower, _MARK, True)

    def undo() -> None:
        delattr(tower, "forward")
        delattr(tower, _MARK)

    return undo


def encoder_frames_of(model: torch.nn.Module) -> str:
    """``valid`` when ``model``'s audio tower runs over valid frames (:func:`install_valid_frames`), else
    ``window``: how far the collator computes features for it."""
    return "valid" if any(getattr(m, _MARK, False) for m in model.modules()) else "window"


def apply_encoder_frames(model: torch.nn.Module, family: Family, mode: str) -> None:
    """``mode``: ``window`` (the architecture's own behaviour) or ``valid`` (see the module docstring)."""
    if mode not in ENCODER_FRAMES:
        raise ConfigError(f"--encoder-frames {mode!r}: choose {' or '.join(ENCODER_FRAMES)}.")
    if mode == "valid":
        install_valid_frames(model, family)
