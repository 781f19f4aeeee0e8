"""GRPO's rollouts on vLLM (``--rollout-backend vllm``, rl/vllm_rollouts.py).

Fast: the refusals, at config time (families vLLM cannot give the policy's LoRA, --full, no vLLM) and before training
(an adapter vLLM's LoRA cannot apply). Slow, on real vLLM (`make vllm-env`) and the default tiny AF3 (vLLM's CPU
attention has no kernel for the micro preset's head size 16): one test, one server (and the one restart it
proves): greedy rollouts equal HF greedy decoding, seeds repeat, every step samples from that step's adapter, a
killed server is restarted once and a second death stops the run with everything trained saved.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from audiotune.errors import ConfigError, RolloutServerError
from audiotune.train_config import TrainConfig
from tests.conftest import tone
from tests.test_serve_vllm import _vllm_python

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def beeps(tmp_path_factory) -> Path:
    from audiotune.data.synthetic_rl import write_beep_count_dataset

    out = tmp_path_factory.mktemp("beeps")
    write_beep_count_dataset(out, n_clips=24, seed=3, slot_seconds=0.25)
    return out


def _grpo(model, beeps, out, **overrides) -> TrainConfig:
    values = dict(model=str(model), dataset=str(beeps), output_dir=str(out), task="mcq", method="grpo",
                  rollout_backend="vllm", per_device_train_batch_size=2, gradient_accumulation_steps=1,
                  num_generations=4, max_completion_length=4, max_steps=2, seed=0)
    return TrainConfig.from_flat(**{**values, **overrides})


@pytest.mark.parametrize("case,match", [
    ("qwen2audio", "vLLM's qwen2audio model code takes no LoRA"),
    ("granite_speech", "ships its own audio LoRA"),
    ("full", "--full trains every weight"),
    ("no vllm", "no such interpreter"),
    ("url without backend", "--vllm-url is the server of --rollout-backend vllm")])
def test_configs_vllm_cannot_roll_out_are_refused_before_anything_loads(case, match, micro_af3, beeps, tmp_path):
    from audiotune.models.tiny import cached_tiny

    model = cached_tiny(case) if case in ("qwen2audio", "granite_speech") else micro_af3
    extra = {"full": dict(full=True, beta=0.0), "no vllm": dict(vllm_python=str(tmp_path / "none" / "python")),
             "url without backend": dict(rollout_backend="native", vllm_url="http://127.0.0.1:1")}.get(case, {})
    with pytest.raises(ConfigError, match=match):
        _grpo(model, beeps, tmp_path, **extra).validate()


@pytest.mark.parametrize("plan,match", [
    (dict(train_projector=True), "saves whole modules"),
    (dict(train_audio_encoder="lora"), "trains the audio encoder"),
    (dict(lora_targets=r".*language_model\..*\.q_proj|lm_head"), "LM head")])
def test_a_policy_vllm_lora_cannot_apply_is_refused_before_training(plan, match, micro_af3, family, micro_processor,
                                                                    tmp_path):
    from audiotune.models.loading import AdaptationPlan, load_model, prepare_for_training
    from audiotune.rl.vllm_rollouts import VllmRollouts

    model, _ = load_model(micro_af3)
    policy = prepare_for_training(model, family, AdaptationPlan(lora_r=4, **plan))
    rollouts = VllmRollouts(str(micro_af3), family, micro_processor, tmp_path, url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=f"cannot reach vLLM as a LoRA: it {'.*' if 'LM' in match else ''}{match}"):
        rollouts.check_policy(policy)
    assert not (tmp_path / "policy-check").exists()


def _live_members(group: int) -> list[int]:
    """The processes of process group ``group`` that still run (a zombie has exited; only its parent's reaping, or
    init's for an orphaned engine process, is left)."""
    live = []
    for entry in Path("/proc").iterdir():
        try:
            state, _, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):  # not a process, or one that just went
            continue
        if int(pgrp) == group and state not in ("Z", "X"):
            live.append(int(entry.name))
    return live


def _live_members_once_settled(group: int) -> list[int]:
    """``_live_members`` after SIGKILL has taken effect: polled until none runs (a state), bounded at 60 s so that a
    process that escaped the kill fails the test instead of hanging it."""
    for _ in range(1_200):
        if not (live := _live_members(group)):
            break
        time.sleep(0.05)
    return live


# --- real vLLM ------------------------------------------------------------------------------------------------

def _hf_greedy(policy, processor, family, examples, max_tokens: int, suppress=None) -> list[list[int]]:
    """The reference: transformers' own greedy ``generate`` on the policy, cut after the first stop token."""
    from audiotune.data.collator import ConversationCollator
    from audiotune.generate import stop_token_ids
    from audiotune.models.loading import to_model_inputs

    batch = to_model_inputs(ConversationCollator(processor, family, training=False)(examples), policy)
    stops = stop_token_ids(processor, family)
    with torch.no_grad():
        out = policy.generate(**batch, do_sample=False, max_new_tokens=max_tokens, eos_token_id=stops,
                              pad_token_id=processor.tokenizer.pad_token_id, suppress_tokens=suppress)
    rows = []
    for tokens in out[:, batch["input_ids"].shape[1]:].tolist():
        end = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
        rows.append(tokens[:end])
    return rows, batch


