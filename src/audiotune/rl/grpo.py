"""GRPO for audio-language models: sample a group per prompt, score it, push the policy towards the better ones.

TRL's ``GRPOTrainer`` tokenises text (or image) prompts itself and cannot take an audio collator's batch, so this
trainer is the audiotune ``Trainer`` (atomic checkpoints, ``--resume``) with TRL's structure around our collator:
``_prepare_inputs`` turns a batch of prompts into a rollout (generation with the policy, rewards, group-relative
advantages, the old and reference log-probs) and ``compute_loss`` evaluates TRL's clipped objective on it
(:mod:`audiotune.rl.losses`, checked against TRL's own code in the tests). Its arguments are TRL's
``GRPOConfig``.

Batches: the loader yields ``batch_size`` prompts (Examples); each becomes ``num_generations`` completions. A
window of ``batch_size × gradient_accumulation_steps × processes`` prompts is replayed ``num_iterations`` times
(TRL's μ): the first pass generates and remembers the rollout, the later passes reuse it, so the ratio to the old
policy moves and the clip matters. The audio encoder is frozen and its embeddings are cached per clip
(:mod:`audiotune.audio_cache`), so the group's completions, the reference pass and the replayed iterations all
reuse one encoder pass per clip.

Several processes (``--nproc``): each process takes its own prompts of every micro-batch and samples their groups
itself (a group never spans processes); the rewards are gathered so the advantages see the whole batch, as TRL's
``GRPOTrainer`` does, and each process keeps its own part. Every completion draws from its own generator, seeded
by the run's seed, the window and the prompt's position in the global batch (:func:`completion_seed`), so the same
global batch samples the same completions whichever process a prompt lands on, and a resumed run samples what the
uninterrupted run did. A checkpoint taken inside a replay window carries that window's rollouts
(``grpo_rollouts_<rank>.pt``), so ``--resume`` replays exactly what the uninterrupted run replayed.

Rollouts come from the policy itself (``--rollout-backend native``, HF ``generate``) or from a vLLM server given
the policy's adapter before each step's sampling (``vllm``, :mod:`audiotune.rl.vllm_rollouts`); with vLLM the old
log-probs are still the policy's own and the sampler's serve only TRL's truncated importance sampling correction
(:func:`audiotune.rl.losses.sampler_correction`), applied in :meth:`GrpoTrainer.compute_loss`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..engines.native import NativeEngine
from ..generate import prompt_batch
from ..conversation import Example
from ..models.family import Family
from ..errors import RolloutServerError
from ..trainer import AudiotuneTrainer
from .common import MetricsLogMixin, no_grad_eval, reference_context, token_logps
from .losses import group_advantages, grpo_loss, sampler_correction
from .rewards import Reward

logger = logging.getLogger(__name__)


ROLLOUTS = "grpo_rollouts_{rank}.pt"  # a checkpoint inside a replay window: that window's rollouts, per process


class WindowRepeatSampler(torch.utils.data.Sampler):
    """Shuffled indices in windows of one optimizer step's prompts over all processes (``batch × accumulation ×
    world_size``), each window yielded ``repeats`` times in a row (TRL's ``RepeatSampler`` idea), of which this
    process (``rank``) takes its own: micro-batch ``m`` of a window is the window's prompts ``m·batch·world_size``
    onwards, and rank ``r`` takes the ``r``-th ``batch`` of them. Every process draws the same permutation, so the
    global batch is the one a single process with ``batch × world_size`` prompts gets. An incomplete last window is
    dropped. ``set_epoch`` reshuffles reproducibly."""

    def __init__(self, size: int, batch: int, accumulation: int, repeats: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.size, self.batch, self.accumulation, self.repeats = size, batch, accumulation, repeats
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.window = batch * accumulation * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        for start in range(0, self.size - self.window + 1, self.window):
            chunk = order[start : start + self.window]
            for _ in range(self.repeats):
                for micro in range(self.accumulation):
                    first = (micro * self.world_size + self.rank) * self.batch
                    yield from chunk[first : first + self.batch]

    def __len__(self) -> int:
        return (self.size // self.window) * self.batch * self.accumulation * self.repeats


def completion_seed(*key: int) -> int:
    """One completion's sampling seed from non-negative integers (the run's seed, the window, the prompt's position
    in the global batch, the completion's place in its group, the refill draw): numpy's ``SeedSequence`` mixes
    them, so neighbouring keys give unrelated streams. It depends on no process or batch layout."""
    import numpy as np

    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0]) >> 1


class _EpochLoader(torch.utils.data.DataLoader):
    """The Trainer calls ``set_epoch`` on the loader; pass it to the sampler so each epoch reshuffles."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def _as_list(examples: list[Example]) -> list[Example]:
    return examples


def prompt_text(example: Example) -> str:
    user = [m for m in example.messages if m["role"] == "user"][-1]
    return " ".join(p["text"] for p in user["content"] if p.get("type") == "text")


class GrpoTrainer(MetricsLogMixin, AudiotuneTrainer):
    """``args`` is a TRL ``GRPOConfig``; ``per_device_train_batch_size`` counts completions (prompts × group)."""

    def __init__(self, *, model, args, train_dataset, processor, family: Family, task: str,
                 rewards: Sequence[Reward], dynamic_sampling: bool = False, max_refill_draws: int = 3,
                 rollouts=None, **kwargs: Any) -> None:
        """``rollouts``: a :class:`~audiotune.rl.vllm_rollouts.VllmRollouts` to sample with (else the policy's
        own ``generate``); the trainer stops its server when training ends."""
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=_as_list, **kwargs)
        if args.disable_dropout:  # sampled and trained log-probs must come from the same function
            from trl.trainer.utils import disable_dropout_in_model

            disable_dropout_in_model(model)
        self.processor, self.family, self.task, self.rewards = processor, family, task, list(rewards)
        # Rollouts are sampled through an engine over the current policy (its weights change every step).
        self.rollout_engine = lambda policy: NativeEngine.wrap(policy, processor, family)
        self.vllm = rollouts
        if rollouts is not None:  # synced with the policy's weights of this step, seeded per call
            self.rollout_engine = lambda policy: rollouts.for_policy(policy, self.state.global_step,
                                                                    self._rollout_seed())
        self.sampled_from: list[tuple[int, list[str]]] = []  # (step, the adapters vLLM answered with) per rollout
        self._draw = 0
        # A sampled audio placeholder would ask the model for audio features it was never given.
        audio_id = processor.tokenizer.convert_tokens_to_ids(family.audio_token)
        self.suppress_ids = [audio_id] if isinstance(audio_id, int) and audio_id >= 0 else None
        self.prompts_per_step = args.per_device_train_batch_size // args.num_generations
        self.model_accepts_loss_kwargs = False  # the loss is ours; the Trainer scales it for accumulation
        self.dynamic_sampling, self.max_refill_draws = dynamic_sampling, max_refill_draws
        self.mask_truncated = args.mask_truncated_completions
        self._rollouts: dict[int, dict[str, Any]] = {}
        self._window_step, self._micro = -1, 0

    # --- data ---------------------------------------------------------------------------------------------------
    def get_train_dataloader(self):
        args = self.args
        sampler = WindowRepeatSampler(len(self.train_dataset), self.prompts_per_step, args.gradient_accumulation_steps,
                                      args.num_iterations, args.seed, args.process_index, args.world_size)
        return _EpochLoader(self.train_dataset, batch_size=self.prompts_per_step, sampler=sampler,
                            collate_fn=_as_list, num_workers=self.args.dataloader_num_workers)

    def _prepare_inputs(self, inputs):
        if not isinstance(inputs, list):  # already a rollout
            return inputs
        if self.state.global_step != self._window_step:
            self._window_step, self._micro = self.state.global_step, 0
        slot = self._micro
        self._micro += 1
        first_pass = self.state.global_step % self.args.num_iterations == 0
        if first_pass or slot not in self._rollouts:  # (a resumed mid-window checkpoint restored its rollouts)
            try:
                self._rollouts[slot] = self.rollout(inputs, slot)
            except RolloutServerError as error:
                raise self._stopped_by(error) from None
        for name, value in self._rollouts[slot]["stats"].items():  # logged at every step, replays included
            self.record(name, value)
        return self._rollouts[slot]

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.vllm is not None:
                self.vllm.close()

    def _stopped_by(self, error: RolloutServerError) -> RolloutServerError:
        """The rollout server is gone for good: save what the optimizer steps so far trained (a whole checkpoint,
        so ``--resume`` continues from it), and say so."""
        step = self.state.global_step
        if step == 0:
            return RolloutServerError(f"{error} No step had been trained yet.")
        self._save_checkpoint(self.model, trial=None)
        return RolloutServerError(f"{error} Training stopped before step {step + 1}; checkpoint-{step} in "
                                  f"{self.args.output_dir} holds the {step} steps trained: rerun with --resume.")

    # --- rollout ------------------------------------------------------------------------------------------------
    def _rollout_seed(self) -> int:
        """A seed for each sampling call (vLLM's requests add their prompt's index to it): from the run's seed, the
        step, the micro-batch and the draw (DAPO's refills draw again), so a rerun asks for the same ones."""
        self._draw += 1
        call = self.args.seed * 1_000_003 + self.state.global_step * 1_009 + self._micro * 31 + self._draw
        return (call % 2**31) * 4_096

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def rollout(self, examples: list[Example], slot: int = 0) -> dict[str, Any]:
        """Generate a group per prompt, score it (with ``dynamic_sampling``: keep only groups whose rewards differ,
        refilling from the data), and compute advantages (over the global batch) and the old/reference log-probs.
        ``slot``: the micro-batch's place in the accumulation window (its prompts' positions, hence their seeds)."""
        args = self.args
        group = args.num_generations
        model = self._unwrapped()
        self._draw = 0
        first = (slot * args.world_size + args.process_index) * len(examples)  # in the window's global batch
        drawn = self.generate_and_score(model, examples, seeds=self.completion_seeds(first, len(examples)))
        refill: dict[str, float] = {}
        if self.dynamic_sampling:
            drawn, refill = self.refill(model, drawn, len(examples), first)
        repeated, batch, samples, rewards_per_func = drawn
        if batch is None:  # groups kept from several draws: collate their prompts together
            batch = prompt_batch(model, self.processor, self.family, repeated)
        prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
        features = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        pad_id = self.processor.tokenizer.pad_token_id
        keep = max(max(len(s.tokens) for s in samples), 1)  # the end-of-turn token is learned too
        completion_ids = torch.tensor([s.tokens + [pad_id] * (keep - len(s.tokens)) for s in samples],
                                      device=prompt_ids.device)
        # --mask-truncated-completions (DAPO's overlong filtering, TRL's ``mask_truncated_completions`` in
        # ``GRPOTrainer._generate_and_score_completions``): a completion that never stopped gets an all-zero mask,
        # so it is neither attended to nor trained on; it still counted towards its group's mean and std.
        completion_mask = torch.tensor([[int(s.stopped or not self.mask_truncated)] * len(s.tokens)
                                        + [0] * (keep - len(s.tokens)) for s in samples], device=prompt_ids.device)

        rollout = {"input_ids": torch.cat([prompt_ids, completion_ids], 1),
                   "attention_mask": torch.cat([prompt_mask, completion_mask], 1),
                   "features": features, "completion_ids": completion_ids, "completion_mask": completion_mask}
        # A sampler in another process (vLLM) says what each token's log-probability was there: the loss corrects
        # the gap to the policy's (compute_loss). TRL recomputes the old log-probs for it in an extra pass; with one
        # iteration they are the loss pass's own (detached: the weights have not moved since sampling), so the
        # loss pass serves, one forward fewer per step, with the same values.
        rollout["sampler_logps"] = None
        if args.vllm_importance_sampling_correction and samples and all(s.logprobs is not None for s in samples):
            rollout["sampler_logps"] = torch.tensor([s.logprobs + [0.0] * (keep - len(s.logprobs)) for s in samples],
                                                    device=prompt_ids.device)
        with no_grad_eval(model):
            rollout["old_logps"] = self.per_token_logps(model, rollout) if args.num_iterations > 1 else None
            if args.beta != 0.0:
                with reference_context(model):
                    rollout["ref_logps"] = self.per_token_logps(model, rollout)
            else:
                rollout["ref_logps"] = None

        rewards_per_func = rewards_per_func.to(completion_ids.device)
        rewards = self.weighted(rewards_per_func)
        # The whole batch's rewards, every process's in rank order (TRL's GRPOTrainer gathers them in
        # _calculate_rewards and keeps its process_slice of the advantages): a group's advantages need only its own
        # process, --scale-rewards batch needs them all.
        everyone = self.accelerator.gather(rewards)
        mine = slice(args.process_index * len(rewards), (args.process_index + 1) * len(rewards))
        advantages, std = (part[mine] for part in group_advantages(everyone, group, args.scale_rewards))
        rollout["advantages"] = advantages
        stats = {"reward": rewards.mean().item(), "reward_std": std.view(-1, group)[:, 0].mean().item(),
                 "frac_reward_zero_std": torch.isclose(std, torch.zeros_like(std)).float().mean().item(),
                 "completion_length": torch.tensor([len(s.tokens) for s in samples]).float().mean().item(),
                 "completions_clipped": sum(not s.stopped for s in samples) / len(samples), **refill}
        if self.vllm is not None:
            self._check_fresh(samples, stats)
        for i, reward in enumerate(self.rewards):
            stats[f"rewards/{reward.name}"] = rewards_per_func[:, i].mean().item()
        rollout["stats"] = stats
        return rollout

    def _check_fresh(self, samples: list, stats: dict[str, float]) -> None:
        """Record which adapter each completion came from (vLLM's word); ``sampling/stale_completions`` is the share
        not sampled from this step's weights (0 unless the sync is broken)."""
        step, expected = self.state.global_step, self.vllm.name_for(self.state.global_step)
        used = sorted({s.model for s in samples})
        self.sampled_from.append((step, used))
        stats["sampling/stale_completions"] = sum(s.model != expected for s in samples) / len(samples)
        if used != [expected]:
            logger.warning("step %d: completions sampled from %s, not %s", step, ", ".join(used), expected)

    def weighted(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        weights = torch.tensor([r.weight for r in self.rewards], device=rewards_per_func.device)
        return (rewards_per_func * weights).sum(1)

    def completion_seeds(self, first: int, prompts: int, draw: int = 0) -> list[int]:
        """The sampling seed of each completion of ``prompts`` prompts from global position ``first`` of this
        window's batch (``draw``: dynamic sampling's extra draws), group by group, as the rows are repeated."""
        window = self.state.global_step // self.args.num_iterations
        return [completion_seed(self.args.seed, window, position, j, draw)
                for position in range(first, first + prompts) for j in range(self.args.num_generations)]

    def generate_and_score(self, model, examples: list[Example], seeds: list[int] | None = None
                           ) -> tuple[list[Example], dict | None, list, Any]:
        """A group of completions per prompt: (the repeated prompts, their collated batch, the samples, the
        completions × rewards matrix). ``seeds``: one per completion (:meth:`completion_seeds`)."""
        args = self.args
        repeated = [e for e in examples for _ in range(args.num_generations)]
        batch = prompt_batch(model, self.processor, self.family, repeated)  # sampled from; the log-probs' prompts
        samples = self.rollout_engine(model).sample(repeated, max_tokens=args.max_completion_length,
                                                    temperature=args.temperature, top_p=args.top_p,
                                                    suppress_tokens=self.suppress_ids, inputs=batch, seeds=seeds)
        return repeated, batch, samples, self.score(repeated, [s.text for s in samples])

    def refill(self, model, drawn, prompts: int, first: int = 0) -> tuple[tuple, dict[str, float]]:
        """DAPO's dynamic sampling (arXiv:2503.14476, §3.2): a group whose rewards are all equal has zero advantages
        and teaches nothing, so it is dropped, and further batches of ``prompts`` prompts — drawn at random from the
        train split, seeded by the run's seed, the step, the micro-batch and the process — are sampled and scored
        until ``prompts`` informative groups are found or ``max_refill_draws`` extra batches have been drawn. If the
        data cannot refill the batch, the shortfall is made up with the first draw's all-equal groups (they add only
        the KL term), a warning is logged, and ``dynamic_sampling/unfilled`` counts them."""
        group = self.args.num_generations
        informative, spare, dropped, draws = [], [], 0, 0
        while True:
            repeated, _, samples, rewards_per_func = drawn
            grouped = self.weighted(rewards_per_func).view(-1, group)
            for g, flat in enumerate((grouped == grouped[:, :1]).all(1).tolist()):
                span = slice(g * group, (g + 1) * group)
                part = (repeated[span], samples[span], rewards_per_func[span])
                if flat:
                    dropped += 1
                    if draws == 0:
                        spare.append(part)
                else:
                    informative.append(part)
            if len(informative) >= prompts or draws >= self.max_refill_draws:
                break
            draws += 1
            seed = completion_seed(self.args.seed, self.state.global_step, self._micro, draws, self.args.process_index)
            order = torch.randperm(len(self.train_dataset), generator=torch.Generator().manual_seed(seed))
            drawn = self.generate_and_score(model, [self.train_dataset[i] for i in order[:prompts].tolist()],
                                            seeds=self.completion_seeds(first, prompts, draws))
        unfilled = max(prompts - len(informative), 0)
        if unfilled:
            logger.warning("dynamic sampling: %d of %d groups still have all-equal rewards after %d extra draws; "
                           "training on them (only their KL term counts). Raise --max-refill-draws, or check that "
                           "the rewards can tell completions apart.", unfilled, prompts, draws)
        parts = (informative + spare)[:prompts]
        stats = {"dynamic_sampling/dropped_groups": float(dropped), "dynamic_sampling/draws": float(draws),
                 "dynamic_sampling/unfilled": float(unfilled)}
        if draws == 0 and not dropped:  # nothing dropped: the first draw as it was, its collated batch reused
            return (repeated, drawn[1], samples, rewards_per_func), stats
        return ([e for p in parts for e in p[0]], None, [s for p in parts for s in p[1]],
                torch.cat([p[2] for p in parts])), stats

    def score(self, examples: list[Example], completions: list[str]) -> torch.Tensor:
        """(completions × rewards) matrix. Row fields reach user rewards as lists aligned with the completions."""
        fields: dict[str, list[Any]] = {}
        for column in (examples[0].meta.get("row") or {}):
            fields[column] = [e.meta.get("row", {}).get(column) for e in examples]
        fields.update(references=[e.references for e in examples], task=[self.task] * len(examples),
                      choices=[e.meta.get("choices") for e in examples], id=[e.id for e in examples])
        prompts = [prompt_text(e) for e in examples]
        columns = [reward(prompts, completions, **fields) for reward in self.rewards]
        return torch.tensor(columns, dtype=torch.float32).T

    def per_token_logps(self, model, rollout: dict[str, Any]) -> torch.Tensor:
        """log-probs of the completion tokens under ``model`` (over the sampling temperature, as TRL does)."""
        mask = rollout["attention_mask"]
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate() numbers left-padded rows
        completion = rollout["completion_ids"]
        out = model(input_ids=rollout["input_ids"], attention_mask=mask, position_ids=positions,
                    **rollout["features"], logits_to_keep=completion.shape[1] + 1, use_cache=False)
        logits = out.logits[:, :-1, :]
        return token_logps(logits, completion, temperature=self.args.temperature)

    # --- loss -----------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = self.per_token_logps(model, inputs)
        old = inputs["old_logps"] if inputs["old_logps"] is not None else logps.detach()
        ratio = None
        if inputs.get("sampler_logps") is not None:  # TRL's truncated importance sampling for a vLLM sampler
            correction = sampler_correction(old, inputs["sampler_logps"], inputs["completion_mask"],
                                            self.args.vllm_importance_sampling_mode,
                                            self.args.vllm_importance_sampling_clip_max,
                                            self.args.vllm_importance_sampling_clip_min)
            ratio = correction.ratio
            for name, value in correction.stats.items():
                self.record(name, value)
        epsilon_high = self.args.epsilon_high if self.args.epsilon_high is not None else self.args.epsilon
        num_items = None
        if self.args.loss_type == "dapo":  # the whole batch's completion tokens per process (TRL's normaliser: the
            # processes' gradients are averaged, so each divides by its share of the global token count)
            tokens = self.accelerator.gather(inputs["completion_mask"].sum().reshape(1)).sum()
            num_items = tokens.float() / self.args.world_size
        result = grpo_loss(logps, old, inputs["ref_logps"], inputs["advantages"], inputs["completion_mask"],
                           epsilon_low=self.args.epsilon, epsilon_high=epsilon_high, beta=self.args.beta,
                           loss_type=self.args.loss_type, max_completion_length=self.args.max_completion_length,
                           importance_sampling_level=self.args.importance_sampling_level,
                           importance_sampling_ratio=ratio,
                           num_items=num_items)
        self.record("kl", result.kl)
        self.record("clip_ratio", result.clip_ratio)
        return (result.loss, None) if return_outputs else result.loss

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def _save_rng_state(self, output_dir: str) -> None:
        """Each process's random state, and, inside a replay window (the step is not a multiple of
        ``num_iterations``), the window's rollouts: the steps left in it replay them, and regenerating them from the
        moved policy would train on other completions and another old policy than the uninterrupted run."""
        super()._save_rng_state(output_dir)
        if self.state.global_step % self.args.num_iterations and self._rollouts:
            torch.save(self._rollouts, Path(output_dir) / ROLLOUTS.format(rank=self.args.process_index))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = Path(checkpoint) / ROLLOUTS.format(rank=self.args.process_index) if checkpoint else None
        if path is not None and path.is_file():
            from accelerate.utils import send_to_device

            self._rollouts = send_to_device(torch.load(path, weights_only=True), self.args.device)
            logger.info("--resume: replaying the rollouts of %d micro-batch(es) saved inside the window.",
                        len(self._rollouts))

