"""What every tab shares: the launch settings, the per-process context and error display."""

from __future__ import annotations

import functools
import html
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AudiotuneError
from .jobs import JobRegistry
from .paths import Root

logger = logging.getLogger(__name__)


@dataclass
class UiSettings:
    root: str = "."
    host: str = "127.0.0.1"
    port: int | None = None  # None: Gradio's default (7860, or the next free one)
    share: bool = False
    model: str | None = None  # preloaded into the playground's local engine
    adapters: list[str] = field(default_factory=list)  # NAME=PATH or PATH
    server_url: str | None = None  # or: the playground talks to this OpenAI-compatible server
    api_key: str | None = None
    runs: str = "runs"  # the Train tab's run list, relative to the root
    device: str | None = None


class Context:
    """State of one UI process: the root, the playground's backend, the training jobs."""

    def __init__(self, settings: UiSettings) -> None:
        self.settings = settings
        self.root = Root(settings.root)
        self.backend = None  # LocalBackend | RemoteBackend, set by the playground
        self.jobs = JobRegistry(self.root.folder)
        self.clip_cache: dict[Path, object] = {}


def shown_errors(fn):
    """Show :class:`AudiotuneError` messages in the page (the CLI's messages, as a Gradio error toast)."""
    import gradio as gr

    def convert(error: AudiotuneError) -> Exception:
        logger.info("shown to the user: %s", error)
        return gr.Error(html.escape(str(error)), duration=None, print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except AudiotuneError as error:
                raise convert(error) from None
        return generator

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AudiotuneError as error:
            raise convert(error) from None
    return plain
