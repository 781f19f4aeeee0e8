"""Training: the guide's workflow (shared/reference/workflow.md, verbatim apart from paths and sizes) vs
``audiotune train`` on the same tiny AF3 and clips, same batch size, accumulation, learning rate and steps.

Each variant runs in its own process (so peak RSS is its own), alternated; reported per epoch: samples/s,
peak RSS, and a final eval loss computed the same way for both (assistant tokens only, same eval rows).
Also: model FLOPs per sample (analytic) and the achieved FLOP/s against this CPU's dense matmul peak.

Usage: python benchmarks/bench_training.py VARIANT DATA MODEL OUT  (prints one JSON line)
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN_CLIPS, EVAL_CLIPS, BATCH, ACCUMULATION, EPOCHS = 32, 16, 4, 2, 2
STEPS_PER_EPOCH = TRAIN_CLIPS // (BATCH * ACCUMULATION)


class _StepClock:
    """Wall time at the end of each optimiser step (a TrainerCallback, added to both variants)."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.times = [time.perf_counter()]

            def on_step_end(self, args, state, control, **kwargs):
                clock.times.append(time.perf_counter())

        self.callback = Callback()
        self.times: list[float] = []

    def epochs(self) -> list[float]:
        marks = self.times[::STEPS_PER_EPOCH]
        return [TRAIN_CLIPS / (b - a) for a, b in zip(marks, marks[1:])]


def run_guide(data: str, model_path: str, out: str) -> dict:
    import torch
    from datasets import Audio, load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor, Trainer, TrainingArguments

    processor = AutoProcessor.from_pretrained(model_path)
    dataset = load_dataset(data, split="train", streaming=True).cast_column("audio", Audio(sampling_rate=16000))
    train_dataset = dataset.take(TRAIN_CLIPS)
    eval_dataset = dataset.skip(TRAIN_CLIPS).take(EVAL_CLIPS)

    def collate(rows):
        conversations = [[
            {"role": "user", "content": [{"type": "text", "text": "Describe the audio."},
                                         {"type": "audio", "audio": row["audio"]["array"]}]},
            {"role": "assistant", "content": [{"type": "text", "text": row["caption"]}]},
        ] for row in rows]
        return processor.apply_chat_template(conversations, tokenize=True, add_generation_prompt=False,
                                             return_dict=True, output_labels=True)

    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32)  # bf16 on GPU
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
                             gradient_accumulation_steps=ACCUMULATION, learning_rate=1e-4,
                             max_steps=STEPS_PER_EPOCH * EPOCHS, bf16=False, logging_steps=10, eval_steps=100,
                             save_steps=250, save_total_limit=2, save_only_model=True, eval_strategy="steps",
                             save_strategy="steps", remove_unused_columns=False, dataloader_num_workers=0,
                             gradient_checkpointing=True, report_to="none", use_cpu=True, disable_tqdm=True)
    clock = _StepClock()
    Trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=collate,
            callbacks=[clock.callback]).train()
    return {"epochs": clock.epochs(), "eval_loss": common_eval_loss(model, processor, data)}


def run_audiotune(data: str, model_path: str, out: str, checkpointing: bool = False, compile_: bool = False) -> dict:
    from audiotune.train_config import TrainConfig
    from audiotune.models.loading import load_processor
    from audiotune.train import train

    clock = _StepClock()
    captured = {}

    class Keep:  # grab the trained model for the common eval loss
        def __init__(self):
            from transformers import TrainerCallback

            class Callback(TrainerCallback):
                def on_train_end(self, args, state, control, model=None, **kwargs):
                    captured["model"] = model

            self.callback = Callback()

    keep = Keep()
    train(TrainConfig.from_flat(model=model_path, dataset=data, output_dir=out, train_take=TRAIN_CLIPS, eval_split=None,
                      eval_take=EVAL_CLIPS, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
                      gradient_accumulation_steps=ACCUMULATION, learning_rate=1e-4,
                      max_steps=STEPS_PER_EPOCH * EPOCHS, eval_steps=100, save_steps=250, logging_steps=10,
                      eval_generate_take=0, audio_cache="memory", activation_checkpointing=checkpointing,
                      torch_compile=compile_),
          callbacks=[clock.callback, keep.callback])
    return {"epochs": clock.epochs(), "eval_loss": common_eval_loss(captured["model"], load_processor(model_path), data)}


