"""Trainer callbacks: generation-based metrics at each evaluation, next to the eval loss.

Eval loss says little about caption quality; the field reports CIDEr-D and friends. At each
evaluation this callback generates for a fixed slice of the eval set, scores it with the task's
metrics (METEOR, a Java start-up per call, is left to the final evaluation), and adds the scores as
``eval_gen_<metric>`` to the Trainer's metrics, so ``metric_for_best_model`` can keep the best
checkpoint by them and the report can plot them over steps.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

from .conversation import Example
from .generate import GenerationSettings, generate
from .metrics import GENERATION_PREFIX
from .models.family import Family
from .tasks import score

logger = logging.getLogger(__name__)



class GenerationMetricsCallback(TrainerCallback):
    def __init__(self, examples: Sequence[Example], processor, family: Family, task: str,
                 settings: GenerationSettings, batch_size: int = 16) -> None:
        self.examples = list(examples)
        self.processor = processor
        self.family = family
        self.task = task
        self.settings = settings
        self.batch_size = batch_size
        self.last: dict[str, float] = {}

    def score_now(self, model, with_meteor: bool = False) -> dict[str, float]:
        """Generate for the slice with ``model`` as it is now and return the task's metrics."""
        was_training = model.training
        model.eval()
        try:
            answers = generate(model, self.processor, self.family, self.examples, batch_size=self.batch_size,
                               settings=self.settings)
        finally:
            model.train(was_training)
        metrics, _ = score(self.task, {e.id: a for e, a in zip(self.examples, answers)},
                           {e.id: e.references for e in self.examples}, with_meteor=with_meteor,
                           choices={e.id: e.meta.get("choices") for e in self.examples})
        return {k: float(v) for k, v in metrics.items()}

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if model is None or not self.examples or metrics is None:
            return
        with torch.inference_mode(False):
            self.last = self.score_now(model)
        prefixed = {f"{GENERATION_PREFIX}{k}": v for k, v in self.last.items()}
        metrics.update(prefixed)  # the same dict the Trainer then uses to pick the best checkpoint
        if state.log_history and "eval_loss" in state.log_history[-1]:
            state.log_history[-1].update(prefixed)
        logger.info("step %d generation metrics: %s", state.global_step,
                    ", ".join(f"{k} {v:.4f}" for k, v in self.last.items()))


LIVE_LOG = "trainer_log.json"


class LiveLogCallback(TrainerCallback):
    """Keeps ``OUT/trainer_log.json`` (step, max_steps, log history) current while training runs.

    The Trainer writes its state only into checkpoints; a watcher (``audiotune ui``, ``watch cat``)
    needs the losses and generation metrics as they are logged. Rewritten atomically (temp file +
    rename) so a reader never sees half a file; added after :class:`GenerationMetricsCallback`, so
    an evaluation's line carries its ``eval_gen_*`` scores.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LIVE_LOG
        self.finished = False

    def _write(self, state, finished: bool = False) -> None:
        if not state.is_world_process_zero:
            return
        self.finished = self.finished or finished  # the final evaluation logs after the training loop ends
        temp = self.path.with_suffix(".json.tmp")
        temp.write_text(json.dumps({"global_step": state.global_step, "max_steps": state.max_steps,
                                    "finished": self.finished, "log_history": state.log_history}, default=str))
        os.replace(temp, self.path)

    def on_train_begin(self, args, state, control, **kwargs):
        self._write(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._write(state)  # the step count moves even between logging steps

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._write(state)

    def on_evaluate(self, args, state, control, **kwargs):
        self._write(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state, finished=True)
