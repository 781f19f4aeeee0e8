"""RL settings → checks and TRL's configs.

:class:`RLConfig` is ``TrainConfig.rl`` (one source for each default, every one a CLI flag); here its settings are
checked, and mapped onto TRL's ``GRPOConfig``/``DPOConfig`` (``TrainingArguments`` subclasses), which the trainers
in this package take as their arguments, so TRL's own validation (a group needs at least two completions, the batch
must hold whole groups) applies and its names mean what they mean in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..config import VLLM_PYTHON_HELP, GenerationSettings, check_choices, option, split_commas
from ..errors import ConfigError
from .losses import (REFERENCE_FREE, DpoLossType, GrpoLossType, ImportanceSamplingLevel, SamplerCorrectionMode,
                     ScaleRewards)

Method = Literal["sft", "grpo", "dpo"]
METHODS = get_args(Method)
RolloutBackend = Literal["native", "vllm"]


@dataclass
class RLConfig:
    """Reinforcement learning and preferences (``TrainConfig.rl``; docs/rl.md explains each setting). GRPO samples
    with the generation settings' --temperature and --top-p."""

    method: Method = option("sft", "sft: supervised; grpo: sampled groups, verifiable rewards; dpo: chosen/rejected "
                                   "pairs.")
    init_adapter: str | None = option(None, "Start from this LoRA adapter (e.g. a short SFT run) instead of a fresh "
                                            "one.")
    num_generations: int = option(4, "grpo: completions sampled per prompt (the group); batch size counts prompts.")
    num_iterations: int = option(1, "grpo: optimizer steps on each generated batch (mu); >1 makes the ratio clip "
                                    "bite.")
    epsilon: float = option(0.2, "grpo: clip range of the probability ratio, 1-epsilon … 1+epsilon_high.")
    epsilon_high: float | None = option(None, "grpo: upper clip (empty: epsilon; DAPO uses 0.28).")
    beta: float = option(0.04, "grpo: weight of the KL penalty to the reference (the base, adapter disabled); 0: "
                               "none.")
    max_completion_length: int = option(32, "grpo: most new tokens per completion.")
    rewards: list[str] | None = option(None, "grpo: comma-separated rewards: accuracy, format, wer, cider, meteor or "
                                             "module:function (empty: the task's).")
    reward_weights: list[float] | None = option(None, "grpo: comma-separated weights, one per reward (empty: all 1).")
    scale_rewards: ScaleRewards = option("group", "grpo: divide advantages by the group's or the batch's std, or "
                                                  "not.")
    grpo_loss_type: GrpoLossType = option("grpo", "grpo: loss normalisation: per sequence (grpo), per token (bnpo), "
                                                  "dr_grpo, or over the batch's tokens (dapo).")
    importance_sampling_level: ImportanceSamplingLevel = option(
        "token", "grpo: probability ratio per token, or per completion (sequence: GSPO).")
    mask_truncated_completions: bool = option(False, "grpo: completions cut at --max-completion-length get no loss "
                                                     "(DAPO's overlong filtering).")
    dynamic_sampling: bool = option(False, "grpo: drop groups whose rewards are all equal and sample more prompts "
                                           "to refill the batch (DAPO).")
    max_refill_draws: int = option(3, "grpo --dynamic-sampling: most extra batches of prompts drawn per batch.")
    rollout_backend: RolloutBackend = option("native", "grpo: who samples the completions: native (the policy, HF "
                                                       "generate) or vllm (a vLLM server given the policy's LoRA "
                                                       "after every step; docs/rl.md).")
    vllm_url: str | None = option(None, "grpo --rollout-backend vllm: an existing vLLM server (started with runtime "
                                        "LoRA loading, docs/rl.md) instead of one the trainer starts.")
    vllm_python: str | None = option(None, VLLM_PYTHON_HELP)
    vllm_gpu_memory_utilization: float = option(0.3, "grpo --rollout-backend vllm, on a GPU: the share of its memory "
                                                     "the server may take (the trainer needs the rest; TRL's "
                                                     "default).")
    vllm_importance_sampling_correction: bool = option(
        True, "grpo --rollout-backend vllm: weight each token's loss by the learner/sampler probability ratio, "
              "truncated (TRL's correction of vLLM's numerical mismatch).")
    vllm_importance_sampling_mode: SamplerCorrectionMode = option(
        "token_truncate", "grpo --rollout-backend vllm: the ratio per token or per completion, clipped at the cap "
                          "(truncate) or zeroed above it (mask); TRL's modes.")
    vllm_importance_sampling_clip_max: float = option(3.0, "grpo --rollout-backend vllm: the cap C of the sampler "
                                                           "correction's ratio (TRL's default).")
    dpo_beta: float = option(0.1, "dpo: β of the preference loss (DPO, KTO, SimPO temperature; ORPO's λ), TRL's "
                                  "beta.")
    dpo_loss_type: DpoLossType = option("sigmoid", "dpo: sigmoid (DPO), hinge (SLiC), ipo, kto (unpaired), orpo or "
                                                   "simpo (both reference-free).")
    simpo_gamma: float = option(0.5, "dpo --dpo-loss-type simpo: the target reward margin γ.")

    def __post_init__(self) -> None:
        self.rewards = split_commas(self.rewards)
        if self.reward_weights is not None:
            try:
                self.reward_weights = [float(w) for w in split_commas(self.reward_weights) or []] or None
            except ValueError:
                raise ConfigError(f"--reward-weights {self.reward_weights}: numbers, comma-separated.") from None
        check_choices(self)


