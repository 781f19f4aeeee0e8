"""Reinforcement learning and preference optimisation for audio-language models: GRPO with verifiable rewards,
and DPO on preference pairs, on the same data, collator, audio cache, checkpoints and CLI as supervised training.
See docs/rl.md."""

from __future__ import annotations

from ..errors import ConfigError


def make_rl_trainer(cfg, model, processor, family, train_ds, callbacks: list):
    """The GRPO or DPO trainer for ``cfg.method`` (the run-time ``TrainConfig``), with TRL's config built from it."""
    from .config import rl_arguments

    args = rl_arguments(cfg)
    if cfg.method == "grpo":
        from .grpo import GrpoTrainer
        from .rewards import build_rewards

        window = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
        if hasattr(train_ds, "__len__") and len(train_ds) < window:
            raise ConfigError(f"--method grpo: the train split has {len(train_ds)} rows, fewer than one step's "
                              f"{window} prompts (batch size × accumulation); lower --batch-size.")
        rewards = build_rewards(cfg.rewards, cfg.reward_weights, train_ds.build.task.name)
        return GrpoTrainer(model=model, args=args, train_dataset=train_ds, processor=processor, family=family,
                           task=train_ds.build.task.name, rewards=rewards, callbacks=callbacks)
    from .dpo import DpoTrainer, PreferenceCollator

    return DpoTrainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=PreferenceCollator(processor, family), callbacks=callbacks)
