"""``audiotune ui``: a Gradio web UI — playground, evaluation explorer, training, data check.

Kept out of ``import audiotune`` (and Gradio is imported only when the page is built), so the CLI
stays fast. The logic lives in small Gradio-free modules (``paths``, ``playground``, ``runs``,
``trainform``, ``jobs``, ``datacheck``, ``render``); the ``tab_*`` modules and ``app`` are the thin
Gradio layer.
"""

from __future__ import annotations

from .common import UiSettings

__all__ = ["UiSettings", "launch"]


def launch(settings: UiSettings, block: bool = True):
    from .app import launch as _launch

    return _launch(settings, block=block)
