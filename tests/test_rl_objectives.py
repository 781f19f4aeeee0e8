"""GSPO, DAPO, KTO, ORPO and SimPO inside the trainers: DAPO's dynamic sampling drops all-equal groups and refills
the batch (deterministic, seeded; what happens when the data cannot refill it), overlong completions are masked,
KTO's mismatched rows are the previous row's answer, and a short real ``train()`` per objective on the micro AF3.
The losses themselves are checked against TRL in tests/test_rl_losses.py."""

from __future__ import annotations

import dataclasses
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from audiotune.engines.base import Sample
from audiotune.rl.grpo import GrpoTrainer
from audiotune.train_config import TrainConfig
from tests.test_grpo import _trainer, beeps  # noqa: F401 (a fixture)

GROUP = 4
INFORMATIVE = [1.0, 0.0, 0.0, 1.0]  # rewards that differ within the group


def _refiller(dataset: list[str], flat: set[str], max_refill_draws: int):
    """A GrpoTrainer with only what ``refill`` reads, whose ``generate_and_score`` scores a prompt named in ``flat``
    with four equal rewards and any other with :data:`INFORMATIVE` (no model: the selection logic alone)."""
    trainer = GrpoTrainer.__new__(GrpoTrainer)
    trainer.args = SimpleNamespace(num_generations=GROUP, seed=7, num_iterations=1, process_index=0)
    trainer.state = SimpleNamespace(global_step=3)
    trainer._micro, trainer.train_dataset, trainer.max_refill_draws = 1, dataset, max_refill_draws
    trainer.rewards = [SimpleNamespace(weight=1.0)]
    trainer.calls = []

    def generate_and_score(model, examples, seeds=None):
        trainer.calls.append(list(examples))
        repeated = [e for e in examples for _ in range(GROUP)]
        rewards = [r for e in examples for r in ([0.5] * GROUP if e in flat else INFORMATIVE)]
        samples = [Sample(tokens=[i], stopped=True, text=f"{e}#{i % GROUP}") for i, e in enumerate(repeated)]
        return repeated, {"batch": examples}, samples, torch.tensor(rewards).unsqueeze(1)

    trainer.generate_and_score = generate_and_score
    return trainer


def _groups(drawn) -> list[str]:
    return drawn[0][::GROUP]


def test_dynamic_sampling_drops_all_equal_groups_and_refills():
    data = [f"p{i}" for i in range(12)]
    flat = {f"p{i}" for i in range(0, 12, 2)}  # even prompts: all-equal rewards
    trainer = _refiller(data, flat, max_refill_draws=5)
    kept, stats = trainer.refill(None, trainer.generate_and_score(None, ["p0", "p1", "p2"]), 3)
    groups = _groups(kept)
    assert len(groups) == 3 and not set(groups) & flat and groups[0] == "p1"  # the first draw's good group first
    assert kept[1] is None  # prompts from several draws: the rollout collates them afresh
    assert len(kept[2]) == len(kept[0]) == 3 * GROUP and kept[3].shape == (3 * GROUP, 1)
    for name, completion, reward in zip(kept[0], kept[2], kept[3][:, 0].tolist()):  # rows stay aligned
        assert completion.text.startswith(name + "#") and reward == INFORMATIVE[int(completion.text[-1])]
    extra = trainer.calls[1:]
    assert stats["dynamic_sampling/draws"] == len(extra) >= 1 and stats["dynamic_sampling/unfilled"] == 0
    assert all(len(batch) == 3 and set(batch) <= set(data) for batch in extra)  # whole batches from the data
    seen_flat = sum(e in flat for batch in trainer.calls for e in batch)
    assert stats["dynamic_sampling/dropped_groups"] == seen_flat >= 2
    # deterministic: the same step and micro-batch draw the same prompts
    again = _refiller(data, flat, max_refill_draws=5)
    assert _groups(again.refill(None, again.generate_and_score(None, ["p0", "p1", "p2"]), 3)[0]) == groups


def test_dynamic_sampling_that_cannot_refill_keeps_the_batch_size_and_says_so(caplog):
    data = ["flat1", "flat2", "flat3", "flat4"]  # every prompt the refill can draw is all-equal
    trainer = _refiller(data, set(data), max_refill_draws=2)
    with caplog.at_level(logging.WARNING, logger="audiotune.rl.grpo"):
        kept, stats = trainer.refill(None, trainer.generate_and_score(None, ["flat1", "good"]), 2)
    assert len(trainer.calls) == 3  # the batch, then at most --max-refill-draws more
    assert stats["dynamic_sampling/draws"] == 2 and stats["dynamic_sampling/unfilled"] == 1
    assert _groups(kept) == ["good", "flat1"]  # the good group, padded with the first draw's all-equal one
    assert "1 of 2 groups still have all-equal rewards after 2 extra draws" in caplog.text


