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

Usage: python benchmarks/bench_rl.py [--out runs/bench-rl] [--write]   (``make rl-bench``)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

SECTION = "## GRPO on a verifiable task"
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
    model = str(build_tiny("af3", root / f"{opts.preset}-af3", seed=0, preset=opts.preset))
    data = root / "beeps"
    if not (data / "data").exists():
        write_beep_count_dataset(data, n_clips=opts.clips, seed=0, counts=COUNTS)
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
    start = time.perf_counter()
    grpo = train(TrainConfig.from_flat(**common, output_dir=str(root / "grpo"), method="grpo",
                                       init_adapter=str(sft.out_dir), per_device_train_batch_size=4,
                                       gradient_accumulation_steps=1, num_generations=8, max_completion_length=3,
                                       learning_rate=opts.grpo_lr, warmup_steps=0, max_steps=opts.grpo_steps,
                                       beta=opts.beta, temperature=1.0))
    timings["grpo"] = time.perf_counter() - start
    start = time.perf_counter()
    more = train(TrainConfig.from_flat(**common, output_dir=str(root / "sft-continued"), init_adapter=str(sft.out_dir),
                                       per_device_train_batch_size=8, gradient_accumulation_steps=1,
                                       learning_rate=SFT_LR, warmup_steps=3, max_steps=opts.grpo_steps))
    timings["sft_continued"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = {name: accuracy(model, str(data), str(run.out_dir), str(root / f"eval-{name}"))
              for name, run in (("sft", sft), ("grpo", grpo), ("sft_continued", more))}
    timings["eval"] = time.perf_counter() - start
    rewards = [h["reward"] for h in grpo.log_history if "reward" in h]
    quarter = max(1, len(rewards) // 4)
    result = {"accuracy": scores, "seconds": {k: round(v, 1) for k, v in timings.items()},
              "grpo_reward_first_quarter": sum(rewards[:quarter]) / quarter,
              "grpo_reward_last_quarter": sum(rewards[-quarter:]) / quarter,
              "test_clips": len(list((root / "eval-sft").glob("predictions.jsonl"))) and sum(
                  1 for _ in open(root / "eval-sft" / "predictions.jsonl")),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"}
    table = "\n".join([
        "| adapter | steps | train time (s) | held-out accuracy |", "|---|---|---|---|",
        f"| supervised (SFT) | {opts.sft_steps} | {timings['sft']:.0f} | {scores['sft']:.3f} |",
        f"| SFT → GRPO | {opts.sft_steps} + {opts.grpo_steps} | {timings['sft'] + timings['grpo']:.0f} | "
        f"**{scores['grpo']:.3f}** |",
        f"| SFT, continued | {opts.sft_steps} + {opts.grpo_steps} | {timings['sft'] + timings['sft_continued']:.0f} | "
        f"{scores['sft_continued']:.3f} |"])
    print(table)
    print(json.dumps(result))
    if opts.write:
        write_section(table, result, opts)


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
            "supervision is the cheaper signal; GRPO is for tasks where only a verifier exists.\n")
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.DOTALL)
    text = pattern.sub(body.rstrip("\n"), text) if SECTION in text else text.rstrip("\n") + "\n\n" + body
    path.write_text(text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    main()
