"""When does training the audio encoder pay? LM-only LoRA vs encoder LoRA vs the whole encoder, on synthetic tasks
whose distinguishing detail a frozen (here: random, never trained) encoder blurs.

Two designs (``--design``), each a two-class ``--task classify`` set written here:

- ``chirps`` (the first try): 1.5 s clips of 3–5 chirps of 40 ms, ``rising`` (500 → 3000 Hz) or ``falling``. Both
  classes fill the same mel bins; only their order within one 40 ms encoder token differs (AF3's stride-2
  convolution and 2× pooling over 10 ms mel frames hand the LM one token per 40 ms), so the direction survives only
  as whatever the untrained filters mix into that average.
- ``tone-in-noise`` (the second, better motivated): 1.5 s of loud noise whose spectral shape is random per clip, with
  a faint steady tone near 1000 Hz (``low``) or 1200 Hz (``high``). In the log-mel input the class is one bright bin
  among 128; the encoder's first convolution (a Conv1d: PEFT's LoRA here reaches only the encoder's linear layers,
  not it) maps 128 bins × 3 frames to the encoder width at random, so the noise's per-clip shape leaks into every
  feature the LM sees, and no later layer can separate what that projection mixed. Training the tower can aim the
  convolution at the bin; LoRA on the encoder's linears cannot.

The three arms train from the same tiny AF3 (micro preset, random weights), with the same seed, data order, steps,
batch and learning rate (the whole tower's own, lower: ``FULL_ENCODER_LR``); the projector trains in every arm
(``--train-projector``) and LoRA covers the LM head (as in bench_rl.py), so the LM-only arm has a trained read-out of
the frozen features and any gain of the encoder arms is the encoder's own. Held-out accuracy: ``audiotune eval
--task classify`` (greedy) on test clips no arm saw; chance is 0.5. Beside the arms, linear probes (logistic
regression on time-averaged log-mel input vs frozen encoder output) say whether the frozen features hold the class
at all, which separates "the encoder blurs it" from "the LM has not learned to read it yet".

Usage: python benchmarks/bench_encoder.py [--design tone-in-noise] [--out runs/bench-encoder] [--steps 60] [--write]
(``make encoder-bench``). ``--write`` puts a table for each design whose result is in ``--out`` into BENCHMARKS.md.
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
DESIGNS = {"chirps": ("rising", "falling"), "tone-in-noise": ("low", "high")}
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


def tone_in_noise_clip(label: str, rng: np.random.Generator, seconds: float = 1.5,
                       tone_db: float = -15.0) -> np.ndarray:
    """Noise with a random spectral shape (8 bumps of ±12 dB in log frequency) and a steady tone ``tone_db`` below
    the noise's power, near 1000 Hz (``low``) or 1200 Hz (``high``), its pitch jittered by ±20 Hz."""
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    log_f = np.log(np.fft.rfftfreq(n, 1 / RATE) + 50.0)
    centres = rng.uniform(np.log(100.0), np.log(7000.0), size=8)
    shape_db = (rng.normal(0.0, 12.0, size=8)[:, None] * np.exp(-0.5 * ((log_f - centres[:, None]) / 0.3) ** 2)).sum(0)
    noise = np.fft.irfft(spectrum * 10 ** (shape_db / 20), n)
    noise *= 0.1 / noise.std()
    freq = (1000.0 if label == "low" else 1200.0) + rng.uniform(-20.0, 20.0)
    phase = 2 * np.pi * freq * np.arange(n) / RATE + rng.uniform(0, 2 * np.pi)
    tone = np.sqrt(2) * 0.1 * 10 ** (tone_db / 20) * np.sin(phase)
    return (noise + tone).astype(np.float32)


