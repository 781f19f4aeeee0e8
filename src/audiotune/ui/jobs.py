"""Training runs launched from the UI: a ``python -m audiotune train --config`` subprocess per run.

The form's validated config is written to ``OUT/ui_config.yaml`` and the process runs exactly what
the CLI runs with that file; its output goes to ``OUT/ui_train.log``. Stopping sends SIGTERM (the
trainer saves a checkpoint, then exits); resuming relaunches the same config with ``--resume``.
Live curves come from ``trainer_log.json``, which :class:`~audiotune.callbacks.LiveLogCallback`
keeps current, or after the run from ``train_metrics.json`` or a checkpoint's ``trainer_state.json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..callbacks import LIVE_LOG
from ..checkpoints import checkpoint_steps
from ..train_config import TrainConfig
from ..errors import ConfigError

UI_CONFIG = "ui_config.yaml"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # progress bars' cursor moves and colours
UI_LOG = "ui_train.log"
RUN_CONFIG = "run_config.yaml"


@dataclass
class TrainingJob:
    """One launched process; ``returncode`` is None while it runs."""

    out_dir: Path
    process: subprocess.Popen
    resumed: bool = False

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        """SIGTERM: the trainer finishes its step, saves a checkpoint and exits."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)


class JobRegistry:
    """The runs this UI process started, by run folder (one live process per folder)."""

    def __init__(self, cwd: str | Path, python: str = sys.executable) -> None:
        self.cwd = Path(cwd)
        self.python = python
        self.jobs: dict[Path, TrainingJob] = {}
        self._lock = threading.Lock()

    def launch(self, cfg: TrainConfig, resume: bool = False) -> TrainingJob:
        """Start training ``cfg`` (already validated) in a subprocess; refuse a second run in the same folder."""
        out = Path(cfg.output_dir).resolve()
        with self._lock:
            current = self.jobs.get(out)
            if current is not None and current.running:
                raise ConfigError(f"{out} is already training (pid {current.process.pid}); stop it first.")
            out.mkdir(parents=True, exist_ok=True)
            cfg.resume = False  # the flag below says it, so the saved file describes the run itself
            cfg.to_yaml(out / UI_CONFIG)
            command = [self.python, "-m", "audiotune", "train", "--config", str(out / UI_CONFIG)]
            if resume:
                command.append("--resume")
            log = (out / UI_LOG).open("a" if resume else "w")
            log.write(("\n" if resume else "") + "$ " + " ".join(command[1:]) + "\n")
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            # Its own session: a Ctrl-C in the UI's terminal must not also signal the run (the UI sends one
            # SIGTERM on exit; a second signal would make the trainer stop without its checkpoint).
            process = subprocess.Popen(command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            log.close()  # the child holds its own descriptor
            job = TrainingJob(out, process, resumed=resume)
            self.jobs[out] = job
            return job

    def get(self, out_dir: str | Path) -> TrainingJob | None:
        return self.jobs.get(Path(out_dir).resolve())

    def stop_all(self) -> None:
        for job in self.jobs.values():
            job.stop()
        for job in self.jobs.values():
            try:
                job.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.process.kill()


def saved_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was launched with (``ui_config.yaml``, else the trainer's ``run_config.yaml``)."""
    run = Path(run_dir)
    for name in (UI_CONFIG, RUN_CONFIG):
        if (run / name).exists():
            return TrainConfig.from_yaml(run / name)
    raise ConfigError(f"{run}: no {UI_CONFIG} or {RUN_CONFIG}; it is not a training run folder.")


def read_history(run_dir: str | Path) -> dict[str, Any]:
    """``{"global_step", "max_steps", "finished", "log_history"}`` from the freshest file the run has."""
    run = Path(run_dir)
    live = run / LIVE_LOG
    if live.exists():
        try:
            return json.loads(live.read_text())
        except json.JSONDecodeError:  # written atomically, but be lenient with foreign files
            pass
    if (run / "train_metrics.json").exists():
        data = json.loads((run / "train_metrics.json").read_text())
        history = data.get("log_history", [])
        return {"global_step": data.get("steps"), "max_steps": data.get("steps"), "finished": True,
                "log_history": history}
    steps = [s for s in (checkpoint_steps(run) if run.is_dir() else []) if (s[1] / "trainer_state.json").exists()]
    if steps:
        state = json.loads((steps[-1][1] / "trainer_state.json").read_text())
        return {"global_step": state.get("global_step"), "max_steps": state.get("max_steps"), "finished": False,
                "log_history": state.get("log_history", [])}
    return {"global_step": 0, "max_steps": None, "finished": False, "log_history": []}


def curve_points(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long-format points ``{"step", "value", "series"}``: train loss, eval loss, each ``eval_gen_*`` metric."""
    points = []
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key == "loss":
                series = "train loss"
            elif key == "eval_loss":
                series = "eval loss"
            elif key.startswith("eval_gen_") and not key.endswith("vocabulary"):
                series = key.removeprefix("eval_gen_")
            else:
                continue
            points.append({"step": int(step), "value": float(value), "series": series})
    return points


def log_tail(run_dir: str | Path, max_chars: int = 6000) -> str:
    """The end of the run's ``ui_train.log`` (progress bars' carriage returns folded to their last state)."""
    path = Path(run_dir) / UI_LOG
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4 * max_chars))
        text = handle.read().decode("utf-8", "replace")
    text = _ANSI.sub("", text)
    lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines)[-max_chars:]


def log_error(run_dir: str | Path) -> str | None:
    """The CLI's one-line ``error: ...`` message in the run's log, if it printed one."""
    lines = [line for line in log_tail(run_dir, 20000).splitlines() if line.startswith("error:")]
    return lines[-1] if lines else None


def run_status(run_dir: str | Path, job: TrainingJob | None = None) -> str:
    """running / finished / stopped (checkpoint saved) / failed (exit N) / not started."""
    run = Path(run_dir)
    if job is not None and job.running:
        return "running"
    if (run / "train_metrics.json").exists() and (job is None or job.returncode == 0):
        return "finished"
    if job is not None and job.returncode not in (None, 0):
        return f"failed (exit {job.returncode})"
    if checkpoint_steps(run) if run.is_dir() else []:
        return "stopped (checkpoint saved; resume continues)"
    return "not started" if job is None else "stopped"


def list_runs(folder: str | Path, registry: JobRegistry | None = None, depth: int = 2) -> list[dict[str, Any]]:
    """Training runs under ``folder`` (folders with a saved config), newest first, with status and last step."""
    base = Path(folder)
    if not base.is_dir():
        return []
    found: list[Path] = []

    def walk(path: Path, level: int) -> None:
        if (path / UI_CONFIG).exists() or (path / RUN_CONFIG).exists():
            found.append(path)
            return
        if level < depth:
            for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()
                                and not p.name.startswith(".")):  # a link may lead outside the root
                walk(child, level + 1)

    walk(base, 0)
    rows = []
    for run in found:
        history = read_history(run)
        losses = [h["loss"] for h in history.get("log_history", []) if "loss" in h]
        rows.append({"run": run, "status": run_status(run, registry.get(run) if registry else None),
                     "step": history.get("global_step") or 0, "max_steps": history.get("max_steps"),
                     "last_loss": losses[-1] if losses else None, "mtime": run.stat().st_mtime})
    rows.sort(key=lambda r: -r["mtime"])
    return rows
