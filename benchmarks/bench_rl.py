"""GRPO on a verifiable task: does it raise held-out accuracy above the supervised adapter it starts from?

On the micro AF3 and the synthetic "How many beeps?" multiple-choice task (``audiotune.data.synthetic_rl``; two
or five beeps, so chance is 0.5): a short supervised run (``audiotune train --task mcq``), then GRPO from that
adapter (``--method grpo --init-adapter``, accuracy reward), each scored by ``audiotune eval --task mcq`` on the
same held-out test clips (greedy). LoRA covers the LM head too: a tiny random model's head is so small that,
without it, no answer can get much probability, and sampled groups would be noise. The projector trains too
(``--train-projector``): with the LM alone the micro model answers one constant letter whatever it hears, under every
method. GRPO's learning rate is low (1e-4): Adam moves every weight by about the learning rate per step whatever the
gradient's size, and at 3e-3 the group's noisy gradients undid what SFT had learned. For a fair comparison the
supervised run is also continued for as many steps as GRPO took ("SFT, continued"), with the same warm-up. Prints a markdown table and a JSON line; ``--write`` puts the table into
BENCHMARKS.md's "GRPO" section.

Then (when vLLM's environment is there, `make vllm-env`) rollouts native vs vLLM (:func:`rollout_speed`): the same
policy (the default tiny AF3, whose vLLM attention kernels exist on CPU, with a fresh LM-only LoRA: vLLM's LoRA takes
no projector or LM head), the same 4 prompts × a group of 8, 32 new tokens at temperature 1. Completions per second
of the sampling call GRPO makes (``engine.sample``; the vLLM server started and the adapter synced before the
clock), and the median GRPO step time of a short ``train()`` run each way (the vLLM run's steps include the
per-step adapter sync; its first step, which starts the server, is reported apart). Both comparisons alternate the
two backends (sampling calls; two ``train()`` runs each), so the load of a shared machine falls on both.
``--write`` puts it under the GRPO section's "Rollouts: native vs vLLM"; ``--rollouts-only`` runs this part alone.

Usage: python benchmarks/bench_rl.py [--out runs/bench-rl] [--write] [--rollouts-only]   (``make rl-bench``)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

SECTION = "## GRPO on a verifiable task"
ROLLOUT_SECTION = "### Rollouts: native vs vLLM"
COUNTS = (2, 5)
SFT_LR, GRPO_LR, BETA = 1e-2, 1e-4, 0.04
WITH_HEAD = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head"


def accuracy(model: str, data: str, adapter: str, out: str) -> float:
    from audiotune.evaluate import EvalConfig, run_evaluation

    report = run_evaluation(EvalConfig.from_flat(model=model, dataset=data, out=out, adapters=[adapter], split="test",
                                                 task="mcq", batch_size=16, max_new_tokens=8, with_meteor=False))
    return float(report.models[0].metrics["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/bench-rl")
    parser.add_argument("--clips", type=int, default=160)
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--grpo-steps", type=int, default=40)
    parser.add_argument("--grpo-lr", type=float, default=GRPO_LR)
    parser.add_argument("--beta", type=float, default=BETA)
    parser.add_argument("--reuse-sft", action="store_true", help="Start from OUT/sft if an earlier run left it.")
    parser.add_argument("--write", action="store_true", help="Update the GRPO section of BENCHMARKS.md.")
    parser.add_argument("--rollouts-only", action="store_true", help="Only the native vs vLLM rollout comparison.")
    parser.add_argument("--group", type=int, default=8, help="Rollouts: completions per prompt.")
    parser.add_argument("--rollout-tokens", type=int, default=32, help="Rollouts: new tokens per completion.")
    parser.add_argument("--rollout-repeats", type=int, default=3, help="Rollouts: timed sampling calls per backend.")
    parser.add_argument("--rollout-steps", type=int, default=4, help="Rollouts: GRPO steps per backend.")
    opts = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    import datasets
    from audiotune.train_config import TrainConfig
    from audiotune.data.synthetic_rl import write_beep_count_dataset
    from audiotune.models.tiny import build_tiny
    from audiotune.train import train

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    torch.manual_seed(0)
    root = Path(opts.out)
    data = root / "beeps"
    if not (data / "data").exists():
        write_beep_count_dataset(data, n_clips=opts.clips, seed=0, counts=COUNTS)
    if opts.rollouts_only:
        return rollouts_part(root, data, opts)
    model = str(build_tiny("af3", root / f"{opts.preset}-af3", seed=0, preset=opts.preset))
    common = dict(model=model, dataset=str(data), task="mcq", eval_take=8, eval_generate_take=0, logging_steps=5,
                  seed=0, save_steps=10_000, lora_targets=WITH_HEAD, train_projector=True)

    timings: dict[str, float] = {}
    start = time.perf_counter()
    clock = root / "sft" / "bench_seconds.txt"
    if opts.reuse_sft and clock.exists():
        from types import SimpleNamespace

        sft = SimpleNamespace(out_dir=root / "sft")
        timings["sft"] = float(clock.read_text())
    else:
        sft = train(TrainConfig.from_flat(**common, output_dir=str(root / "sft"), per_device_train_batch_size=8,
                                          gradient_accumulation_steps=1, learning_rate=SFT_LR, warmup_steps=3,
                                          max_steps=opts.sft_steps))
        timings["sft"] = time.perf_counter() - start
        clock.write_text(f"{timings['sft']:.1f}")
    # GRPO and its two variants (docs/rl.md's recipes), each from the SFT adapter with the same steps and prompts
    variants = {"grpo": dict(beta=opts.beta),
                "gspo": dict(importance_sampling_level="sequence", num_iterations=2, epsilon=3e-4, epsilon_high=4e-4,
                             beta=0.0),
                "dapo": dict(grpo_loss_type="dapo", dynamic_sampling=True, mask_truncated_completions=True,
                             epsilon_high=0.28, beta=0.0)}
    runs = {}
    for name, settings in variants.items():
        start = time.perf_counter()
        runs[name] = train(TrainConfig.from_flat(**common, output_dir=str(root / name), method="grpo",
                                                 init_adapter=str(sft.out_dir), per_device_train_batch_size=4,
                                                 gradient_accumulation_steps=1, num_generations=8,
                                                 max_completion_length=3, learning_rate=opts.grpo_lr, warmup_steps=0,
                                                 max_steps=opts.grpo_steps, temperature=1.0, **settings))
        timings[name] = time.perf_counter() - start
    grpo = runs["grpo"]
    start = time.perf_counter()
    more = train(TrainConfig.from_flat(**common, output_dir=str(root / "sft-continued"), init_adapter=str(sft.out_dir),
                                       per_device_train_batch_size=8, gradient_accumulation_steps=1,
                                       learning_rate=SFT_LR, warmup_steps=3, max_steps=opts.grpo_steps))
    timings["sft_continued"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = {name: accuracy(model, str(data), str(run.out_dir), str(root / f"eval-{name}"))
              for name, run in (("sft", sft), *runs.items(), ("sft_continued", more))}
    timings["eval"] = time.perf_counter() - start
    rewards = [h["reward"] for h in grpo.log_history if "reward" in h]
    quarter = max(1, len(rewards) // 4)
    result = {"accuracy": scores, "seconds": {k: round(v, 1) for k, v in timings.items()},
              "grpo_reward_first_quarter": sum(rewards[:quarter]) / quarter,
              "grpo_reward_last_quarter": sum(rewards[-quarter:]) / quarter,
              # per step (each log is the mean over its logging window)
              **{f"dapo_{key}": statistics.mean(h[f"dynamic_sampling/{key}"] for h in runs["dapo"].log_history
                                                  if f"dynamic_sampling/{key}" in h) for key in ("draws",
                                                                                               "dropped_groups")},
              "test_clips": len(list((root / "eval-sft").glob("predictions.jsonl"))) and sum(
                  1 for _ in open(root / "eval-sft" / "predictions.jsonl")),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"}
    table = "\n".join([
        "| adapter | steps | train time (s) | held-out accuracy |", "|---|---|---|---|",
        f"| supervised (SFT) | {opts.sft_steps} | {timings['sft']:.0f} | {scores['sft']:.3f} |",
        f"| SFT → GRPO | {opts.sft_steps} + {opts.grpo_steps} | {timings['sft'] + timings['grpo']:.0f} | "
        f"**{scores['grpo']:.3f}** |",
        f"| SFT → GSPO (`--importance-sampling-level sequence`) | {opts.sft_steps} + {opts.grpo_steps} | "
        f"{timings['sft'] + timings['gspo']:.0f} | {scores['gspo']:.3f} |",
        f"| SFT → DAPO (`--grpo-loss-type dapo --dynamic-sampling`) | {opts.sft_steps} + {opts.grpo_steps} | "
        f"{timings['sft'] + timings['dapo']:.0f} | {scores['dapo']:.3f} |",
        f"| SFT, continued | {opts.sft_steps} + {opts.grpo_steps} | {timings['sft'] + timings['sft_continued']:.0f} | "
        f"{scores['sft_continued']:.3f} |"])
    print(table)
    print(json.dumps(result))
    if opts.write:
        write_section(table, result, opts)
    rollouts_part(root, data, opts)


def rollouts_part(root: Path, data: Path, opts) -> None:
    from audiotune.engines.vllm_env import VLLM_ENV_DIR

    if not (Path(VLLM_ENV_DIR) / "bin" / "python").exists() and not os.environ.get("AUDIOTUNE_VLLM_PYTHON"):
        print(f"rollouts native vs vLLM: skipped (no {VLLM_ENV_DIR}; `make vllm-env` builds it)")
        return
    result = rollout_speed(root, data, opts)
    table = "\n".join([
        "| rollout backend | completions/s (sampling) | GRPO step (s, median) | first step (s) |", "|---|---|---|---|",
        *[f"| {name} | {r['completions_per_s']:.2f} | {r['step_s']:.2f} | {r['first_step_s']:.1f} |"
          for name, r in result["backends"].items()]])
    print(table)
    print(json.dumps(result))
    if opts.write:
        write_rollout_section(table, result, opts)


def rollout_speed(root: Path, data: Path, opts) -> dict:
    """Native vs vLLM rollouts on one policy and one set of prompts, then a short GRPO run each way."""
    import statistics

    import torch
    from transformers import TrainerCallback

    from audiotune.audio_cache import AudioEmbeddingCache, install_audio_cache
    from audiotune.data.collator import ConversationCollator
    from audiotune.engines.native import NativeEngine
    from audiotune.models.loading import (AdaptationPlan, load_base_model, load_processor, prepare_for_training,
                                          to_model_inputs)
    from audiotune.models.tiny import build_tiny
    from audiotune.rl.vllm_rollouts import VllmRollouts
    from audiotune.train import build_datasets, train
    from audiotune.train_config import TrainConfig

    model = str(build_tiny("af3", root / "tiny-af3", seed=0))
    common = dict(model=model, dataset=str(data), task="mcq", method="grpo", per_device_train_batch_size=4,
                  gradient_accumulation_steps=1, num_generations=opts.group,
                  max_completion_length=opts.rollout_tokens, learning_rate=1e-5, beta=0.04, temperature=1.0,
                  logging_steps=1, save_steps=10_000, eval_split=None, seed=0)
    cfg = TrainConfig.from_flat(**common, output_dir=str(root / "rollouts")).validate()
    base, family = load_base_model(model)
    processor = load_processor(model)
    policy = prepare_for_training(base, family, AdaptationPlan(lora_r=16))
    install_audio_cache(policy, family, AudioEmbeddingCache())
    train_ds, _, _ = build_datasets(cfg, family, root / "rollouts")
    prompts = [train_ds[i] for i in range(4)]
    repeated = [e for e in prompts for _ in range(opts.group)]
    batch = to_model_inputs(ConversationCollator(processor, family, training=False)(repeated), policy)
    audio_id = processor.tokenizer.convert_tokens_to_ids(family.audio_token)
    sampling = dict(max_tokens=opts.rollout_tokens, temperature=1.0, top_p=1.0, suppress_tokens=[audio_id],
                    inputs=batch)

    results: dict[str, dict] = {"native": {"sampling_s": 0.0, "tokens": 0}, "vllm": {"sampling_s": 0.0, "tokens": 0}}
    vllm = VllmRollouts(model, family, processor, root / "rollouts" / "vllm", max_num_seqs=len(repeated))
    try:
        start = time.perf_counter()
        vllm.start()
        results["vllm"]["server_start_s"] = time.perf_counter() - start
        start = time.perf_counter()
        results["vllm"]["adapter"] = vllm.sync(policy, 0)
        results["vllm"]["adapter_sync_s"] = time.perf_counter() - start
        samplers = {"native": NativeEngine.wrap(policy, processor, family), "vllm": vllm.for_policy(policy, 0, 0)}
        for sampler in samplers.values():
            sampler.sample(repeated, **sampling)  # warm-up: caches, first-call allocations
        for _ in range(opts.rollout_repeats):  # alternated, so that the machine's other load falls on both
            for name, sampler in samplers.items():
                start = time.perf_counter()
                tokens = sum(len(s.tokens) for s in sampler.sample(repeated, **sampling))
                results[name]["sampling_s"] += time.perf_counter() - start
                results[name]["tokens"] += tokens
    finally:
        vllm.close()
    completions = len(repeated) * opts.rollout_repeats
    for r in results.values():
        r["completions_per_s"] = completions / r["sampling_s"]
    print("sampling:", json.dumps(results), flush=True)  # before the longer GRPO runs

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    steps: dict[str, list[float]] = {"native": [], "vllm": []}
    firsts: dict[str, list[float]] = {"native": [], "vllm": []}
    for round_ in range(2):  # alternated, as above
        for backend in ("native", "vllm"):
            clock = StepClock()
            train(TrainConfig.from_flat(**common, output_dir=str(root / f"grpo-{backend}-{round_}"),
                                        rollout_backend=backend, max_steps=opts.rollout_steps), callbacks=[clock])
            times = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
            firsts[backend].append(times[0])
            steps[backend] += times[1:]
            print(backend, "steps (s):", [round(t, 1) for t in times], flush=True)
    for backend in steps:
        results[backend].update(first_step_s=statistics.median(firsts[backend]),
                                step_s=statistics.median(steps[backend]))
    ratio = {"sampling": results["vllm"]["completions_per_s"] / results["native"]["completions_per_s"],
             "step": results["native"]["step_s"] / results["vllm"]["step_s"]}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"backends": results, "speedup": ratio, "group": opts.group, "prompts": len(prompts),
            "tokens": opts.rollout_tokens, "repeats": opts.rollout_repeats, "steps": opts.rollout_steps,
            "load_average": load, "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                                               f"{torch.get_num_threads()} threads"}


def write_section(table: str, result: dict, opts) -> None:
    from datetime import date

    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    text = path.read_text()
    body = (f"{SECTION}\n\nMeasured {date.today()} with `make rl-bench` (`benchmarks/bench_rl.py`) on "
            f"{result['machine']}. Micro AF3, LoRA r=16 on the LM and its head plus the trained projector, the synthetic \"How many beeps?\" multiple-choice task (two or five "
            f"beeps, chance 0.5), {result['test_clips']} held-out test clips scored greedily by `audiotune eval "
            f"--task mcq`. SFT: batch 8, lr {SFT_LR}, 3 warm-up steps. GRPO from the SFT adapter: 4 prompts × 8 completions per "
            f"step, accuracy reward, lr {opts.grpo_lr}, β {opts.beta} (reference: the SFT adapter's frozen copy), "
            f"temperature "
            f"1, at most 3 new tokens. Mean reward over GRPO's first vs last quarter of "
            f"steps: {result['grpo_reward_first_quarter']:.3f} → {result['grpo_reward_last_quarter']:.3f}.\n\n"
            f"{table}\n\nTarget (GRPO above the supervised adapter it starts from): "
            f"{'met' if result['accuracy']['grpo'] > result['accuracy']['sft'] else 'not met'} "
            f"({result['accuracy']['sft']:.3f} → {result['accuracy']['grpo']:.3f}). Continuing supervised training "
            f"for as many steps gives {result['accuracy']['sft_continued']:.3f}: where every row has its exact answer, "
            "supervision is the cheaper signal; GRPO is for tasks where only a verifier exists. GSPO and DAPO use "
            "docs/rl.md's recipes: GSPO one ratio per completion, 2 iterations per rollout, clip 3e-4 / 4e-4, β 0; "
            "DAPO the token-level loss, dynamic sampling, overlong filtering, clip higher 0.28, β 0 (dynamic "
            f"sampling dropped {result['dapo_dropped_groups']:.2f} of the 4 groups (all-equal rewards) and drew "
            f"{result['dapo_draws']:.2f} extra prompt batches per step).\n")
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.DOTALL)
    kept = re.search(re.escape(ROLLOUT_SECTION) + r".*?(?=\n## |\n### |\Z)", text, re.DOTALL)  # its own writer's
    body = body.rstrip("\n") + ("\n\n" + kept.group(0).rstrip("\n") if kept else "")
    text = pattern.sub(lambda _: body, text) if SECTION in text else text.rstrip("\n") + "\n\n" + body
    path.write_text(text if text.endswith("\n") else text + "\n")


def write_rollout_section(table: str, result: dict, opts) -> None:
    """The GRPO section's rollout subsection, replaced in place (or added at the section's end)."""
    from datetime import date

    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    text = path.read_text()
    vllm, speed = result["backends"]["vllm"], result["speedup"]
    target = "met" if speed["sampling"] >= 2 else "not met"
    body = (f"{ROLLOUT_SECTION}\n\nMeasured {date.today()} with `python benchmarks/bench_rl.py --rollouts-only "
            f"--write` (part of `make rl-bench`) on {result['machine']} (1-minute load average "
            f"{result['load_average']:.1f} when it ended). The default tiny AF3, a fresh "
            f"LM-only LoRA (r=16), the same {result['prompts']} prompts × a group of {result['group']}, "
            f"{result['tokens']} new tokens at temperature 1. Sampling: the call GRPO makes, timed over "
            f"{result['repeats']} calls each after a warm-up, the backends alternated (vLLM: server started and "
            f"adapter synced before the clock: {vllm['server_start_s']:.0f} s and {vllm['adapter_sync_s']:.2f} s). "
            f"GRPO step: the median of the steps after the first in two alternated `train()` runs of "
            f"{result['steps']} steps each way (vLLM's include the per-step adapter sync; its first step starts the "
            f"server).\n\n{table}\n\nvLLM vs native: **{speed['sampling']:.2f}×** completions/s, "
            f"{speed['step']:.2f}× per GRPO step. Target (vLLM rollouts ≥ 2× native at group size ≥ 8): "
            f"{target}. On this CPU vLLM computes on one of the two cores (it keeps the other for its engine's "
            "scheduling, `VLLM_CPU_OMP_THREADS_BIND=auto`) where HF `generate` uses both, and its fixed costs per "
            "decode step (scheduling, sampling with log-probabilities, the OpenAI server, the audio processor per "
            "request) weigh against a tiny model's steps; what vLLM saves (padding, recomputation, memory: paged "
            "attention and continuous batching) is what a large model on a GPU gains. On a loaded machine the ratio "
            "moves a lot: see docs/rl.md for the spread.\n")
    pattern = re.compile(re.escape(ROLLOUT_SECTION) + r".*?(?=\n## |\n### |\Z)", re.DOTALL)
    if ROLLOUT_SECTION in text:
        text = pattern.sub(lambda _: body.rstrip("\n") + "\n", text)
    else:
        grpo = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.DOTALL)
        text = grpo.sub(lambda m: m.group(0).rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n", text)
    path.write_text(text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    main()