@pytest.mark.slow
def test_grpo_samples_each_step_from_its_own_adapter_and_survives_one_server_death(
        tiny_af3, trained_adapter, beeps, tmp_path, monkeypatch):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from audiotune.audio_cache import AudioEmbeddingCache, install_audio_cache
    from audiotune.generate import examples_from_audio
    from audiotune.models.loading import load_base_model, load_processor
    from audiotune.rl import make_rl_trainer
    from audiotune.rl.vllm_rollouts import SERVER_FILE, VllmRollouts
    from audiotune.train import build_datasets, start_from_adapter

    out = tmp_path / "grpo"
    monkeypatch.setenv("AUDIOTUNE_TEST_KILL_VLLM", json.dumps({
        "server_file": str(out / "vllm-rollouts" / SERVER_FILE), "at": [1, 2], "record": str(tmp_path / "kills.json")}))
    # Starts from an adapter trained on captions: its greedy answers are clear of the near-ties where two float32
    # kernels may part. The kill reward (accuracy, varied within each group) kills the server after its 1st and 2nd
    # call.
    cfg = _grpo(tiny_af3, beeps, out, init_adapter=str(trained_adapter), vllm_python=str(_vllm_python()),
                max_steps=3, learning_rate=1e-3, logging_steps=1, save_steps=100,
                rewards=[f"{REPO / 'tests' / 'kill_vllm_reward.py'}:reward_killing_vllm"]).validate()
    base, family = load_base_model(tiny_af3)
    train_ds, _, _ = build_datasets(cfg, family, out)
    train_ds.build.keep_fields = True
    policy = start_from_adapter(base, cfg)
    install_audio_cache(policy, family, AudioEmbeddingCache())
    processor = load_processor(tiny_af3)
    trainer = make_rl_trainer(cfg.trainer_arguments(has_eval=False, output_dir=str(out)), cfg.rl, policy, processor,
                              family, train_ds, [], model_path=str(tiny_af3))
    vllm = trainer.vllm.start()
    first_pid = vllm.pid

    # The same server as a user's (--vllm-url): greedy rollouts equal transformers' greedy decoding of the policy,
    # on a beep question and a caption prompt. The caption adapter answers one word and stops; with the stop tokens
    # suppressed it writes 16 tokens, each chosen by a margin of at least 0.2 logits (no near-ties).
    user = VllmRollouts(str(tiny_af3), family, processor, tmp_path / "user", url=vllm.url, api_key=vllm.api_key)
    examples = [train_ds[0], examples_from_audio([tone(2.0, 220)], "Describe the audio.")[0]]
    name = user.sync(policy, 0)
    assert name.startswith("policy-") and name.endswith("-step-0") and name != vllm.name_for(0)
    for suppress in (None, user.stop_ids):
        expected, batch = _hf_greedy(policy, processor, family, examples, max_tokens=16, suppress=suppress)
        greedy = user.sample(examples, model=name, seed=0, max_tokens=16, temperature=0.0, suppress_tokens=suppress,
                             inputs=batch)
        assert [s.tokens for s in greedy] == expected
        assert [s.stopped for s in greedy] == [suppress is None] * 2
        assert {s.model for s in greedy} == {name} and all(len(s.logprobs) == len(s.tokens) for s in greedy)
    # Seeds: a group (one example, 4 completions) drawn twice with one seed is the same; another seed differs.
    group = [examples[0]] * 4
    draws = [[s.tokens for s in user.sample(group, model=name, seed=seed, max_tokens=6, temperature=1.0)]
             for seed in (7, 7, 8)]
    assert draws[0] == draws[1] != draws[2]
    user.close()

    # Killed after step 0's rollout: restarted for step 1's (with step 0's adapter, then step 1's); killed again after
    # it: step 2's rollout finds it dead a second time, and the run stops with the two steps trained saved.
    with pytest.raises(RolloutServerError, match="died again.*after its one restart.*checkpoint-2") as stopped:
        trainer.train()
    assert "Training stopped before step 3" in str(stopped.value)
    # Each step sampled from its own step's adapter (vLLM's word), the restarted server included.
    assert trainer.sampled_from == [(0, [vllm.name_for(0)]), (1, [vllm.name_for(1)])]
    assert vllm.restarts == 1
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2]
    # The sampler's log-probs are the learner's but for the suppressed audio placeholder (vLLM's are normalised
    # without it: log 1/(1 - p) ≈ 1.5e-3 on this model) and kernel noise; a step-old adapter's differ by 0.03-0.2.
    for h in logged:
        assert h["sampling/stale_completions"] == 0
        assert h["sampling/sampling_logp_difference/mean"] < 5e-3, h
        assert h["sampling/importance_sampling_ratio/mean"] == pytest.approx(1.0, abs=5e-3)
    # Nothing trained is lost: checkpoint-2 holds the policy as the second step left it, ready for --resume.
    checkpoint = out / "checkpoint-2"
    saved = load_file(checkpoint / "adapter_model.safetensors")
    trained = get_peft_model_state_dict(trainer.model, adapter_name="default")
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k].cpu()) for k in saved)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    moved = load_file(trained_adapter / "adapter_model.safetensors")
    assert any(not torch.equal(moved[k], saved[k]) for k in saved)  # the steps did change the adapter
    # Both servers are gone: the killed one and its replacement (which the reward killed too).
    killed = json.loads((tmp_path / "kills.json").read_text())["killed"]
    assert killed[0] == first_pid and len(set(killed)) == 2
    assert (out / "vllm-rollouts" / "server.log").read_text().count("Application startup complete") == 2
    for pid in killed:
        assert _live_members_once_settled(pid) == [], f"processes of server group {pid} still run"
    assert sorted(p.name for p in (out / "vllm-rollouts").iterdir()) == ["server.log"]  # no adapter, no server.json
