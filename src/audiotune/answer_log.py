"""The answers of an evaluation as they are made, so that an interrupted one continues where it stopped.

Why: a full MMAU or LibriSpeech run takes hours on a large model, and answers kept in memory until the end are lost
to a crash, a pre-empted GPU or a killed job. Each batch's answers are appended to ``answers.partial.jsonl`` in the
output folder and flushed to disk before the next batch starts; ``eval --resume`` reads them back and generates
only the rest. The file's first line records what the answers depend on (the models, the rows, the generation
settings); each answer line records its prompt. A resumed run that differs in any of them is refused, since
mixing answers of two configurations would score neither. The file is removed once ``predictions.jsonl`` holds
every answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

PARTIAL = "answers.partial.jsonl"


class AnswerLog:
    """``answers.partial.jsonl``: a header line (``{"run": key}``), then ``{"model", "id", "prompt", "answer"}``."""

    def __init__(self, out: str | Path, key: dict[str, Any], resume: bool) -> None:
        self.path = Path(out) / PARTIAL
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}
        if self.path.exists():
            if not resume:
                raise ConfigError(f"{self.path} holds the answers of an interrupted evaluation: pass --resume to "
                                  "continue it, or delete the file (or choose another --out) to start again.")
            self._read(key)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write([{"run": key}])

    def _read(self, key: dict[str, Any]) -> None:
        lines = self.path.read_text().splitlines()
        try:
            saved = json.loads(lines[0])["run"] if lines else None
        except (ValueError, KeyError, TypeError):
            saved = None
        if saved is None:
            raise ConfigError(f"{self.path}: no run header on its first line; delete it to start again.")
        different = sorted(name for name in {*saved, *key} if saved.get(name) != key.get(name))
        if different:
            raise ConfigError(f"--resume: {self.path} was written with other {', '.join(different)} (saved: "
                              f"{', '.join(f'{n}={saved.get(n)!r}' for n in different)}). Rerun with the same "
                              "options, or delete the file to start again.")
        kept = 1
        for number, line in enumerate(lines[1:], start=2):
            try:
                row = json.loads(line)
            except ValueError:
                if number == len(lines):  # the line being written when the process died: generated again
                    break
                raise ConfigError(f"{self.path}:{number}: not a JSON line; delete the file to start again.") from None
            self.answers[(row["model"], row["id"])] = row
            kept += 1
        if kept < len(lines):  # drop the torn line, so that appends start on a line of their own
            self.path.write_text("".join(line + "\n" for line in lines[:kept]))

    def answer(self, model: str, example_id: str, prompt: str) -> str | None:
        """The saved answer of ``model`` for this row, or None; a row saved with another prompt is refused."""
        row = self.answers.get((model, example_id))
        if row is None:
            return None
        if row["prompt"] != prompt:
            raise ConfigError(f"--resume: row {example_id!r} was answered for the prompt {row['prompt']!r}, not "
                              f"{prompt!r}. Rerun with the same prompt, or delete {self.path} to start again.")
        return row["answer"]

    def append(self, model: str, rows: list[tuple[str, str, str]]) -> None:
        """Save ``(id, prompt, answer)`` rows of ``model``: on disk before this returns."""
        records = [{"model": model, "id": i, "prompt": p, "answer": a} for i, p, a in rows]
        for record in records:
            self.answers[(model, record["id"])] = record
        self._write(records)

    def _write(self, records: list[dict[str, Any]]) -> None:
        with self.path.open("a") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self) -> None:
        """Every answer is in ``predictions.jsonl``: the partial file has served."""
        self.path.unlink(missing_ok=True)
