"""When does training the audio encoder pay? LM-only LoRA vs encoder LoRA vs the whole encoder, the same steps, on
two versions of one synthetic task: a control the frozen encoder hears, and one built so its front end blurs it.

The task (``--task classify``, labels ``low``/``high``): 1.5 s of noise with a steady tone at 1000 Hz or 1200 Hz
(±20 Hz), 20 dB above the noise in its own mel band. The noise's level in each of 128 mel-spaced bands is set per
clip; the bands between 850 and 1350 Hz (around the tones) are always flat.

- ``control``: every band flat (white noise). The tone is the loudest thing in the clip.
- ``masked``: the bands away from the tones get random levels, N(0, 25 dB) per band and clip, so ~110 independent
  loud bands vary from clip to clip; the clips are otherwise the same (same seed, same draws).

Why ``masked`` defeats a frozen random tower: a Whisper-style tower's first layer is a convolution over 3 frames of
128 mel bins. In the micro AF3 it maps those 384 numbers to 32 channels with random weights, and every channel sums
every band, so each of the 32 channels the LM can see carries the ~110 random band levels along with the two tone
bins: a nuisance of more dimensions than the channels, which no read-out of them (projector, LM) can fully cancel,
whatever it learns. The log-mel input still holds the class plainly (the bands near the tones are clean), and a
trained first convolution can weight those bands and ignore the rest. ``--train-audio-encoder lora`` reaches the
tower's attention and MLP linears, which come after that convolution; ``full`` trains the convolution too. (A real
Whisper-large's first convolution is 384 → 1280, not a bottleneck by width; what carries over is the kind of loss:
detail the front end mixes away is out of reach of anything after it.) ``control`` checks the recipe: with the same
steps every arm must learn it, or a "no gain" on ``masked`` would mean nothing. The earlier designs here (chirp
direction, a faint tone in smoothly coloured noise) left every arm at chance with no such check, while linear probes
found their classes in the frozen features (0.79, 0.99).

Every arm: the micro AF3 (random weights), LoRA r=16 on the LM and its head (bench_rl.py's finding: the micro model's
head is too small to move without it), the projector trained (so the LM-only arm has a trained read-out of the frozen
features and any gain of the encoder arms is the encoder's own), ``--steps`` of ``--batch`` at ``--lr``, the
encoder's parameters (its LoRA or the whole tower) at ``--encoder-lr``. At the earlier recipe's lr 1e-2 (batch 8 or
16) the LM-only arm learned a 1000 vs 1200 Hz tone in white noise on a minority of runs (the loss sat at the label
prior, with spikes, for 100–200 steps); at 3e-3 with batch 16 it learned it in 50–100 steps on every run. A whole
random tower moved at 3e-3 stayed at chance on one of four runs (a control run), and at 1e-2 or 3e-2 on both runs
tried, so the encoder learns at 1e-3. The fourth arm (``--no-conv-lora`` leaves it out) is
``--train-audio-encoder lora`` with ``--lora-targets`` adding the tower's two convolutions (PEFT wraps ``Conv1d``):
whether LoRA gains what ``full`` gains once it reaches the layer that blurs. Seeds: 0..``--seeds``-1 on ``masked``,
``--control-seeds`` on ``control`` (the seed sets LoRA's init, the data order and dropout; the clips are fixed).
Held-out accuracy: ``audiotune eval --task classify`` (greedy) on ``--test-clips`` clips no arm saw; chance 0.5.
Beside each arm's per-seed accuracies, a 95% Wilson interval over all its test answers (seeds pooled: it covers the
test sample, the seeds' spread shows the rest). Linear probes (logistic regression on time-averaged features) say
whether the class is linearly in the log-mel input and in the frozen encoder's output at all.

Speed (minutes on two shared cores, not hours):

- the tower gets a 2 s window instead of AF3's 30 s: the processor pads a 1.5 s clip to its window and the tower
  masks the padding out of attention, so a window that still ends in padding computes the same audio embeddings
  (:func:`short_window`, checked bit for bit on every run by :func:`check_short_window`) at 1/15 of the tower's cost
  or less (``models/encoder_frames.py`` trims the same way at inference, with a ~1e-7 difference at the last frame);
- one torch thread (``--threads``): on the shared 2-core machine the micro model's small matrix products ran 15×
  slower with two threads than with one (each op waits for a descheduled partner);
- no activation checkpointing: the micro model's activations are small, and recomputing them cost ~40% of a step.

Usage: python benchmarks/bench_encoder.py [--design control masked] [--out runs/bench-encoder] [--write]
(``make encoder-bench``). ``--write`` puts the table into BENCHMARKS.md's encoder section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import time
from datetime import date
from pathlib import Path

import numpy as np

SECTION = "## Training the audio encoder"
RATE = 16000
LABELS = ("low", "high")
TONES_HZ = {"low": 1000.0, "high": 1200.0}
FAR_DB = {"control": 0.0, "masked": 25.0}  # the spread of the band levels away from the tones, per design
ARMS = {"LM-only LoRA (encoder frozen)": "none", "encoder LoRA": "lora", "full encoder": "full"}
WITH_HEAD = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head"
CONV_ARM = "encoder LoRA + its convolutions"  # LoRA on the tower's convs too, via --lora-targets (--no-conv-lora)
WITH_CONVS = WITH_HEAD + r"|.*audio_tower\.conv[12]"


def mel(hz: np.ndarray | float) -> np.ndarray | float:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def tone_clip(label: str, rng: np.random.Generator, far_db: float, seconds: float = 1.5, tone_db: float = 20.0,
              bands: int = 128, clean: tuple[float, float] = (850.0, 1350.0)) -> np.ndarray:
    """Noise whose level in each of ``bands`` mel-spaced bands is N(0, ``far_db``) dB per clip (0 dB inside
    ``clean``), plus a steady tone ``tone_db`` above the noise in its own band. The random draws do not depend on
    ``far_db``, so the designs' clips differ only in the far bands' levels."""
    n = int(seconds * RATE)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    band = np.minimum((mel(freqs) / mel(RATE / 2) * bands).astype(int), bands - 1)
    centres_hz = 700.0 * (10 ** ((np.arange(bands) + 0.5) / bands * mel(RATE / 2) / 2595.0) - 1.0)
    levels_db = np.where((centres_hz > clean[0]) & (centres_hz < clean[1]), 0.0, rng.normal(0.0, 1.0, bands) * far_db)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * 10 ** (levels_db[band] / 20), n)
    noise *= 0.05 / noise.std()
    freq = TONES_HZ[label] + rng.uniform(-20.0, 20.0)
    band_power = 2 * (np.abs(np.fft.rfft(noise)) ** 2)[band == band[np.argmin(abs(freqs - freq))]].sum() / n**2
    amplitude = np.sqrt(2 * band_power * 10 ** (tone_db / 10))
    tone = amplitude * np.sin(2 * np.pi * freq * np.arange(n) / RATE + rng.uniform(0, 2 * np.pi))
    return (noise + tone).astype(np.float32)


def write_dataset(design: str, out_dir: Path, n_train: int, n_test: int, seed: int = 0) -> None:
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
            clip = tone_clip(label, rng, FAR_DB[design])
            rows["audio"].append({"bytes": encode_audio(clip, RATE), "path": None})
            rows["label"].append(label)
        Dataset.from_dict(rows, features=features).to_parquet(str(out_dir / "data" / f"{split}-00000-of-00001.parquet"))


def short_window(model: Path, out: Path, seconds: int = 2) -> Path:
    """A copy of a tiny AF3 whose processor pads to ``seconds`` instead of 30 s, its positional table cut to match
    (a prefix of the same rows). For clips shorter than the window the audio embeddings are unchanged: the tower
    masks padded positions out of its attention, and the convolutions see the same log-mel of silence after the
    clip either way."""
    if (out / "config.json").exists():
        return out
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, out)
    frames = seconds * RATE // 160
    processor = json.loads((out / "processor_config.json").read_text())
    processor["feature_extractor"].update(chunk_length=seconds, n_samples=seconds * RATE, nb_max_frames=frames)
    (out / "processor_config.json").write_text(json.dumps(processor, indent=1))
    config = json.loads((out / "config.json").read_text())
    config["audio_config"]["max_source_positions"] = frames // 2
    (out / "config.json").write_text(json.dumps(config, indent=1))
    weights = load_file(str(out / "model.safetensors"))
    key = next(k for k in weights if k.endswith("audio_tower.embed_positions.weight"))
    weights[key] = weights[key][: frames // 2].clone()
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def check_short_window(long: Path, short: Path, data: Path, clips: int = 8) -> float:
    """The largest difference between the two models' audio embeddings on ``clips`` training clips (0.0 expected)."""
    import torch

    from audiotune.models.loading import load_model, load_processor

    waves = _waves(data, "train")[:clips]
    embeddings = []
    for path in (long, short):
        model, _ = load_model(str(path))
        batch = load_processor(str(path))(text=["<sound>"] * len(waves), audio=waves, return_tensors="pt")
        with torch.no_grad():
            embeddings.append(model.model.get_audio_features(batch["input_features"],
                                                             batch["input_features_mask"]).pooler_output)
    return float((embeddings[0] - embeddings[1]).abs().max())