def test_dynamic_sampling_keeps_a_batch_with_no_all_equal_group_as_it_is():
    trainer = _refiller(["a", "b"], set(), max_refill_draws=3)
    first = trainer.generate_and_score(None, ["a", "b"])
    kept, stats = trainer.refill(None, first, 2)
    assert len(trainer.calls) == 1 and kept[1] is first[1]  # nothing drawn, the collated batch reused
    assert stats == {"dynamic_sampling/dropped_groups": 0.0, "dynamic_sampling/draws": 0.0,
                     "dynamic_sampling/unfilled": 0.0}


def _grpo_trainer(micro_af3, beeps, tmp_path, **overrides):
    """The GRPO trainer as ``train()`` assembles it (tests/test_grpo.py's recipe), with no KL term."""
    trainer, _, _, train_ds = _trainer(micro_af3, beeps, tmp_path, **{"beta": 0.0, **overrides})
    return trainer, train_ds


@pytest.mark.slow
@pytest.mark.parametrize("masked", [True, False])
def test_truncated_completions_get_no_loss(micro_af3, beeps, tmp_path, masked):
    trainer, train_ds = _grpo_trainer(micro_af3, beeps, tmp_path, mask_truncated_completions=masked)
    sampled: list[Sample] = []
    engine_of = trainer.rollout_engine

    class Recording:  # the real engine, its samples kept to compare with the rollout's mask
        def __init__(self, policy):
            self.engine = engine_of(policy)

        def sample(self, *args, **kwargs):
            samples = self.engine.sample(*args, **kwargs)
            sampled.extend(samples)
            return samples

    trainer.rollout_engine = Recording
    rollout = trainer.rollout([train_ds[0], train_ds[1]])
    assert any(not s.stopped for s in sampled)  # 3 tokens: the micro model rarely stops that soon
    expected = [len(s.tokens) if s.stopped or not masked else 0 for s in sampled]
    assert rollout["completion_mask"].sum(1).tolist() == expected
    width = rollout["completion_ids"].shape[1]
    assert torch.equal(rollout["attention_mask"][:, -width:], rollout["completion_mask"])  # not attended either
    assert rollout["stats"]["completions_clipped"] == pytest.approx(sum(not s.stopped for s in sampled) / 8)


def test_kto_mismatched_rows_pair_each_prompt_with_the_previous_rows_answer(micro_af3, beeps, tmp_path):
    from audiotune.data.collator import IGNORE_INDEX
    from audiotune.models.loading import load_processor, resolve_family
    from audiotune.rl.dpo import PreferenceCollator
    from audiotune.train import build_datasets

    cfg = TrainConfig.from_flat(model=str(micro_af3), dataset=str(beeps), output_dir=str(tmp_path), method="dpo",
                                dpo_loss_type="kto").validate()
    family = resolve_family(str(micro_af3))
    train_ds, _, _ = build_datasets(cfg, family, tmp_path, dataclasses.replace(cfg.data, task="preference"))
    processor = load_processor(micro_af3)
    examples = [train_ds[i] for i in range(3)]
    batch = PreferenceCollator(processor, family, kto=True)(examples)
    decode = processor.tokenizer.decode

    def answers(rows) -> list[str]:
        return [decode(labels[labels != IGNORE_INDEX]) for labels in rows["labels"]]

    def prompts(rows) -> list[str]:
        return [decode(ids[labels == IGNORE_INDEX]) for ids, labels in zip(rows["input_ids"], rows["labels"])]

    words = answers(batch)
    assert words[:3] != words[3:] and all(e.meta["rejected"] in w for e, w in zip(examples, words[3:]))
    assert answers(batch["kl"]) == [words[-1]] + words[:-1]  # TRL's cycle: row i gets row i-1's answer
    assert prompts(batch["kl"]) == prompts(batch)
    assert "kl" not in PreferenceCollator(processor, family)(examples)


