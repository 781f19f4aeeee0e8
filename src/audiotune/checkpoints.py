"""Checkpoints that appear whole or not at all, and a clean stop on SIGINT/SIGTERM.

transformers' Trainer writes ``checkpoint-N`` in place: a kill mid-save leaves a half-written folder,
and its rotation may already have deleted the previous one. Here every checkpoint is written under
``OUT/.staging/`` and renamed into place once every process has finished writing; rotation happens
only after that rename. So at any moment ``OUT`` holds the old checkpoints, or the old ones plus the
new one, never a partial one. The final adapter goes through the same staging, file by file.
"""

from __future__ import annotations

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

logger = logging.getLogger(__name__)

STAGING = ".staging"


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


class AtomicCheckpointMixin:
    """Mixed into the Trainer: stage, barrier, rename, then rotate."""

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
            if final.exists():  # the same step saved again (e.g. a stop signal right after a save)
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(out / STAGING, ignore_errors=True)
            _fsync_dir(out)
            self._rotate(out)
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
            shutil.rmtree(path, ignore_errors=True)


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