def validate_rl(cfg) -> None:
    """Clear errors for RL settings that cannot work, before any data or model loads. ``cfg`` is the whole
    ``TrainConfig``: some limits cross parts (GRPO samples with the generation settings, reads map-style data)."""
    rl, data, adapter, generation = cfg.rl, cfg.data, cfg.adapter, cfg.generation
    if rl.method == "grpo":
        if rl.num_generations < 2:
            raise ConfigError(f"--num-generations {rl.num_generations}: GRPO compares completions within a group, "
                              "so it needs at least 2 per prompt.")
        if rl.num_iterations < 1 or rl.max_completion_length < 1:
            raise ConfigError("--num-iterations and --max-completion-length must be at least 1.")
        if not 0 < rl.epsilon < 1 or (rl.epsilon_high is not None and rl.epsilon_high <= 0):
            raise ConfigError(f"--epsilon {rl.epsilon}: the clip range must lie in (0, 1) (and --epsilon-high > 0).")
        if generation.temperature <= 0 or not 0 < generation.top_p <= 1:
            raise ConfigError("--temperature must be > 0 and --top-p in (0, 1].")
        if rl.beta < 0:
            raise ConfigError(f"--beta {rl.beta}: the KL weight cannot be negative.")
        if rl.grpo_loss_type == "dapo" and cfg.gradient_accumulation_steps > 1:
            raise ConfigError("--grpo-loss-type dapo divides by the completion tokens of the whole generation batch, "
                              "and audiotune generates one micro-batch at a time: use --gradient-accumulation-steps "
                              "1 (raise --per-device-train-batch-size instead), or --grpo-loss-type bnpo.")
        if rl.max_refill_draws < 0:
            raise ConfigError(f"--max-refill-draws {rl.max_refill_draws}: must be 0 or more.")
        if rl.rollout_backend == "vllm":
            from .vllm_rollouts import check_vllm_rollouts

            check_vllm_rollouts(cfg)
        elif rl.vllm_url:
            raise ConfigError("--vllm-url is the server of --rollout-backend vllm; add that flag, or drop --vllm-url.")
        if data.streaming:
            raise ConfigError("--method grpo reads a map-style dataset (it replays each batch --num-iterations "
                              "times): drop --streaming, or take a slice with --train-take.")
        if adapter.full and rl.beta > 0:
            raise ConfigError("--method grpo with --full needs a second copy of the model as the KL reference; "
                              "train LoRA (the reference is then the base with the adapter off) or pass --beta 0.")
        from ..tasks import TASKS, task_class  # here: the CLI reads this module, and stays free of numpy

        if not task_class(data.task).verifiable:
            raise ConfigError(f"--method grpo needs a task with verifiable answers, not {data.task}: use "
                              f"{', '.join(name for name, task in TASKS.items() if task.verifiable)}.")
    if rl.method == "dpo":
        if rl.dpo_beta <= 0:
            raise ConfigError(f"--dpo-beta {rl.dpo_beta}: must be > 0.")
        if adapter.full and rl.dpo_loss_type not in REFERENCE_FREE:
            raise ConfigError(f"--method dpo --dpo-loss-type {rl.dpo_loss_type} with --full needs a second copy of the "
                              "model as the reference; train LoRA instead (the reference is then the base with the "
                              f"adapter off), or use a reference-free loss ({', '.join(REFERENCE_FREE)}).")
    if rl.method != "sft" and adapter.qlora:
        raise ConfigError(f"--method {rl.method} with --qlora is untested here; train plain LoRA.")


def rl_arguments(rl: RLConfig, generation: GenerationSettings, trainer: dict[str, Any]):
    """TRL's ``GRPOConfig`` or ``DPOConfig`` for ``rl.method``, built once from the run's Trainer keywords
    (``TrainConfig.trainer_values``: every ``TrainingArguments`` field, the derived ones set) and ``rl``. Every
    Trainer field is passed, so TRL's own defaults (gradient checkpointing on, its learning rate) never apply;
    dropout is off, so sampled and trained log-probabilities come from the same function."""
    common = {**trainer, "disable_dropout": True}
    if rl.method == "grpo":
        from trl import GRPOConfig

        # per_device_train_batch_size counts completions in TRL: prompts × num_generations.
        common["per_device_train_batch_size"] = trainer["per_device_train_batch_size"] * rl.num_generations
        return GRPOConfig(**common, num_generations=rl.num_generations, num_iterations=rl.num_iterations,
                          epsilon=rl.epsilon, epsilon_high=rl.epsilon_high, beta=rl.beta,
                          temperature=generation.temperature, top_p=generation.top_p,
                          max_completion_length=rl.max_completion_length, reward_weights=rl.reward_weights,
                          scale_rewards=rl.scale_rewards, loss_type=rl.grpo_loss_type, log_completions=False,
                          importance_sampling_level=rl.importance_sampling_level,
                          mask_truncated_completions=rl.mask_truncated_completions,
                          vllm_importance_sampling_correction=rl.vllm_importance_sampling_correction,
                          vllm_importance_sampling_mode=rl.vllm_importance_sampling_mode,
                          vllm_importance_sampling_clip_max=rl.vllm_importance_sampling_clip_max,
                          vllm_gpu_memory_utilization=rl.vllm_gpu_memory_utilization)
    from trl import DPOConfig

    # per_device_train_batch_size counts preference pairs. DPOConfig carries every preference loss's settings here
    # (TRL has separate KTO/ORPO/CPO configs, whose beta means the same); simpo_gamma reaches the trainer from rl.
    return DPOConfig(**common, beta=rl.dpo_beta, loss_type=[rl.dpo_loss_type], precompute_ref_log_probs=False)