def assistant_loss(model, collate, examples: list, batch_size: int) -> float:
    """Mean next-token loss over the assistant tokens of ``examples``, in padded batches of ``batch_size``: the eval
    loss both training benchmarks report (bench_packing's too)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            inputs = collate(examples[start:start + batch_size])
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits[:, :-1]
            labels = inputs["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((labels != -100).sum())
    return total / count


def common_eval_loss(model, processor, data: str) -> float:
    """Mean loss over the assistant tokens of the eval rows (the guide's skip/take), the same for both."""
    from audiotune.config import DataConfig
    from audiotune.data.collator import ConversationCollator
    from audiotune.data.prepare import prepare_split
    from audiotune.models.families import AUDIO_FLAMINGO_3
    from audiotune.models.loading import offline_facts

    af3 = offline_facts(AUDIO_FLAMINGO_3)  # the data code reads its rate, window and audio tokens
    rows, build = prepare_split(DataConfig(dataset=data), "train", af3)
    examples = [build(rows[i], i) for i in range(TRAIN_CLIPS, TRAIN_CLIPS + EVAL_CLIPS)]
    collate = ConversationCollator(processor, af3, training=True)
    return assistant_loss(model, collate, examples, BATCH)


def analytic_flops(config, tokens: float, windows: float, encoder_backward: bool = False) -> dict:
    """Model FLOPs of one AF3 training sample (the MFU numerator, here and in ``gpu_check.py``): the encoder's
    forward over ``windows`` 30 s windows (twice more when gradients flow back through it: LoRA in the encoder or a
    trained tower) + the LM's forward and activation backward over ``tokens`` (LoRA's own weight gradients are
    negligible). Recomputation by activation checkpointing is not model work, so it does not count."""
    enc, txt = config.audio_config, config.text_config
    positions = 1500
    encoder = (enc.num_hidden_layers * (24 * enc.hidden_size**2 * positions + 4 * positions**2 * enc.hidden_size)
               + 2 * 3 * (enc.num_mel_bins * enc.hidden_size * 3000 + enc.hidden_size**2 * positions))
    kv = txt.num_key_value_heads * (txt.hidden_size // txt.num_attention_heads)
    per_token = 2 * (txt.num_hidden_layers * (2 * txt.hidden_size**2 + 2 * txt.hidden_size * kv
                                              + 3 * txt.hidden_size * txt.intermediate_size)
                     + txt.hidden_size * txt.vocab_size)
    return {"encoder": encoder * windows * (3 if encoder_backward else 1), "lm": 2 * per_token * tokens,
            "tokens": tokens}


def model_flops_per_sample(model_path: str, data: str) -> dict:
    """:func:`analytic_flops` for this benchmark's clips: tokens and windows per sample as the collator makes them."""
    from transformers import AudioFlamingo3Config

    from audiotune.config import DataConfig
    from audiotune.data.collator import ConversationCollator
    from audiotune.data.prepare import prepare_split
    from audiotune.models.families import AUDIO_FLAMINGO_3
    from audiotune.models.loading import load_processor, offline_facts

    af3 = offline_facts(AUDIO_FLAMINGO_3)
    rows, build = prepare_split(DataConfig(dataset=data), "train", af3)
    batch = ConversationCollator(load_processor(model_path), af3)([build(rows[i], i) for i in range(TRAIN_CLIPS)])
    tokens = float(batch["attention_mask"].sum()) / TRAIN_CLIPS
    windows = batch["input_features"].shape[0] / TRAIN_CLIPS
    return analytic_flops(AudioFlamingo3Config.from_pretrained(model_path), tokens, windows)


def matmul_peak(device: str = "cpu", dtype=None, n: int = 1024) -> float:
    """Dense matmul FLOP/s on ``device`` in ``dtype`` (default float32), best of several: the MFU denominator
    measured, not a datasheet's (on the CPU, with torch's threads)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    torch.mm(a, b)
    best = 0.0
    for _ in range(5):
        sync()
        start = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        sync()
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - start))
    return best


def run(repeats: int = 2) -> dict:
    from audiotune.data.synthetic import write_synthetic_audiocaps
    from audiotune.models.tiny import build_tiny

    results: dict[str, list[dict]] = {"guide": [], "audiotune": [], "audiotune-gc": [], "audiotune-compile": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_synthetic_audiocaps(data, n_clips=60, seed=4)
        model = build_tiny("af3", Path(tmp) / "tiny")
        for repeat in range(repeats):
            for variant in results:
                done = subprocess.run([sys.executable, __file__, variant, str(data), str(model),
                                       str(Path(tmp) / f"{variant}-{repeat}")], capture_output=True, text=True,
                                      timeout=1800)
                if done.returncode:
                    raise RuntimeError(f"{variant} failed: {done.stderr[-3000:]}")
                results[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
        flops = model_flops_per_sample(str(model), str(data))
    peak = matmul_peak()
    summary = {}
    for variant, runs in results.items():
        summary[variant] = {
            "epoch1": statistics.median(r["epochs"][0] for r in runs),
            "epoch2": statistics.median(r["epochs"][1] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "eval_loss": statistics.median(r["eval_loss"] for r in runs),
        }
    per_sample = flops["encoder"] + flops["lm"]
    return {"variants": summary, "repeats": repeats, "flops_per_sample": per_sample, "flops": flops,
            "peak_flops": peak, "utilisation_epoch1": per_sample * summary["audiotune"]["epoch1"] / peak,
            # epoch 2 of audiotune's variants reads the encoder's output from the audio cache: the LM's work only
            "utilisation": {variant: {"epoch1": per_sample * summary[variant]["epoch1"] / peak,
                                      "epoch2": (per_sample if variant == "guide" else flops["lm"])
                                      * summary[variant]["epoch2"] / peak} for variant in summary},
            "ratio_epoch1": summary["audiotune"]["epoch1"] / summary["guide"]["epoch1"],
            "ratio_epoch2": summary["audiotune"]["epoch2"] / summary["guide"]["epoch2"]}


if __name__ == "__main__":
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    variant, data_dir, model_dir, out_dir = sys.argv[1:5]
    if variant == "guide":
        result = run_guide(data_dir, model_dir, out_dir)
    else:
        result = run_audiotune(data_dir, model_dir, out_dir, checkpointing=variant == "audiotune-gc",
                               compile_=variant == "audiotune-compile")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))
