"""The GPU check (#23): AF3 at its real size, random weights, trained for a few steps through ``audiotune train``'s
own path; the guide's LoRA recipe vs audiotune's defaults, packing off and on; one table.

Every figure in BENCHMARKS.md's training section is CPU-only, on a tiny AF3. This script is the first look at the
real thing, prepared so that one short GPU session is enough (no download there: see ``benchmarks/gpu_wheels.sh``):

- **the model**: ``nvidia/audio-flamingo-3-hf``'s architecture as audiotune ships it (``models/published/``: a
  Whisper-large-v3-style encoder and Qwen2.5-7B), built directly on the device in bf16 with random weights. Its
  processor is the tiny AF3's (the published processor files with a small trained tokenizer: the real tokenizer is
  not shipped), so the token ids are the tiny's and the vocabulary, hence the LM head's compute, is the real one.
  The only substitution in the train path is that the weights are built instead of read
  (``audiotune.train.load_base_model`` is replaced for the run); data, collator, LoRA, Trainer and packing are
  audiotune's.
- **the arms**: the guide's LoRA recipe (r=16, alpha 32, dropout 0.05 on q/k/v/o/gate/up/down, which also reach the
  encoder's q/k/v, with gradient checkpointing; ``shared/reference/workflow.md`` step 5-6) and audiotune's defaults
  (LoRA on the LM only, frozen encoder, audio-embedding cache, no checkpointing), each with ``packing`` off and on.
  Same clips (1-10 s synthetic captions, each seen once), batch, learning rate and steps; attention: flash-attention
  2 when ``flash_attn`` is installed, else PyTorch's SDPA.
- **the columns**: optimiser steps/s and real (non-padding) tokens/s after the warm-up steps; peak memory (CUDA:
  ``max_memory_reserved``, what the card had to hold; CPU: the process's peak RSS, cumulative over the arms) next to
  ``audiotune plan``'s estimate for the same batch, targets, checkpointing and longest clip; model FLOP utilisation
  (``bench_training.analytic_flops`` per sample × samples/s, over a dense matmul's FLOP/s measured on the same device
  in the same dtype).

``--device cpu --tiny`` runs the same code on the micro AF3 in float32 (tests/test_gpu_check.py), so it cannot rot.

Usage: python benchmarks/gpu_check.py [--device cuda] [--tiny] [--steps 12] [--warmup 2] [--batch 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))

PUBLISHED = "nvidia--audio-flamingo-3-hf.json"
COLUMNS = ("arm", "packing", "steps/s", "tokens/s", "peak memory (GB)", "plan (GB)", "MFU (%)")


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    guide: bool  # the guide's LoRA recipe (else audiotune's defaults)
    packing: bool


ARMS = (Arm("guide LoRA recipe", True, False), Arm("guide LoRA recipe", True, True),
        Arm("audiotune defaults", False, False), Arm("audiotune defaults", False, True))


def real_size_folder(tiny: Path, out: Path) -> Path:
    """A checkpoint folder without weights: the tiny AF3's processor files and the published architecture, with the
    tiny tokenizer's special-token ids (its vocabulary is a prefix of the real size, so every id is in range)."""
    from audiotune.plan import PUBLISHED_DIR

    out.mkdir(parents=True, exist_ok=True)
    for path in tiny.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name != "config.json":
            shutil.copyfile(path, out / path.name)
    tiny_config = json.loads((tiny / "config.json").read_text())
    config = {k: v for k, v in json.loads((PUBLISHED_DIR / PUBLISHED).read_text()).items() if not k.startswith("_")}
    config["audio_token_id"] = tiny_config["audio_token_id"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config["text_config"][key] = tiny_config["text_config"].get(key)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def attention_implementation(device: str) -> str:
    """flash-attention 2 where its package is installed on a GPU, else SDPA (PyTorch's, always there)."""
    import importlib.util

    return "flash_attention_2" if device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"


def random_weights_loader(device: str, attention: str):
    """A stand-in for ``audiotune.models.loading.load_base_model`` with its signature: the model from the folder's
    config, built directly on ``device`` in the requested dtype with random weights (no checkpoint to read)."""
    import torch
    import transformers
    from transformers import AutoConfig

    from audiotune.errors import ConfigError
    from audiotune.models.loading import resolve_family

    def load(model_id_or_path, dtype=torch.float32, device_=None, quantize_lm_4bit: bool = False, family=None,
             **kwargs):
        if quantize_lm_4bit:
            raise ConfigError("gpu_check builds random bf16 weights; QLoRA's 4-bit load is not part of it.")
        family = family or resolve_family(str(model_id_or_path))
        config = AutoConfig.from_pretrained(str(model_id_or_path))
        model_class = getattr(transformers, family.model_class)
        torch.manual_seed(0)
        with torch.device(device):
            model = model_class._from_config(config, dtype=dtype,
                                             attn_implementation=kwargs.get("attn_implementation", attention))
        return model, family

    return load


def step_clock(device: str):
    """A TrainerCallback recording the wall time at the end of each optimiser step (after the device finishes)."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        times: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    return Clock()


def data_shape(folder: Path, data: Path, clips: int) -> dict[str, float]:
    """Mean real tokens and encoder windows per training sample, and the longest clip's seconds and text tokens,
    as audiotune's collator makes them (the same for every arm: padding and packing change neither)."""
    from audiotune.config import DataConfig
    from audiotune.data.collator import ConversationCollator
    from audiotune.data.prepare import prepare_split
    from audiotune.models.loading import load_processor, resolve_family

    family = resolve_family(str(folder))
    rows, build = prepare_split(DataConfig(dataset=str(data)), "train", family)
    examples = [build(rows[i], i) for i in range(clips)]
    collate = ConversationCollator(load_processor(str(folder)), family)
    tokens = windows = 0.0
    longest = (0.0, 0.0)
    for example in examples:
        batch = collate([example])
        real = float(batch["attention_mask"].sum())
        tokens += real
        windows += batch["input_features"].shape[0]
        seconds = len(example.audios()[0]) / family.sampling_rate
        longest = max(longest, (seconds, real - family.audio_tokens(seconds)))
    return {"tokens": tokens / clips, "windows": windows / clips, "seconds": longest[0],
            "text_tokens": max(1.0, longest[1])}


def arm_config(arm: Arm, folder: Path, data: Path, out: Path, opts, clips: int):
    """The arm's TrainConfig: the guide's LoRA recipe or audiotune's defaults, ``--packing`` off or on."""
    from audiotune.models.family import GUIDE_LORA_TARGETS
    from audiotune.train_config import TrainConfig

    values: dict[str, Any] = dict(
        model=str(folder), dataset=str(data), output_dir=str(out), train_take=clips, eval_split=None,
        eval_generate_take=0, per_device_train_batch_size=opts.batch, gradient_accumulation_steps=1,
        learning_rate=1e-4, max_steps=opts.steps, save_steps=10**6, logging_steps=10**6, seed=0,
        bf16=opts.device == "cuda", use_cpu=opts.device == "cpu", disable_tqdm=True, report_to="none")
    if arm.guide:
        values.update(lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_targets=list(GUIDE_LORA_TARGETS),
                      activation_checkpointing=True)
    if arm.packing:
        values["packing"] = True
    return TrainConfig.from_flat(**values)


def peak_memory_gb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_reserved() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def plan_gb(arm: Arm, folder: Path, opts, shape: dict[str, float]) -> float:
    """``audiotune plan``'s total for this arm's batch, LoRA targets and checkpointing, at the longest clip."""
    from audiotune.models.family import GUIDE_LORA_TARGETS
    from audiotune.plan import make_plan

    plan = make_plan(str(folder), mode="lora", batch=opts.batch, audio_seconds=shape["seconds"],
                     text_tokens=int(shape["text_tokens"]), lora_r=16,
                     lora_targets=list(GUIDE_LORA_TARGETS) if arm.guide else None)
    return next(row.total_gb for row in plan.memory if row.gradient_checkpointing == arm.guide)


def run_arm(arm: Arm, folder: Path, data: Path, out: Path, opts, clips: int, shape: dict[str, float],
            flops_config, peak_flops: float, attention: str) -> dict[str, Any]:
    """One arm through ``audiotune.train.train``: its measurements."""
    import gc

    import torch

    import audiotune.train
    from bench_training import analytic_flops

    row: dict[str, Any] = {"arm": arm.name, "packing": "on" if arm.packing else "off"}
    cfg = arm_config(arm, folder, data, out, opts, clips)
    if opts.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    clock = step_clock(opts.device)
    with mock.patch.object(audiotune.train, "load_base_model", random_weights_loader(opts.device, attention)):
        audiotune.train.train(cfg, callbacks=[clock])
    times = clock.times[opts.warmup - 1:] if opts.warmup else clock.times
    steps_per_s = (len(times) - 1) / (times[-1] - times[0])
    samples_per_s = steps_per_s * opts.batch
    flops = analytic_flops(flops_config, shape["tokens"], shape["windows"], encoder_backward=arm.guide)
    row.update({"steps/s": steps_per_s, "tokens/s": samples_per_s * shape["tokens"],
                "peak memory (GB)": peak_memory_gb(opts.device), "plan (GB)": plan_gb(arm, folder, opts, shape),
                "MFU (%)": 100 * (flops["encoder"] + flops["lm"]) * samples_per_s / peak_flops})
    gc.collect()
    if opts.device == "cuda":
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [row["arm"], row["packing"]] + [f"{row[c]:.3g}" if row[c] < 100 else f"{row[c]:.0f}"
                                                 for c in COLUMNS[2:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="The micro AF3 instead of the real size (CPU check).")
    parser.add_argument("--steps", type=int, default=12, help="Optimiser steps per arm.")
    parser.add_argument("--warmup", type=int, default=2, help="Steps left out of the rates (compilation, caches).")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", default=None, help="Also write the rows here.")
    opts = parser.parse_args(argv)
    if opts.steps - opts.warmup < 2:
        parser.error("--steps must exceed --warmup by at least 2 (a rate needs two step ends).")

    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    import datasets
    from audiotune.data.synthetic import write_synthetic_audiocaps
    from audiotune.models.tiny import build_tiny
    from bench_training import matmul_peak

    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; pass --device cpu (with --tiny) for the CPU check.")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    clips = opts.steps * opts.batch  # every clip once: the embedding cache never hits, as in a first epoch
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = build_tiny("af3", root / "micro-af3", seed=0, preset="micro")
        folder = tiny if opts.tiny else real_size_folder(tiny, root / "af3-real-size")
        data = root / "data"
        write_synthetic_audiocaps(data, n_clips=math.ceil(clips / 0.8) + 1, seed=4, min_seconds=1.0,
                                  max_seconds=10.0)
        shape = data_shape(folder, data, clips)
        dtype = torch.bfloat16 if opts.device == "cuda" else torch.float32
        peak = matmul_peak(opts.device, dtype, n=8192 if opts.device == "cuda" else 512)
        attention = attention_implementation(opts.device)
        flops_config = AutoConfig.from_pretrained(str(folder))
        rows = [run_arm(arm, folder, data, root / f"arm{i}", opts, clips, shape, flops_config, peak, attention)
                for i, arm in enumerate(ARMS)]
    device = torch.cuda.get_device_name() if opts.device == "cuda" else "CPU"
    print(f"AF3 {'micro (tiny)' if opts.tiny else 'real size (published architecture), random weights'} on {device}, "
          f"{str(dtype).removeprefix('torch.')}, attention {attention}, torch {torch.__version__}; batch {opts.batch}, "
          f"{opts.steps} steps per arm ({opts.warmup} warm-up not timed); {shape['tokens']:.0f} real tokens and "
          f"{shape['windows']:.2f} encoder windows per sample; dense matmul peak {peak / 1e12:.3g} TFLOP/s.\n")
    print(table(rows))
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
