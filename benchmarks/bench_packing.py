"""Packing: ``audiotune train`` with padded batches vs ``--packing`` on a length-varied set (1–30 s clips, captions
of 3–60 words, as a real caption mix), same tiny AF3, same batches of examples, same steps.

Each variant runs in its own process, alternated; reported per epoch (epoch 2 reads the frozen encoder's embeddings
from the audio cache, so it shows the language model alone): training tokens/s (real tokens, padding excluded) and
samples/s; the padding fraction of the training batches (padding slots / all slots); and the eval loss of the
trained adapter on held-out rows, computed the same way for both (padded batches, assistant tokens only).

Usage: python benchmarks/bench_packing.py VARIANT DATA MODEL OUT  (prints one JSON line)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN_CLIPS, EVAL_CLIPS, BATCH, EPOCHS, MAX_LENGTH = 32, 16, 8, 2, 2048
SECONDS, WORDS = (1.0, 30.0), (3, 60)
STEPS_PER_EPOCH = TRAIN_CLIPS // BATCH


class _Counting:
    """The run's collator, counting real tokens and token slots of every batch it builds (all are training
    batches: the runs have no evaluation) and stamping each batch's end, for the per-epoch rates."""

    def __init__(self, inner):
        self.inner, self.real, self.slots, self.rows = inner, [], [], []

    def __call__(self, examples):
        batch = self.inner(examples)
        if "attention_mask" in batch:
            real = int(batch["attention_mask"].sum())
        else:  # packed: the collator's own count of the tokens it placed
            real = self.inner.tokens_built - sum(self.real)
        self.real.append(real)
        self.slots.append(int(batch["input_ids"].numel()))
        self.rows.append(int(batch["input_ids"].shape[0]))
        return batch


def run_variant(variant: str, data: str, model_path: str, out: str) -> dict:
    import torch
    from transformers import TrainerCallback

    import audiotune.train as recipe
    from audiotune.train_config import TrainConfig

    counting: list[_Counting] = []
    make = recipe.training_collator

    def counted(*args, **kwargs):
        counting.append(_Counting(make(*args, **kwargs)))
        return counting[-1]

    recipe.training_collator = counted
    times: list[float] = []
    captured = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

        def on_train_end(self, args, state, control, model=None, **kwargs):
            captured["model"] = model

    torch.manual_seed(0)
    recipe.train(TrainConfig.from_flat(
        model=model_path, dataset=data, output_dir=out, train_take=TRAIN_CLIPS, eval_split=None,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, learning_rate=3e-4,
        max_steps=STEPS_PER_EPOCH * EPOCHS, eval_steps=1000, save_steps=1000, logging_steps=1000, lora_dropout=0.0,
        eval_generate_take=0, audio_cache="memory", packing=variant == "packed", max_length=MAX_LENGTH, seed=0),
        callbacks=[Clock()])
    count = counting[-1]
    epochs = []
    for e in range(EPOCHS):
        seconds = times[(e + 1) * STEPS_PER_EPOCH] - times[e * STEPS_PER_EPOCH]
        real = sum(count.real[e * STEPS_PER_EPOCH:(e + 1) * STEPS_PER_EPOCH])
        epochs.append({"tokens_per_s": real / seconds, "samples_per_s": TRAIN_CLIPS / seconds})
    return {"epochs": epochs, "padding": 1 - sum(count.real) / sum(count.slots),
            "rows_per_batch": statistics.mean(count.rows), "eval_loss": eval_loss(captured["model"], model_path, data)}


def eval_loss(model, model_path: str, data: str) -> float:
    """Mean loss over the assistant tokens of the validation rows, padded batches: the same for both variants."""
    from bench_training import assistant_loss

    from audiotune.config import DataConfig
    from audiotune.data.collator import ConversationCollator
    from audiotune.data.prepare import prepare_split
    from audiotune.models.loading import load_processor, resolve_family

    family = resolve_family(model_path)
    rows, build = prepare_split(DataConfig(dataset=data), "validation", family)
    examples = [build(rows[i], i) for i in range(min(EVAL_CLIPS, len(rows)))]
    collate = ConversationCollator(load_processor(model_path), family, training=True)
    return assistant_loss(model, collate, examples, BATCH)


