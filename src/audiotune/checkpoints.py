"""Checkpoints that appear whole or not at all, and a clean stop on SIGINT/SIGTERM.

transformers' Trainer writes ``checkpoint-N`` in place: a kill mid-save leaves a half-written folder,
and its rotation may already have deleted the previous one. Here every checkpoint is written under
``OUT/.staging/`` and renamed into place once every process has finished writing; rotation happens
only after that rename, and moves an old folder back into staging before deleting it. So at any moment
``OUT`` holds the old checkpoints, or the old ones plus the new one, never a partial one.
The final adapter goes through the same staging, file by file.

A rename proves only that the folder was *renamed*; the files in it are proven whole by a marker,
``checkpoint_complete.json``, written last (every file fsynced first, just before the rename): it lists
each file's size and, for the small ones, a SHA-256. :func:`checkpoint_problem` checks a folder against
its marker, so a truncated ``optimizer.pt``, a missing file or a checkpoint without a marker (copied in
by hand, or written before audiotune had markers) is never resumed from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .models.loading import save_processor


def processor_folder(model: str | Path, adapter: str | Path | None) -> str:
    """Where a model's processor comes from: the adapter folder when training saved one there (it may carry a
    changed chat template or tokenizer), else the base. The one rule infer, eval and merge follow."""
    if adapter and (Path(adapter) / "processor_config.json").exists():
        return str(adapter)
    return str(model)

logger = logging.getLogger(__name__)

STAGING = ".staging"
MARKER = "checkpoint_complete.json"
CHECKSUM_LIMIT = 1 << 20  # files up to 1 MiB (state, configs, RNG, scheduler) also get a SHA-256
WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
# What --resume needs besides the weights: the step and log, the optimizer's moments, the learning-rate schedule's
# position and the random state of every process (rng_state.pth, or rng_state_<rank>.pth with several).
REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
RNG_STATE = re.compile(r"rng_state(_\d+)?\.pth")
# Test-only: ``AUDIOTUNE_TEST_KILL=<point>@<step>`` SIGKILLs the process at that point of that step's save, so the
# tests can place a kill exactly where a real one would do harm (see :meth:`AtomicCheckpointMixin._save_checkpoint`).
KILL_ENV = "AUDIOTUNE_TEST_KILL"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_steps(out_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in out_dir.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_marker(folder: Path) -> None:
    """The last write into a checkpoint folder: fsync every file, then record names, sizes and small files'
    checksums in :data:`MARKER` (itself written to a temporary name, fsynced and renamed)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(MARKER)):
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
        entry: dict[str, object] = {"size": path.stat().st_size}
        if entry["size"] <= CHECKSUM_LIMIT:
            entry["sha256"] = _sha256(path)
        files[path.relative_to(folder).as_posix()] = entry
    temporary = folder / f"{MARKER}.tmp"
    with temporary.open("w") as handle:
        json.dump({"files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / MARKER)
    _fsync_dir(folder)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or None when it is whole (see :data:`MARKER`)."""
    marker = path / MARKER
    if not marker.is_file():
        return f"it has no {MARKER} (cut off mid-save, or not written by audiotune)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its {MARKER} is unreadable ({error})"
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != entry.get("size"):
            return f"{name} is {size} bytes, {entry.get('size')} were written (truncated or changed)"
        if "sha256" in entry and _sha256(file) != entry["sha256"]:
            return f"{name} does not match the checksum recorded when it was written"
    if not any(name in files for name in WEIGHTS):
        return "it holds no weights"
    missing = [name for name in REQUIRED if name not in files]
    if not any(RNG_STATE.fullmatch(name) for name in files):
        missing.append("rng_state.pth")
    return f"it has no {', '.join(missing)}" if missing else None


def _fault_point(point: str, step: int) -> None:
    """The test-only kill (:data:`KILL_ENV`): nothing unless the variable names this point and step."""
    if os.environ.get(KILL_ENV) == f"{point}@{step}":
        logger.warning("%s: killing this process at %s of checkpoint-%d (a test's fault injection).", KILL_ENV,
                       point, step)
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_is_complete(path: Path) -> bool:
    """A checkpoint is usable when its marker is there and every file it lists is whole."""
    return checkpoint_problem(path) is None


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest *complete* ``checkpoint-N`` under ``out_dir``; each newer one passed over is logged with why."""
    for _, path in reversed(checkpoint_steps(out_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("--resume: skipping %s: %s; an older checkpoint is used.", path, problem)
    return None


class AtomicCheckpointMixin:
    """Mixed into the Trainer: stage, barrier, mark complete, rename, then rotate."""

    _staging_now = False

    def _get_output_dir(self, trial) -> str:
        real = super()._get_output_dir(trial)
        return os.path.join(real, STAGING) if self._staging_now else real

    def _save_checkpoint(self, model, trial) -> None:
        out = Path(super()._get_output_dir(trial))
        self._staging_now = True
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # no rotation inside staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_now = False
            self.args.save_total_limit = limit
        _fault_point("files-written", self.state.global_step)  # every file in staging, no marker yet
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            name = f"checkpoint-{self.state.global_step}"
            staged, final = out / STAGING / name, out / name
            if self.state.best_model_checkpoint and STAGING in self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = str(final)
                state_file = staged / "trainer_state.json"
                state = json.loads(state_file.read_text())
                state["best_model_checkpoint"] = str(final)
                state_file.write_text(json.dumps(state, indent=2))
            write_marker(staged)  # every rank has written its files (barrier above): the marker goes last
            _fault_point("marked", self.state.global_step)  # whole and marked, still in staging
            if final.exists():  # the same step saved again (e.g. a stop signal right after a save)
                os.replace(final, out / STAGING / f"replaced-{name}")
            os.replace(staged, final)
            _fsync_dir(out)
            _fault_point("renamed", self.state.global_step)  # in place, the older ones not rotated out yet
            self._rotate(out)
            shutil.rmtree(out / STAGING, ignore_errors=True)  # what was replaced or rotated out
        self.accelerator.wait_for_everyone()

    def _rotate(self, out: Path) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        keep_best = Path(self.state.best_model_checkpoint).name if self.state.best_model_checkpoint else None
        checkpoints = checkpoint_steps(out)
        removable = [p for _, p in checkpoints[:-1] if p.name != keep_best]
        excess = len(checkpoints) - limit
        for path in removable[:max(excess, 0)]:
            # Renamed out of sight first (one atomic step), deleted with the staging folder: a kill during
            # the deletion leaves no half-deleted checkpoint-N behind.
            os.replace(path, out / STAGING / f"rotated-{path.name}")


def clean_staging(out_dir: Path) -> None:
    """Remove what a killed run left half-written."""
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)


def save_atomically(trainer: Trainer, processor, out_dir: Path) -> None:
    """The final adapter (or model) and processor: written to staging, then each file renamed into ``out_dir``."""
    staging = out_dir / STAGING / "final"
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        save_processor(processor, staging)
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
        shutil.rmtree(out_dir / STAGING, ignore_errors=True)
        _fsync_dir(out_dir)
    trainer.accelerator.wait_for_everyone()


class GracefulStopCallback(TrainerCallback):
    """On SIGINT/SIGTERM: finish the current step, save a checkpoint, stop; ``--resume`` continues.

    With several processes every rank must stop at the same step, so the flag is max-reduced across
    ranks at each step end.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now, the usual way
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("received %s: saving a checkpoint after this step, then stopping "
                       "(resume with --resume; a second signal stops at once).", signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass

    def on_train_end(self, args, state, control, **kwargs):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def on_step_end(self, args, state, control, **kwargs):
        flag = self.requested
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            tensor = torch.tensor([1 if flag else 0])
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            flag = bool(tensor.item())
        if flag:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control
