"""Reinforcement learning and preference optimisation for audio-language models: GRPO with verifiable rewards
(and GSPO, DAPO), and DPO on preference pairs (and KTO, ORPO, SimPO), on the same data, collator, audio cache,
checkpoints and CLI as supervised training. See docs/rl.md."""

from __future__ import annotations

from ..errors import ConfigError


def make_rl_trainer(args, rl, model, processor, family, train_ds, callbacks: list, model_path: str | None = None):
    """The GRPO or DPO trainer for ``rl.method`` (``rl``: ``TrainConfig.rl``), on ``args``, TRL's config for the run
    (``TrainConfig.trainer_arguments``, which builds it from the Trainer fields and ``rl``). ``model_path``: the
    base checkpoint (``--model``), which a vLLM rollout server loads."""
    if rl.method == "grpo":
        from .grpo import GrpoTrainer
        from .rewards import build_rewards

        window = (args.per_device_train_batch_size // args.num_generations * args.gradient_accumulation_steps
                  * args.world_size)
        if hasattr(train_ds, "__len__") and len(train_ds) < window:
            raise ConfigError(f"--method grpo: the train split has {len(train_ds)} rows, fewer than one step's "
                              f"{window} prompts (batch size × accumulation × processes); lower "
                              "--per-device-train-batch-size.")
        rewards = build_rewards(rl.rewards, rl.reward_weights, train_ds.build.task.name)
        rollouts = None
        if rl.rollout_backend == "vllm":
            from .vllm_rollouts import rollouts_for_training

            if model_path is None:
                raise ConfigError("--rollout-backend vllm needs the base checkpoint's path (model_path).")
            rollouts = rollouts_for_training(args, rl, model, processor, family, model_path)
        return GrpoTrainer(model=model, args=args, train_dataset=train_ds, processor=processor, family=family,
                           task=train_ds.build.task.name, rewards=rewards, callbacks=callbacks,
                           dynamic_sampling=rl.dynamic_sampling, max_refill_draws=rl.max_refill_draws,
                           rollouts=rollouts)
    from .dpo import DpoTrainer, PreferenceCollator

    return DpoTrainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=PreferenceCollator(processor, family, kto=rl.dpo_loss_type == "kto"),
                      callbacks=callbacks, simpo_gamma=rl.simpo_gamma)
