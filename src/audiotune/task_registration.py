"""Register the ``audio-text-to-text`` pipeline task with transformers without importing transformers.

``import audiotune`` must stay light (``audiotune --help`` imports the package), yet
``pipeline("audio-text-to-text", ...)`` must find the task after ``import audiotune``. So the task is registered
when ``transformers.pipelines`` loads: at once if it already has, else by a one-shot import hook that runs
:func:`audiotune.pipeline.register` right after transformers has executed the module. ``audiotune.pipeline``
also registers itself when imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys

logger = logging.getLogger(__name__)

TARGET = "transformers.pipelines"


def _register() -> None:
    module = sys.modules.get("audiotune.pipeline")
    if module is not None and not hasattr(module, "register"):
        return  # audiotune.pipeline is importing transformers.pipelines itself: it registers when it is done
    try:
        importlib.import_module("audiotune.pipeline").register()
    except Exception:  # noqa: BLE001 - never break `import transformers`; pipeline() then says the task is unknown
        logger.warning("could not register the audio-text-to-text pipeline task", exc_info=True)


class _Loader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register()

    def __getattr__(self, name: str):  # get_source, is_package, ... of the real loader
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; the real finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def register_pipeline_task() -> None:
    """Register now if transformers' pipelines are loaded, else when they load."""
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