def write_dataset(design: str, out_dir: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """``out_dir/data/{train,test}-00000-of-00001.parquet`` with ``audio`` and ``label`` (balanced, shuffled)."""
    from datasets import Audio, Dataset, Features, Value

    from audiotune.audio import encode_audio

    rng = np.random.default_rng(seed)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    features = Features({"id": Value("string"), "audio": Audio(), "label": Value("string")})
    for split, count in (("train", n_train), ("test", n_test)):
        labels = [DESIGNS[design][i % 2] for i in range(count)]
        rng.shuffle(labels)
        rows = {"id": [], "audio": [], "label": []}
        for i, label in enumerate(labels):
            rows["id"].append(f"{split}-{i}")
            clip = chirp_clip(label, rng) if design == "chirps" else tone_in_noise_clip(label, rng)
            rows["audio"].append({"bytes": encode_audio(clip, RATE), "path": None})
            rows["label"].append(label)
        Dataset.from_dict(rows, features=features).to_parquet(str(out_dir / "data" / f"{split}-00000-of-00001.parquet"))


def linear_probes(model: str, data: Path) -> dict[str, float]:
    """Held-out accuracy of a logistic regression on each clip's time-averaged log-mel input vs on the frozen
    encoder's time-averaged output: whether the class is linearly there before and after the untrained encoder,
    independently of how fast the LM learns to read it."""
    import io

    import pyarrow.parquet as pq
    import soundfile as sf
    import torch

    from audiotune.models.loading import load_model, load_processor, to_model_inputs

    processor = load_processor(model)
    base, family = load_model(model)
    tower = base.get_submodule(family.encoder_prefixes[0])
    features: dict[str, dict[str, torch.Tensor]] = {}
    for split in ("train", "test"):
        rows = pq.read_table(data / "data" / f"{split}-00000-of-00001.parquet").to_pylist()
        waves = [sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")[0] for row in rows]
        batch = processor.feature_extractor(waves, sampling_rate=RATE, return_tensors="pt",
                                            return_attention_mask=True)
        mask = batch["attention_mask"].float()
        mel = (batch["input_features"] * mask[:, None]).sum(-1) / mask.sum(-1, keepdim=True)
        with torch.no_grad():
            inputs = to_model_inputs(dict(batch), base)
            hidden = tower(inputs["input_features"], input_features_mask=inputs["attention_mask"]).last_hidden_state
        valid = mask[:, ::2][:, :hidden.shape[1]]
        encoded = (hidden * valid[..., None]).sum(1) / valid.sum(-1, keepdim=True)
        labels = torch.tensor([float(row["label"] == labels_of(data)[1]) for row in rows])
        features[split] = {"log-mel input": mel, "frozen encoder output": encoded, "labels": labels}
    return {name: _probe(features["train"][name], features["train"]["labels"], features["test"][name],
                         features["test"]["labels"]) for name in ("log-mel input", "frozen encoder output")}


def labels_of(data: Path) -> tuple[str, str]:
    return DESIGNS[data.name]


def _probe(x, y, x_test, y_test) -> float:
    """Logistic regression (standardised features, a little L2, L-BFGS); accuracy on the test rows."""
    import torch

    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y) + 1e-3 * weight.pow(2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        return float(((x_test @ weight + bias > 0).float() == y_test).float().mean())


def accuracy(model: str, data: str, adapter: str, out: str) -> float:
    from audiotune.evaluate import EvalConfig, run_evaluation

    report = run_evaluation(EvalConfig.from_flat(model=model, dataset=data, out=out, adapters=[adapter], split="test",
                                                 task="classify", batch_size=16, max_new_tokens=4,
                                                 with_meteor=False))
    return float(report.models[0].metrics["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--design", default="tone-in-noise", choices=tuple(DESIGNS))
    parser.add_argument("--out", default="runs/bench-encoder")
    parser.add_argument("--preset", default="micro", help="Tiny AF3 preset (micro: minutes on 2 cores).")
    parser.add_argument("--train-clips", type=int, default=240)
    parser.add_argument("--test-clips", type=int, default=80)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--write", action="store_true", help="Update the encoder section of BENCHMARKS.md.")
    parser.add_argument("--probes-only", action="store_true",
                        help="Add the linear probes to an earlier run's OUT/DESIGN.json (no training).")
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
    data = root / opts.design
    if not (data / "data").exists():
        write_dataset(opts.design, data, opts.train_clips, opts.test_clips)
    if opts.probes_only:
        saved = root / f"{opts.design}.json"
        result = {**json.loads(saved.read_text()), "probes": linear_probes(model, data)}
        saved.write_text(json.dumps(result, indent=1))
        print(json.dumps(result["probes"]))
        return
    results = {}
    for name, mode in ARMS.items():
        start = time.perf_counter()
        run = train(TrainConfig.from_flat(
            model=model, dataset=str(data), task="classify", output_dir=str(root / f"{opts.design}-{mode}"),
            eval_split=None,
            eval_generate_take=0, per_device_train_batch_size=opts.batch, gradient_accumulation_steps=1,
            learning_rate=opts.lr, warmup_steps=5, max_steps=opts.steps, logging_steps=10, save_steps=100_000,
            seed=0, lora_targets=WITH_HEAD, train_projector=True, train_audio_encoder=mode, disable_tqdm=True,
            encoder_learning_rate=FULL_ENCODER_LR if mode == "full" else None))
        seconds = time.perf_counter() - start
        results[name] = {"mode": mode, "train_seconds": round(seconds, 1), "trainable": run.trainable_parameters,
                         "train_loss": run.train_loss,
                         "accuracy": accuracy(model, str(data), str(run.out_dir),
                                                     str(root / f"eval-{opts.design}-{mode}"))}
    result = {"design": opts.design, "arms": results, "probes": linear_probes(model, data), "preset": opts.preset,
              "steps": opts.steps, "batch": opts.batch, "lr": opts.lr,
              "train_clips": opts.train_clips, "test_clips": opts.test_clips,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"}
    print(table(result))
    print(json.dumps(result))
    (root / f"{opts.design}.json").write_text(json.dumps(result, indent=1))
    if opts.write:
        write_section([json.loads((root / f"{d}.json").read_text()) for d in DESIGNS if (root / f"{d}.json").exists()])


def table(result: dict) -> str:
    return "\n".join(["| arm | `--train-audio-encoder` | trainable parameters | train loss | train time (s) | "
                      "held-out accuracy |", "|---|---|---|---|---|---|"]
                     + [f"| {name} | {r['mode']} | {r['trainable']:,} | {r['train_loss']:.3f} | "
                        f"{r['train_seconds']:.0f} | **{r['accuracy']:.3f}** |" for name, r in result["arms"].items()])


TASKS = {"chirps": "1.5 s clips of 3–5 chirps of 40 ms, `rising` or `falling` (the same mel bins either way; only "
                   "their order within one 40 ms encoder token differs)",
         "tone-in-noise": "1.5 s of loud noise with a random spectral shape per clip and a steady tone 15 dB below "
                          "it near 1000 Hz (`low`) or 1200 Hz (`high`): one bright mel bin among 128, designed so that "
                          "the encoder's random first convolution would mix it with the noise's shape"}


def write_section(results: list[dict]) -> None:
    """Replace (or append) BENCHMARKS.md's encoder section, one table per design measured; ``benchmarks/run.py``
    keeps it when it rewrites the rest."""
    from datetime import date

    first = results[0]
    lines = [SECTION, "", f"Measured {date.today()} with `make encoder-bench` (`benchmarks/bench_encoder.py "
             "--design ...`) on " f"{first['machine']}. Tiny AF3 ({first['preset']} preset, random weights: the "
             "stand-in for an encoder that never heard such sounds); each arm LoRA r=16 on the LM and its head plus "
             f"the trained projector (the full tower at lr {FULL_ENCODER_LR}), {first['steps']} steps of batch "
             f"{first['batch']}, lr {first['lr']}, seed 0, the same {first['train_clips']} training clips; held-out "
             f"accuracy by `audiotune eval --task classify` (greedy) on {first['test_clips']} test clips, chance "
             "0.5. `--train-audio-encoder lora` reaches the encoder's linear layers (attention, MLP), not its "
             "convolutional front end; `full` trains the whole tower."]
    for result in results:
        arms = list(result["arms"].values())
        frozen, best = arms[0]["accuracy"], max(a["accuracy"] for a in arms[1:])
        verdict = ("training the encoder paid" if best > frozen else "training the encoder did not pay")
        probes = result.get("probes")
        text = f"Here {verdict}: {frozen:.3f} with it frozen vs {best:.3f} at best with it training."
        if max(frozen, best) <= 0.55:
            text = (f"No arm rose above chance ({frozen:.3f} frozen, {best:.3f} at best training): none learned the "
                    f"task in {result['steps']} steps (each answers nearly one label for every clip), so this run "
                    "shows no gain from training the encoder, and no loss either.")
        if probes:
            text += (" Linear probes (logistic regression on time-averaged features, same clips): "
                     + ", ".join(f"{name} {value:.3f}" for name, value in probes.items()) + ".")
            if probes["frozen encoder output"] >= 0.75:
                text += (" The frozen encoder's output already carries the class linearly: it did not blur the "
                         "detail, and the bottleneck was the LM learning to read the audio, not the encoder.")
        lines += ["", f"**{result['design']}**: {TASKS[result['design']]}.", "", table(result), "", text]
    lines += ["", "The encoder arms cost more per step: no audio-embedding cache, and the backward pass runs through "
                  "the encoder."]
    body = "\n".join(lines) + "\n"
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    text = path.read_text()
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.DOTALL)
    text = pattern.sub(lambda _: body.rstrip("\n"), text) if SECTION in text else text.rstrip("\n") + "\n\n" + body
    path.write_text(text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    main()
