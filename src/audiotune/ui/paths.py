"""Confine every path the web UI opens to one root folder.

The UI is a web page: whatever a text box holds comes from whoever reaches the port, so a path is
resolved (symlinks included) and refused unless it lies under the root given at launch. Model and
dataset fields may also hold a Hub id (``org/name``), which names no local file.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

from ..errors import PathOutsideRootError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_GLOB = "*?["


class Root:
    """The folder the UI may read and write under; :meth:`confine` is the one gate."""

    def __init__(self, folder: str | Path) -> None:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise PathOutsideRootError(f"--root {folder}: no such folder. Pass an existing folder.")
        self.folder = path.resolve()

    def __str__(self) -> str:
        return str(self.folder)

    def confine(self, value: str | Path, what: str = "path", must_exist: bool = True) -> Path:
        """``value`` (relative to the root, or absolute) as a resolved path under the root; else a clear error."""
        text = str(value).strip()
        if not text:
            raise PathOutsideRootError(f"{what}: empty. Give a path under {self.folder}.")
        path = Path(text).expanduser()
        resolved = (path if path.is_absolute() else self.folder / path).resolve()
        if not resolved.is_relative_to(self.folder):
            raise PathOutsideRootError(
                f"{what} {text!r} is outside the UI's root folder {self.folder}; the UI opens only files under it "
                "(restart with `audiotune ui --root DIR` to serve another folder).")
        if must_exist and not resolved.exists():
            raise PathOutsideRootError(f"{what} {text!r}: no such file or folder under {self.folder}.")
        return resolved

    def local_or_hub(self, value: str, what: str) -> str:
        """A model or dataset field: a confined local path (as a string), a glob of files under the root,
        or a Hub id when nothing of that name exists under the root."""
        text = str(value).strip()
        if any(c in text for c in _GLOB):
            pattern = str(self.confine(Path(text).parent, what))  # the folder part must be inside
            matches = sorted(glob.glob(str(Path(pattern) / Path(text).name)))
            for match in matches:
                self.confine(match, what)
            if not matches:
                raise PathOutsideRootError(f"{what} {text!r}: no file matches under {self.folder}.")
            return str(Path(pattern) / Path(text).name)
        candidate = Path(text).expanduser()
        if not candidate.is_absolute() and _HUB_ID.fullmatch(text) and not (self.folder / candidate).exists() \
                and not text.startswith("."):
            return text  # a Hub id: the loaders fetch it (offline, they say so)
        return str(self.confine(text, what))

    def audio_item(self, item: Any, what: str) -> Any:
        """A dataset's audio cell, with any file path it names confined (embedded bytes pass as they are)."""
        if isinstance(item, (str, Path)):
            return str(self.confine(item, what))
        if isinstance(item, dict) and not item.get("bytes") and item.get("array") is None and item.get("path"):
            return {**item, "path": str(self.confine(item["path"], what))}
        return item

    def relative(self, path: str | Path) -> str:
        """How the UI shows a path: relative to the root when under it."""
        p = Path(path).resolve()
        return str(p.relative_to(self.folder)) if p.is_relative_to(self.folder) else str(p)