def run(repeats: int = 2) -> dict:
    from audiotune.data.synthetic import write_synthetic_audiocaps
    from audiotune.models.tiny import build_tiny

    results: dict[str, list[dict]] = {"padded": [], "packed": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        # train 80% (at least TRAIN_CLIPS), validation 20% (EVAL_CLIPS)
        write_synthetic_audiocaps(data, n_clips=5 * EVAL_CLIPS, seed=7, split_fractions=(0.8, 0.2, 0.0),
                                  min_seconds=SECONDS[0], max_seconds=SECONDS[1], caption_words=WORDS)
        model = build_tiny("af3", Path(tmp) / "tiny")
        for repeat in range(repeats):
            for variant in results:
                done = subprocess.run([sys.executable, __file__, variant, str(data), str(model),
                                       str(Path(tmp) / f"{variant}-{repeat}")], capture_output=True, text=True,
                                      timeout=1800)
                if done.returncode:
                    raise RuntimeError(f"{variant} failed: {done.stderr[-3000:]}")
                results[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {}
    for variant, runs in results.items():
        summary[variant] = {
            **{f"epoch{e + 1}_{k}": statistics.median(r["epochs"][e][k] for r in runs)
               for e in range(EPOCHS) for k in ("tokens_per_s", "samples_per_s")},
            "padding": statistics.median(r["padding"] for r in runs),
            "rows_per_batch": statistics.median(r["rows_per_batch"] for r in runs),
            "eval_loss": statistics.median(r["eval_loss"] for r in runs),
        }
    padded, packed = summary["padded"], summary["packed"]
    return {"variants": summary, "repeats": repeats,
            "ratios": {f"epoch{e + 1}": packed[f"epoch{e + 1}_samples_per_s"] / padded[f"epoch{e + 1}_samples_per_s"]
                       for e in range(EPOCHS)}}


def section(result: dict) -> list[str]:
    """The packing section of BENCHMARKS.md."""
    v, r = result["variants"], result["ratios"]
    lines = [
        f"## Packing (`--packing`, {TRAIN_CLIPS} clips of {SECONDS[0]:.0f}–{SECONDS[1]:.0f} s, captions of "
        f"{WORDS[0]}–{WORDS[1]} words)",
        "",
        f"`audiotune train` on the same tiny AF3 and clips, batch {BATCH} examples, {EPOCHS} epochs, padded batches "
        f"vs `--packing --max-length {MAX_LENGTH}` (each batch's examples end to end, first-fit; the same examples "
        f"per step; the language model attends one example at a time, models/packed_attention.py); each run in its "
        f"own process, alternated, median of {result['repeats']}. Tokens/s counts real "
        "tokens only. Epoch 2 reads the frozen encoder's embeddings from the audio cache (the language model alone); "
        "epoch 1 also runs the encoder over every clip's 30 s window, which packing does not change. Eval loss: "
        f"the same {EVAL_CLIPS} held-out rows, padded, assistant tokens only.",
        "",
        "| variant | padding | epoch 1 tokens/s | epoch 1 samples/s | epoch 2 tokens/s | epoch 2 samples/s "
        "| eval loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, x in v.items():
        lines.append(f"| {name} | {100 * x['padding']:.0f}% | {x['epoch1_tokens_per_s']:.0f} | "
                     f"{x['epoch1_samples_per_s']:.2f} | {x['epoch2_tokens_per_s']:.0f} | "
                     f"{x['epoch2_samples_per_s']:.2f} | {x['eval_loss']:.4f} |")
    lines += ["", f"- packed vs padded (samples/s): **{r['epoch1']:.2f}×** in epoch 1, **{r['epoch2']:.2f}×** in "
                  f"epoch 2 (target ≥ 1.5×); padding {100 * v['padded']['padding']:.0f}% → "
                  f"{100 * v['packed']['padding']:.0f}%, {v['packed']['rows_per_batch']:.1f} packed rows per batch of "
                  f"{BATCH}; the same eval loss both ways.",
              "- Why the tokens saved do not all turn into time here: see docs/training.md (\"What it gains\")."]
    return lines


if __name__ == "__main__":
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if sys.argv[1] == "--section":  # run it alone and print the BENCHMARKS.md section
        print("\n".join(section(run())))
        sys.exit(0)
    variant, data_dir, model_dir, out_dir = sys.argv[1:5]
    print(json.dumps(run_variant(variant, data_dir, model_dir, out_dir)))
