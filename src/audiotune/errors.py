"""audiotune's exception hierarchy.

Every error a user can cause (bad audio, a wrong column, an unknown model) is an
:class:`AudiotuneError` whose message names the item at fault and says what to do.
The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AudiotuneError(Exception):
    """Base class: a problem the user can fix, described in the message."""


class AudioDecodeError(AudiotuneError):
    """An audio item cannot be decoded, is empty, or holds non-finite samples."""


class AudioTooLongError(AudiotuneError):
    """An audio item is longer than the model family (or a server's limit) accepts; ``seconds`` is its length where
    known."""

    def __init__(self, message: str, seconds: float | None = None) -> None:
        super().__init__(message)
        self.seconds = seconds


class DatasetSchemaError(AudiotuneError):
    """A dataset lacks a column, has a wrong type in one, or is empty."""


class ModelFamilyError(AudiotuneError):
    """A checkpoint's architecture is not one audiotune knows how to handle."""


class ConfigError(AudiotuneError):
    """A run configuration value is invalid or inconsistent."""


class CheckpointError(AudiotuneError):
    """A checkpoint or adapter folder is missing, incomplete or does not match the base model."""


class PathOutsideRootError(AudiotuneError):
    """A path given to the web UI resolves outside the folder the UI was started on (``audiotune ui --root``)."""


class RewardError(AudiotuneError):
    """A reward function (the user's ``module:function``) raised or returned something other than one float per
    completion."""


class RolloutServerError(AudiotuneError):
    """GRPO's vLLM rollout server stopped answering and could not be brought back (it died again after its one
    restart, or it is the user's own server, given by ``--vllm-url``)."""