def _waves(data: Path, split: str) -> list[np.ndarray]:
    import io

    import pyarrow.parquet as pq
    import soundfile as sf

    rows = pq.read_table(data / "data" / f"{split}-00000-of-00001.parquet").to_pylist()
    return [sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")[0] for row in rows]


def linear_probes(model: str, data: Path) -> dict[str, float]:
    """Held-out accuracy of a logistic regression on each clip's time-averaged log-mel input vs on the frozen
    encoder's time-averaged output: whether the class is linearly there before and after the untrained encoder,
    independently of how fast the LM learns to read it."""
    import pyarrow.parquet as pq
    import torch

    from audiotune.models.loading import load_model, load_processor, to_model_inputs

    processor = load_processor(model)
    base, family = load_model(model)
    tower = base.get_submodule(family.encoder_prefixes[0])
    features: dict[str, dict[str, torch.Tensor]] = {}
    for split in ("train", "test"):
        rows = pq.read_table(data / "data" / f"{split}-00000-of-00001.parquet", columns=["label"]).to_pylist()
        batch = processor.feature_extractor(_waves(data, split), sampling_rate=RATE, return_tensors="pt",
                                            return_attention_mask=True)
        mask = batch["attention_mask"].float()
        mel_mean = (batch["input_features"] * mask[:, None]).sum(-1) / mask.sum(-1, keepdim=True)
        with torch.no_grad():
            inputs = to_model_inputs(dict(batch), base)
            hidden = tower(inputs["input_features"], input_features_mask=inputs["attention_mask"]).last_hidden_state
        tokens = ((mask.sum(-1) - 1) // 2 + 1) // 2  # the conv's stride 2, then the pooling's 2
        valid = (torch.arange(hidden.shape[1])[None, :] < tokens[:, None]).float()
        encoded = (hidden * valid[..., None]).sum(1) / valid.sum(-1, keepdim=True)
        labels = torch.tensor([float(row["label"] == LABELS[1]) for row in rows])
        features[split] = {"log-mel input": mel_mean, "frozen encoder output": encoded, "labels": labels}
    return {name: _probe(features["train"][name], features["train"]["labels"], features["test"][name],
                         features["test"]["labels"]) for name in ("log-mel input", "frozen encoder output")}


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


def cpu_seconds() -> float:
    """CPU time of this process so far (user + system): the run's cost whatever else the machine runs."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def accuracy(model: str, data: str, adapter: str, out: str) -> float:
    from audiotune.evaluate import EvalConfig, run_evaluation

    report = run_evaluation(EvalConfig.from_flat(model=model, dataset=data, out=out, adapters=[adapter], split="test",
                                                 task="classify", batch_size=16, max_new_tokens=4,
                                                 with_meteor=False))
    return float(report.models[0].metrics["accuracy"])


def run_design(design: str, model: Path, root: Path, opts: argparse.Namespace, arms: dict[str, str]) -> dict:
    from audiotune.train import train
    from audiotune.train_config import TrainConfig

    data = root / design
    results = {}
    for name, mode in arms.items():
        slug = "lora-convs" if name == CONV_ARM else mode
        runs = []
        for seed in range(opts.seeds if design == "masked" else opts.control_seeds):
            start = time.perf_counter()
            run = train(TrainConfig.from_flat(
                model=str(model), dataset=str(data), task="classify", output_dir=str(root / f"{design}-{slug}-{seed}"),
                eval_split=None, eval_generate_take=0, per_device_train_batch_size=opts.batch,
                gradient_accumulation_steps=1, learning_rate=opts.lr, warmup_steps=5, max_steps=opts.steps,
                logging_steps=max(1, opts.steps // 5), save_steps=100_000, seed=seed, disable_tqdm=True,
                lora_targets=WITH_CONVS if name == CONV_ARM else WITH_HEAD, train_projector=True,
                train_audio_encoder="lora" if name == CONV_ARM else mode, activation_checkpointing=False,
                encoder_learning_rate=None if mode == "none" else opts.encoder_lr))
            seconds = time.perf_counter() - start
            losses = [entry["loss"] for entry in run.log_history if "loss" in entry]
            runs.append({"seed": seed, "train_seconds": round(seconds, 1), "final_loss": losses[-1],
                         "accuracy": accuracy(str(model), str(data), str(run.out_dir),
                                              str(root / f"eval-{design}-{slug}-{seed}"))})
            print(f"{design} | {name} | seed {seed}: accuracy {runs[-1]['accuracy']:.3f}, "
                  f"final loss {losses[-1]:.3f}, {seconds:.0f} s", flush=True)
        accuracies = [r["accuracy"] for r in runs]
        correct = sum(round(a * opts.test_clips) for a in accuracies)
        results[name] = {"mode": "lora + convs" if name == CONV_ARM else mode, "trainable": run.trainable_parameters,
                         "runs": runs, "mean": sum(accuracies) / len(accuracies),
                         "correct": correct, "answers": opts.test_clips * len(runs),
                         "wilson": wilson(correct, opts.test_clips * len(runs)),
                         "train_seconds": sum(r["train_seconds"] for r in runs) / len(runs)}
    return {"design": design, "arms": results, "probes": linear_probes(str(model), data)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--design", nargs="+", default=list(FAR_DB), choices=tuple(FAR_DB))
    parser.add_argument("--out", default="runs/bench-encoder")
    parser.add_argument("--preset", default="micro", help="Tiny AF3 preset (micro: minutes on 2 cores).")
    parser.add_argument("--train-clips", type=int, default=480)
    parser.add_argument("--test-clips", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--encoder-lr", type=float, default=1e-3, help="--encoder-learning-rate of the encoder arms.")
    parser.add_argument("--seeds", type=int, default=3, help="Training seeds per arm on `masked`.")
    parser.add_argument("--control-seeds", type=int, default=1,
                        help="Training seeds per arm on `control` (a check that the recipe learns).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see the docstring).")
    parser.add_argument("--no-conv-lora", dest="conv_lora", action="store_false",
                        help=f"Leave out the fourth arm on `masked`: {CONV_ARM} (via --lora-targets).")
    parser.add_argument("--write", action="store_true", help="Update the encoder section of BENCHMARKS.md.")
    parser.add_argument("--rewrite", action="store_true",
                        help="Only rewrite the section from OUT/result.json (an earlier run's), training nothing.")
    opts = parser.parse_args()
    if opts.rewrite:
        write_section(json.loads((Path(opts.out) / "result.json").read_text()))
        return

    import torch
    from transformers.utils import logging as hf_logging

    import datasets
    from audiotune.models.tiny import build_tiny

    torch.set_num_threads(opts.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    root = Path(opts.out)
    start, load = time.perf_counter(), os.getloadavg()[0]
    long = build_tiny("af3", root / f"{opts.preset}-af3", seed=0, preset=opts.preset)
    model = short_window(Path(long), root / f"{opts.preset}-af3-2s")
    results = []
    for design in opts.design:
        if not (root / design / "data").exists():
            write_dataset(design, root / design, opts.train_clips, opts.test_clips)
    difference = check_short_window(Path(long), model, root / opts.design[-1])
    if difference != 0.0:
        raise SystemExit(f"the 2 s window changed the audio embeddings by {difference}; use the 30 s model")
    for design in opts.design:
        arms = dict(ARMS, **({CONV_ARM: "lora"} if opts.conv_lora and design == "masked" else {}))
        results.append(run_design(design, model, root, opts, arms))
        print(table(results[-1]), flush=True)
    summary = {"results": results, "preset": opts.preset, "steps": opts.steps, "batch": opts.batch, "lr": opts.lr,
               "encoder_lr": opts.encoder_lr,
               "seeds": opts.seeds, "control_seeds": opts.control_seeds, "train_clips": opts.train_clips,
               "test_clips": opts.test_clips,
               "total_seconds": round(time.perf_counter() - start), "date": date.today().isoformat(),
               "load_average": [round(load, 1), round(os.getloadavg()[0], 1)], "cpu_seconds": round(cpu_seconds()),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"}
    print(json.dumps(summary))
    (root / "result.json").write_text(json.dumps(summary, indent=1))
    if opts.write:
        write_section(summary)


def table(result: dict) -> str:
    rows = ["| arm | `--train-audio-encoder` | trainable parameters | held-out accuracy per seed | mean | 95% CI "
            "(seeds pooled) | train time per run (s) |", "|---|---|---|---|---|---|---|"]
    for name, arm in result["arms"].items():
        low, high = arm["wilson"]
        per_seed = " / ".join(f"{r['accuracy']:.3f}" for r in arm["runs"])
        rows.append(f"| {name} | {arm['mode']} | {arm['trainable']:,} | {per_seed} | **{arm['mean']:.3f}** | "
                    f"{low:.2f}–{high:.2f} | {arm['train_seconds']:.0f} |")
    return "\n".join(rows)


DESCRIPTIONS = {
    "control": "the tone in white noise (every band flat): a task the frozen encoder hears",
    "masked": "the same clips with the levels of the ~110 bands away from the tones drawn per clip, N(0, 25 dB): "
              "the bands near the tones stay clean, but every channel of the frozen tower's first convolution mixes "
              "in the loud random bands"}


def difference_interval(arm: dict, base: dict) -> tuple[float, float]:
    """Newcombe's 95% interval of ``arm``'s pooled accuracy minus ``base``'s, from their Wilson intervals. It treats
    the two arms' answers as independent, which is conservative here: they answer the same test clips."""
    p, q = arm["correct"] / arm["answers"], base["correct"] / base["answers"]
    (p_low, p_high), (q_low, q_high) = arm["wilson"], base["wilson"]
    return (p - q - math.hypot(p - p_low, q_high - q), p - q + math.hypot(p_high - p, q - q_low))


def verdict(result: dict) -> str:
    """What the numbers say, in words: each encoder arm against the LM-only arm, the difference's interval (the
    test sample) and whether every seed beat the frozen arm's best (the training seeds)."""
    arms = list(result["arms"].items())
    base = arms[0][1]
    words = []
    for name, arm in arms[1:]:
        low, high = difference_interval(arm, base)
        span = f"{arm['mean'] - base['mean']:+.3f} (95% interval of the difference {low:+.3f} to {high:+.3f}"
        if low > 0:
            above = min(r["accuracy"] for r in arm["runs"]) > max(r["accuracy"] for r in base["runs"])
            words.append(f"{name} {span}; {'every seed above' if above else 'not every seed above'} the frozen "
                         "arm's best): it pays")
        elif high < 0:
            words.append(f"{name} {span}): worse")
        else:
            words.append(f"{name} {span}): no difference shown")
    return f"Against the LM-only arm ({base['mean']:.3f}): " + "; ".join(words) + "."


def write_section(summary: dict) -> None:
    """Replace (or append) BENCHMARKS.md's encoder section; ``benchmarks/run.py`` keeps it when it rewrites the
    rest."""
    load = summary.get("load_average")
    shared = f" (1-minute load average {load[0]} at the start, {load[1]} at the end)" if load else ""
    lines = [SECTION, "", f"Measured {summary.get('date', date.today().isoformat())} with `make encoder-bench` "
             f"(`benchmarks/bench_encoder.py --write`) on {summary['machine']}, the machine shared with other "
             f"jobs{shared}: {summary['total_seconds'] / 60:.1f} min in all, "
             f"{summary.get('cpu_seconds', 0) / 60:.1f} min of it on a CPU. Tiny AF3 (micro preset, random weights: "
             "the stand-in for an encoder that never heard such "
             "sounds). The task: 1.5 s of noise with a steady tone at 1000 Hz (`low`) or 1200 Hz (`high`), 20 dB "
             "above the noise in its own mel band; `--task classify`. Every arm: LoRA r=16 on the LM and its head, "
             f"the projector trained, lr {summary['lr']} (the encoder's parameters {summary['encoder_lr']}), "
             f"{summary['steps']} steps of batch {summary['batch']} over the same {summary['train_clips']} "
             f"training clips, training seeds 0–{summary['seeds'] - 1} (`control`: {summary['control_seeds']} "
             f"seed(s), a check of the recipe); held-out accuracy by `audiotune eval --task classify` (greedy) on "
             f"{summary['test_clips']} test clips, chance 0.5; the interval is a 95% Wilson interval over all "
             "seeds' answers. `--train-audio-encoder lora` reaches the tower's attention and MLP linears, not its "
             "convolutional front end; `full` trains the whole tower; the fourth arm adds the tower's two "
             "convolutions to the LoRA targets (`--lora-targets '...|.*audio_tower\\.conv[12]'`). The tower runs "
             "over a 2 s window instead of 30 s (the same audio embeddings, checked on every run; the whole "
             "tower's trainable count has 100 positional rows instead of 1,500); one torch thread."]
    for result in summary["results"]:
        probes = result["probes"]
        lines += ["", f"**{result['design']}**: {DESCRIPTIONS[result['design']]}.", "", table(result), "",
                  verdict(result) + " Linear probes (logistic regression on time-averaged features, the same clips): "
                  + ", ".join(f"{name} {value:.3f}" for name, value in probes.items()) + "."]
    body = "\n".join(lines) + "\n"
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    text = path.read_text()
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.DOTALL)
    reading = re.search(r"\n(\*\*Reading\*\*.*?)(?=\n## |\Z)", pattern.search(text).group(0) if SECTION in text
                        else "", re.DOTALL)
    if reading:  # the hand-written reading below the tables stays
        body += "\n" + reading.group(1).rstrip("\n") + "\n"
    text = pattern.sub(lambda _: body.rstrip("\n"), text) if SECTION in text else text.rstrip("\n") + "\n\n" + body
    path.write_text(text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    main()
