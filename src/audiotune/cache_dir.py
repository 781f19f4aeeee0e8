"""Where audiotune keeps what it builds once and reuses (tiny checkpoints' facts, merged adapters for vLLM):
``$AUDIOTUNE_CACHE``, else ``~/.cache/audiotune``. One home, so that a test or a user moves every cache at once."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AUDIOTUNE_CACHE"


def cache_root() -> Path:
    """The cache folder (not created here: each user makes its own subfolder when it first writes)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "audiotune")