@pytest.mark.slow
def test_gspo_dapo_train_end_to_end(micro_af3, beeps, tmp_path):
    from audiotune.train import train

    result = train(TrainConfig.from_flat(
        model=str(micro_af3), dataset=str(beeps), output_dir=str(tmp_path / "run"), task="mcq", method="grpo",
        importance_sampling_level="sequence", grpo_loss_type="dapo", dynamic_sampling=True, max_refill_draws=2,
        mask_truncated_completions=True, epsilon_high=0.28, num_iterations=2, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, num_generations=4, max_completion_length=2, max_steps=2, logging_steps=1,
        save_steps=100, eval_split=None, eval_take=None, seed=0))
    logged = [h for h in result.log_history if "loss" in h]
    assert len(logged) == 2 and all(math.isfinite(h["loss"]) for h in logged)
    for key in ("dynamic_sampling/draws", "dynamic_sampling/dropped_groups", "dynamic_sampling/unfilled",
                "clip_ratio", "reward"):
        assert all(key in h for h in logged), key
    # the micro model rarely answers right in 2 tokens: groups come out all-equal, and the refill really ran
    assert sum(h["dynamic_sampling/draws"] for h in logged) > 0
    assert "importance_sampling_level: sequence" in (tmp_path / "run" / "run_config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["kto", "orpo", "simpo"])
def test_preference_objectives_train_end_to_end(micro_af3, beeps, tmp_path, loss_type):
    """The same 4 pairs every step at a high learning rate: the chosen answers' implicit reward must pull ahead."""
    from audiotune.train import train

    result = train(TrainConfig.from_flat(
        model=str(micro_af3), dataset=str(beeps), output_dir=str(tmp_path / loss_type), method="dpo",
        dpo_loss_type=loss_type, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=4,
        logging_steps=1, save_steps=100, train_take=4, eval_take=2, learning_rate=1e-2, seed=0,
        lora_targets=r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head"))
    logged = [h for h in result.log_history if "loss" in h]
    assert len(logged) == 4 and logged[-1]["loss"] < logged[0]["loss"]
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"]
    if loss_type == "kto":  # policy == reference before the first update: KL 0, each example's loss 1 - σ(0)
        assert logged[0]["loss"] == pytest.approx(0.5, abs=1e-4) and "kl" in logged[0]
    else:  # reference-free: the rewards are β · mean log π(answer), below 0 from the start (DPO's and KTO's are 0)
        assert logged[0]["rewards/chosen"] < 0 and logged[0]["rewards/rejected"] < 0
    if loss_type == "orpo":
        assert "nll_loss" in logged[0]


@pytest.mark.slow
def test_the_trainer_computes_the_configured_grpo_objective(micro_af3, beeps, tmp_path):
    """--importance-sampling-level and --grpo-loss-type reach the loss the trainer backpropagates."""
    from audiotune.rl.losses import grpo_loss

    trainer, train_ds = _grpo_trainer(micro_af3, beeps, tmp_path, importance_sampling_level="sequence",
                                      grpo_loss_type="dapo", num_iterations=2)
    rollout = trainer.rollout([train_ds[0], train_ds[1]])
    generator = torch.Generator().manual_seed(0)
    rollout["old_logps"] = rollout["old_logps"] + 0.3 * torch.randn(rollout["old_logps"].shape, generator=generator)
    rollout["advantages"] = torch.linspace(-1, 1, 8)
    rollout["completion_mask"] = rollout["completion_mask"].clone()
    rollout["completion_mask"][::2, 1:] = 0  # unequal lengths, so that dapo's token sum and grpo's mean differ
    loss = trainer.compute_loss(trainer.model, rollout)
    with torch.no_grad():
        logps = trainer.per_token_logps(trainer.model, rollout)
    args = (logps, rollout["old_logps"], None, rollout["advantages"], rollout["completion_mask"])
    expected = grpo_loss(*args, beta=0.0, loss_type="dapo", importance_sampling_level="sequence").loss.item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    for other in ({"loss_type": "dapo"}, {"loss_type": "grpo", "importance_sampling_level": "sequence"}):
        assert grpo_loss(*args, beta=0.0, **other).loss.item() != pytest.approx(expected, rel=1e-3), other


@pytest.mark.parametrize("settings,message", [
    ({"method": "grpo", "task": "mcq", "grpo_loss_type": "dapo", "gradient_accumulation_steps": 2},
     "--gradient-accumulation-steps 1"),
    ({"method": "grpo", "task": "mcq", "dynamic_sampling": True, "max_refill_draws": -1}, "--max-refill-draws -1"),
    ({"method": "dpo", "dpo_loss_type": "kto", "full": True}, "reference-free loss (orpo, simpo)"),
])
def test_settings_that_cannot_work_are_refused(settings, message):
    from audiotune.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.from_flat(model="m", dataset="d", **settings).validate()


@pytest.mark.parametrize("loss_type", ["orpo", "simpo"])
def test_reference_free_losses_train_full_models(loss_type):
    cfg = TrainConfig.from_flat(model="m", dataset="d", method="dpo", dpo_loss_type=loss_type, full=True).validate()
    assert cfg.trainer_arguments(has_eval=False).loss_type == [loss_type]
