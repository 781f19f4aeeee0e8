"""What the GRPO and DPO trainers share: the reference model, per-token log-probabilities, metric logging."""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch


def reference_context(model: torch.nn.Module):
    """The reference policy: the same model with its LoRA adapter disabled (TRL's ``use_adapter(model, None)``), so
    no second copy of the weights is ever made; or, when training started from an adapter (``--init-adapter``),
    that adapter's frozen copy named ``ref`` (TRL's convention for re-training an adapter)."""
    from peft import PeftModel
    from trl.trainer.utils import use_adapter

    if not isinstance(model, PeftModel):
        raise TypeError("the reference is the base with the adapter disabled: train LoRA (not --full)")
    return use_adapter(model, "ref" if "ref" in model.peft_config else None)


def token_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) per position, with TRL's memory-light ``selective_log_softmax`` (logits over ``temperature``)."""
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax(logits.float(), targets, temperature=temperature)


class MetricsLogMixin:
    """Collects per-step values (``self.record(name, value)``) and adds their means to each training log."""

    def record(self, name: str, value: float) -> None:
        if not hasattr(self, "_rl_metrics"):
            self._rl_metrics = defaultdict(list)
        self._rl_metrics[name].append(float(value))

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save the trained adapter only: the frozen ``ref`` copy is ``--init-adapter`` itself, reloaded from there
        (run_config.yaml names it) on ``--resume``."""
        import shutil
        from pathlib import Path

        super()._save(output_dir, state_dict)
        reference = Path(output_dir or self.args.output_dir) / "ref"
        if "ref" in getattr(self.accelerator.unwrap_model(self.model), "peft_config", {}) and reference.is_dir():
            shutil.rmtree(reference)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """With several processes, each value is the mean over all of them (the Trainer logs on every process at
        the same step, and every process records the same names), so rank 0's log describes the global batch."""
        metrics = getattr(self, "_rl_metrics", None)
        if metrics and "loss" in logs:
            names = sorted(name for name, values in metrics.items() if values)
            means = torch.tensor([sum(metrics[name]) / len(metrics[name]) for name in names], dtype=torch.float64)
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means.to(self.accelerator.device), reduction="mean").cpu()
            logs.update(zip(names, means.tolist()))
            metrics.clear()
        super().log(logs, *args, **kwargs)


def no_grad_eval(model: torch.nn.Module):
    """No gradients, and eval mode for the duration (generation and the old/reference log-probs)."""
    @contextlib.contextmanager
    def manager():
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            model.train(was_training)

    return manager()
