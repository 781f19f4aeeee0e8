"""GRPO on a verifiable task: does it raise held-out accuracy above the supervised adapter it starts from?

On the tiny AF3 (default preset) and the synthetic "How many beeps?" multiple-choice task
(``audiotune.data.synthetic_rl``): a short supervised run (``audiotune train --task mcq``), then GRPO from that
adapter (``--method grpo --init-adapter``, accuracy reward), each scored by ``audiotune eval --task mcq`` on the
same held-out test clips (greedy). For a fair comparison the supervised run is also continued for as many steps
as GRPO took ("SFT, continued"). Prints a markdown table and a JSON line; ``--write`` puts the table into
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


def accuracy(model: str, data: str, adapter: str, out: str) -> float:
    from audiotune.evaluate import EvalConfig, run_evaluation

    report = run_evaluation(EvalConfig(model=model, dataset=data, out=out, adapters=[adapter], split="test",
                                       task="mcq", batch_size=16, max_new_tokens=8, with_meteor=False))
    return float(report.models[0].metrics["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/bench-rl")
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--grpo-steps", type=int, default=40)
    parser.add_argument("--write", action="store_true", help="Update the GRPO section of BENCHMARKS.md.")
    opts = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    import datasets
    from audiotune.config import TrainConfig
    from audiotune.data.synthetic_rl import write_beep_count_dataset
    from audiotune.models.tiny import build_tiny
    from audiotune.train import train

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    torch.manual_seed(0)
    root = Path(opts.out)
    model = str(build_tiny("af3", root / "tiny-af3", seed=0))
    data = root / "beeps"
    if not (data / "data").exists():
        write_beep_count_dataset(data, n_clips=opts.clips, seed=0)
    common = dict(model=model, dataset=str(data), task="mcq", eval_take=8, eval_generate_take=0, logging_steps=5,
                  seed=0, save_steps=10_000)

    timings: dict[str, float] = {}
    start = time.perf_counter()
    sft = train(TrainConfig(**common, out=str(root / "sft"), batch_size=8, gradient_accumulation_steps=1,
                            learning_rate=3e-3, warmup_steps=3, max_steps=opts.sft_steps))
    timings["sft"] = time.perf_counter() - start
    start = time.perf_counter()
    grpo = train(TrainConfig(**common, out=str(root / "grpo"), method="grpo", init_adapter=str(sft.out_dir),
                             batch_size=4, gradient_accumulation_steps=1, num_generations=8, max_completion_length=4,
                             learning_rate=2e-3, warmup_steps=0, max_steps=opts.grpo_steps, beta=0.0,
                             temperature=1.0))
    timings["grpo"] = time.perf_counter() - start
    start = time.perf_counter()
    more = train(TrainConfig(**common, out=str(root / "sft-continued"), init_adapter=str(sft.out_dir), batch_size=8,
                             gradient_accumulation_steps=1, learning_rate=3e-3, max_steps=opts.grpo_steps))
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
            f"{result['machine']}; the machine was shared with other jobs, so times are upper bounds. Tiny AF3 "
            f"(default preset), the synthetic \"How many beeps?\" multiple-choice task (2–5 beeps, 4 choices, chance "
            f"0.25), {result['test_clips']} held-out test clips scored greedily by `audiotune eval --task mcq`. SFT: "
            f"batch 8, lr 3e-3. GRPO from the SFT adapter: 4 prompts × 8 completions per step, accuracy reward, "
            f"lr 2e-3, β 0, temperature 1, at most 4 new tokens. Mean reward over GRPO's first vs last quarter of "
            f"steps: {result['grpo_reward_first_quarter']:.3f} → {result['grpo_reward_last_quarter']:.3f}.\n\n"
            f"{table}\n")
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.DOTALL)
    text = pattern.sub(body.rstrip("\n"), text) if SECTION in text else text.rstrip("\n") + "\n\n" + body
    path.write_text(text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    main()
