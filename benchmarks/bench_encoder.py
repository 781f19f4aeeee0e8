"""When does training the audio encoder pay? LM-only LoRA vs encoder LoRA vs the whole encoder, on a task whose
distinguishing detail a frozen encoder blurs.

The task (synthetic, written here): each 1.5 s clip holds a few 40 ms chirps over faint noise; the label is their
direction, ``rising`` (500 → 3000 Hz) or ``falling`` (3000 → 500 Hz). Both classes put the same energy into the
same mel bins over a chirp: they differ only in the order of the bins within 40 ms. AF3's encoder hands the language
model one token per 40 ms (its stride-2 convolution and 2× average pooling over 10 ms mel frames), so after a random
frozen encoder the direction survives only as whatever its untrained filters happen to mix into that average; a
trained first convolution (its 30 ms kernel sees the order) can make it explicit before the pooling.

The three arms train from the same tiny AF3 (micro preset: a random encoder, the stand-in for "features that were
never trained on this"), with the same seed, data order, steps, batch and learning rate (the whole tower's own,
lower: ``FULL_ENCODER_LR``); the projector trains in every arm (``--train-projector``) and LoRA covers the LM head
(as in bench_rl.py), so the LM-only arm has a trained linear read-out of the frozen features and any gain of the
encoder arms is the encoder's own. Held-out accuracy: ``audiotune eval --task classify`` (greedy) on
test clips no arm saw; chance is 0.5.

Usage: python benchmarks/bench_encoder.py [--out runs/bench-encoder] [--steps 60] [--write]   (``make encoder-bench``)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np

SECTION = "## Training the audio encoder"
RATE = 16000
LABELS = ("rising", "falling")
ARMS = {"LM-only LoRA (encoder frozen)": "none", "encoder LoRA": "lora", "full encoder": "full"}
# LoRA on the LM's linears and its head (bench_rl.py's finding: the micro model's head is too small to move without it).
WITH_HEAD = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head"
FULL_ENCODER_LR = 1e-3  # a whole tower under Adam at the LoRA rate (1e-2) moves every weight 1% per step


def chirp_clip(label: str, rng: np.random.Generator, seconds: float = 1.5, chirp_ms: float = 40.0,
               low: float = 500.0, high: float = 3000.0) -> np.ndarray:
    """``seconds`` of faint noise with 3–5 short chirps of ``label``'s direction at random, non-overlapping times."""
    n, m = int(seconds * RATE), int(chirp_ms / 1000 * RATE)
    wave = 0.003 * rng.standard_normal(n)
    t = np.arange(m) / RATE
    f0, f1 = (low, high) if label == "rising" else (high, low)
    chirp = 0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))
    chirp *= np.hanning(m) ** 0.25  # soft edges: no click marks either end
    slots = rng.choice(n // (2 * m), size=int(rng.integers(3, 6)), replace=False)
    for slot in slots:
        start = int(slot * 2 * m + rng.integers(0, m))
        wave[start:start + m] += chirp * rng.uniform(0.6, 1.0)
    return wave.astype(np.float32)


def write_chirp_dataset(out_dir: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """``out_dir/data/{train,test}-00000-of-00001.parquet`` with ``audio`` and ``label`` (balanced, shuffled)."""
    from datasets import Audio, Dataset, Features, Value

    from audiotune.audio import encode_audio

    rng = np.random.default_rng(seed)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    features = Features({"id": Value("string"), "audio": Audio(), "label": Value("string")})
    for split, count in (("train", n_train), ("test", n_test)):
        labels = [LABELS[i % 2] for i in range(count)]
        rng.shuffle(labels)
        rows = {"id": [], "audio": [], "label": []}
        for i, label in enumerate(labels):
            rows["id"].append(f"{split}-{i}")
            rows["audio"].append({"bytes": encode_audio(chirp_clip(label, rng), RATE), "path": None})
            rows["label"].append(label)
        Dataset.from_dict(rows, features=features).to_parquet(str(out_dir / "data" / f"{split}-00000-of-00001.parquet"))


def accuracy(model: str, data: str, adapter: str, out: str) -> float:
    from audiotune.evaluate import EvalConfig, run_evaluation

    report = run_evaluation(EvalConfig.from_flat(model=model, dataset=data, out=out, adapters=[adapter], split="test",
                                                 task="classify", batch_size=16, max_new_tokens=4,
                                                 with_meteor=False))
    return float(report.models[0].metrics["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/bench-encoder")
    parser.add_argument("--preset", default="micro", help="Tiny AF3 preset (micro: minutes on 2 cores).")
    parser.add_argument("--train-clips", type=int, default=240)
    parser.add_argument("--test-clips", type=int, default=80)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--write", action="store_true", help="Update the encoder section of BENCHMARKS.md.")
    opts = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    import datasets
    from audiotune.models.tiny import build_tiny
    from audiotune.train import train
    from audiotune.train_config import TrainConfig

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    root = Path(opts.out)
    model = str(build_tiny("af3", root / f"{opts.preset}-af3", seed=0, preset=opts.preset))
    data = root / "chirps"
    if not (data / "data").exists():
        write_chirp_dataset(data, opts.train_clips, opts.test_clips)
    results = {}
    for name, mode in ARMS.items():
        start = time.perf_counter()
        run = train(TrainConfig.from_flat(
            model=model, dataset=str(data), task="classify", output_dir=str(root / mode), eval_split=None,
            eval_generate_take=0, per_device_train_batch_size=opts.batch, gradient_accumulation_steps=1,
            learning_rate=opts.lr, warmup_steps=5, max_steps=opts.steps, logging_steps=10, save_steps=100_000,
            seed=0, lora_targets=WITH_HEAD, train_projector=True, train_audio_encoder=mode, disable_tqdm=True,
            encoder_learning_rate=FULL_ENCODER_LR if mode == "full" else None))
        seconds = time.perf_counter() - start
        results[name] = {"mode": mode, "train_seconds": round(seconds, 1), "trainable": run.trainable_parameters,
                         "train_loss": run.train_loss,
                         "accuracy": accuracy(model, str(data), str(run.out_dir), str(root / f"eval-{mode}"))}
    result = {"arms": results, "preset": opts.preset, "steps": opts.steps, "batch": opts.batch, "lr": opts.lr,
              "train_clips": opts.train_clips, "test_clips": opts.test_clips,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"}
    table = "\n".join(["| arm | `--train-audio-encoder` | trainable parameters | train loss | train time (s) | "
                       "held-out accuracy |", "|---|---|---|---|---|---|"]
                      + [f"| {name} | {r['mode']} | {r['trainable']:,} | {r['train_loss']:.3f} | "
                         f"{r['train_seconds']:.0f} | **{r['accuracy']:.3f}** |" for name, r in results.items()])
    print(table)
    print(json.dumps(result))
    if opts.write:
        write_section(table, result)


def write_section(table: str, result: dict) -> None:
    """Replace (or append) BENCHMARKS.md's encoder section; ``benchmarks/run.py`` keeps it when it rewrites the
    rest."""
    from datetime import date

    arms = list(result["arms"].values())
    frozen, best = arms[0]["accuracy"], max(a["accuracy"] for a in arms[1:])
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    body = (f"{SECTION}\n\nMeasured {date.today()} with `make encoder-bench` (`benchmarks/bench_encoder.py`) on "
            f"{result['machine']}. Tiny AF3 ({result['preset']} preset, random weights), synthetic task: 1.5 s "
            "clips of 3–5 "
            "40 ms chirps, label `rising` or `falling` (the same mel bins either way; only their order within one "
            "40 ms encoder token differs), chance 0.5. Each arm: LoRA r=16 on the LM and its head plus the trained "
            f"projector (the full tower at lr {FULL_ENCODER_LR}), "
            f"{result['steps']} steps of batch {result['batch']}, lr {result['lr']}, seed 0, the same "
            f"{result['train_clips']} training clips; held-out accuracy by `audiotune eval --task classify` "
            f"(greedy) on {result['test_clips']} test clips.\n\n{table}\n\n"
            + (f"Training the encoder paid here: {frozen:.3f} with the encoder frozen vs {best:.3f} at best with it "
               "training." if best > frozen else
               f"Training the encoder did not pay here: {frozen:.3f} with the encoder frozen vs {best:.3f} at best "
               "with it training.")
            + " The encoder arms cost more per step: no audio-embedding cache, and the backward pass runs through "
              "the encoder.\n")
    text = path.read_text()
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.DOTALL)
    text = pattern.sub(lambda _: body.rstrip("\n"), text) if SECTION in text else text.rstrip("\n") + "\n\n" + body
    path.write_text(text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    main()
