"""RL settings → checks and TRL's configs.

The settings live as fields of :class:`~audiotune.train_config.TrainConfig` (one source for each default, every one a CLI
flag); here they are checked, and mapped onto TRL's ``GRPOConfig``/``DPOConfig`` (``TrainingArguments``
subclasses), which the trainers in this package take as their arguments, so TRL's own validation (a group needs
at least two completions, the batch must hold whole groups) applies and its names mean what they mean in TRL.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .losses import DPO_LOSS_TYPES, GRPO_LOSS_TYPES, SCALE_REWARDS

METHODS = ("sft", "grpo", "dpo")


def validate_rl(cfg) -> None:
    """Clear errors for RL settings that cannot work, before any data or model loads."""
    if cfg.method not in METHODS:
        raise ConfigError(f"--method {cfg.method!r}: choose sft, grpo or dpo.")
    if cfg.method == "grpo":
        if cfg.num_generations < 2:
            raise ConfigError(f"--num-generations {cfg.num_generations}: GRPO compares completions within a group, "
                              "so it needs at least 2 per prompt.")
        if cfg.num_iterations < 1 or cfg.max_completion_length < 1:
            raise ConfigError("--num-iterations and --max-completion-length must be at least 1.")
        if not 0 < cfg.epsilon < 1 or (cfg.epsilon_high is not None and cfg.epsilon_high <= 0):
            raise ConfigError(f"--epsilon {cfg.epsilon}: the clip range must lie in (0, 1) (and --epsilon-high > 0).")
        if cfg.temperature <= 0 or not 0 < cfg.top_p <= 1:
            raise ConfigError("--temperature must be > 0 and --top-p in (0, 1].")
        if cfg.beta < 0:
            raise ConfigError(f"--beta {cfg.beta}: the KL weight cannot be negative.")
        if cfg.scale_rewards not in SCALE_REWARDS:
            raise ConfigError(f"--scale-rewards {cfg.scale_rewards!r}: choose {', '.join(SCALE_REWARDS)}.")
        if cfg.grpo_loss_type not in GRPO_LOSS_TYPES:
            raise ConfigError(f"--grpo-loss-type {cfg.grpo_loss_type!r}: choose {', '.join(GRPO_LOSS_TYPES)}.")
        if cfg.streaming:
            raise ConfigError("--method grpo reads a map-style dataset (it replays each batch --num-iterations "
                              "times): drop --streaming, or take a slice with --train-take.")
        if cfg.full and cfg.beta > 0:
            raise ConfigError("--method grpo with --full needs a second copy of the model as the KL reference; "
                              "train LoRA (the reference is then the base with the adapter off) or pass --beta 0.")
        if cfg.task in ("chat", "preference"):
            raise ConfigError(f"--method grpo needs a task with verifiable answers, not {cfg.task}: use classify, qa, "
                              "mcq, asr or caption.")
    if cfg.method == "dpo":
        if cfg.dpo_loss_type not in DPO_LOSS_TYPES:
            raise ConfigError(f"--dpo-loss-type {cfg.dpo_loss_type!r}: choose {', '.join(DPO_LOSS_TYPES)}.")
        if cfg.dpo_beta <= 0:
            raise ConfigError(f"--dpo-beta {cfg.dpo_beta}: must be > 0.")
        if cfg.full:
            raise ConfigError("--method dpo with --full needs a second copy of the model as the reference; train "
                              "LoRA instead (the reference is then the base with the adapter off).")
    if cfg.method != "sft" and cfg.qlora:
        raise ConfigError(f"--method {cfg.method} with --qlora is untested here; train plain LoRA.")


def _common(cfg) -> dict[str, Any]:
    # TRL turns gradient checkpointing on by default; here it stays what --gradient-checkpointing says.
    return {"disable_dropout": True, "activation_checkpointing": cfg.activation_checkpointing}


def grpo_arguments(cfg, base: dict[str, Any]):
    """TRL's ``GRPOConfig`` for this run. ``per_device_train_batch_size`` counts completions, as in TRL:
    ``batch_size`` prompts × ``num_generations``."""
    from trl import GRPOConfig

    base = {**base, "per_device_train_batch_size": cfg.per_device_train_batch_size * cfg.num_generations}
    return GRPOConfig(**{**base, **_common(cfg)}, num_generations=cfg.num_generations,
                      num_iterations=cfg.num_iterations, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                      beta=cfg.beta, temperature=cfg.temperature, top_p=cfg.top_p,
                      max_completion_length=cfg.max_completion_length, reward_weights=cfg.reward_weights,
                      scale_rewards=cfg.scale_rewards, loss_type=cfg.grpo_loss_type, log_completions=False)


def dpo_arguments(cfg, base: dict[str, Any]):
    """TRL's ``DPOConfig`` for this run (``batch_size`` counts preference pairs)."""
    from trl import DPOConfig

    return DPOConfig(**{**base, **_common(cfg)}, beta=cfg.dpo_beta, loss_type=[cfg.dpo_loss_type],
                     precompute_ref_log_probs=False)


def rl_arguments(cfg):
    """The TRL config of ``cfg.method`` built on the run's ``TrainingArguments`` fields (``cfg`` is the run-time
    ``TrainConfig``: no evaluation strategy, since evaluation is generation-based, at the end)."""
    base = cfg.trainer_kwargs()
    return grpo_arguments(cfg, base) if cfg.method == "grpo" else dpo_arguments(cfg, base)
