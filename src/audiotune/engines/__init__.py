"""Generation backends behind one interface (:class:`~.base.Engine`): which one runs is chosen here only.

``--backend`` names a key of :data:`ENGINES`. Adding a backend is one module with an :class:`~.base.Engine`
subclass, one line below and its name in ``config.BACKENDS`` (the flag's choices, kept torch-free there).
Engine modules are imported when opened, so choosing one backend never imports another's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..config import BACKENDS
from ..errors import ConfigError
from .base import ONE_ADAPTER, Engine, GenerationRequest, Sample

# backend name → "module:class", imported on first use
ENGINES: dict[str, str] = {
    "transformers": "audiotune.engines.native:NativeEngine",
    "vllm": "audiotune.engines.vllm_engine:VllmEngine",
}

__all__ = ["ENGINES", "ONE_ADAPTER", "Engine", "GenerationRequest", "Sample", "engine_class", "open_engine"]


def engine_class(backend: str) -> type[Engine]:
    if backend not in ENGINES:
        raise ConfigError(f"--backend {backend!r}: choose {' or '.join(BACKENDS)}.")
    module, _, name = ENGINES[backend].partition(":")
    return getattr(importlib.import_module(module), name)


def open_engine(backend: str, model: str, adapters: dict[str, str] | None = None, **options: Any) -> Engine:
    """The ``backend`` engine over ``model`` and its named ``adapters``. ``options``: ``family`` (the checkpoint's
    bound family, when the caller resolved it), ``served_name``, ``batch_size``, ``generation``, and each
    backend's own (``device``, ``encoder_frames``, ``audio_cache`` for transformers; ``vllm_python``,
    ``extra_args`` for vLLM); an option another backend takes is ignored."""
    return engine_class(backend)(model, adapters, **options)
