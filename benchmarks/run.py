"""Run every benchmark and rewrite BENCHMARKS.md (``make bench``)."""

from __future__ import annotations

import os
import platform
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import bench_data  # noqa: E402
import bench_generation  # noqa: E402
import bench_packing  # noqa: E402
import bench_profile  # noqa: E402
import bench_serving  # noqa: E402
import bench_training  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


KEPT = ("## GRPO on a verifiable task", "## Training the audio encoder", "## GPU check")  # written by their own
# commands (`make rl-bench`, `make encoder-bench`, a GPU session's `benchmarks/gpu_check.py`), kept as they are


def kept_sections(path: Path) -> str:
    """The sections of the current BENCHMARKS.md that other benchmark commands own, to append unchanged."""
    if not path.exists():
        return ""
    text, kept = path.read_text(), []
    for title in KEPT:
        start = text.find(title)
        if start >= 0:
            end = text.find("\n## ", start + len(title))
            kept.append(text[start : end if end >= 0 else len(text)].rstrip() + "\n")
    return "".join("\n" + k for k in kept)


def _spread(value: dict, fmt: str = ".2f", suffix: str = "") -> str:
    """A median with its min–max over the passes: ``1.75× [1.43–2.36]``."""
    return f"{value['median']:{fmt}}{suffix} [{value['min']:{fmt}}–{value['max']:{fmt}}]"


def serving_section(srv: dict) -> list[str]:
    """The serving section of BENCHMARKS.md from one ``bench_serving.run()``."""
    lines = [
        f"## Serving ({srv['requests']} caption requests per level, twice the clients where more, 1–6 s clips, "
        "greedy, max_tokens 24)",
        "",
        "`audiotune serve` one request at a time (`--max-batch-size 1`), with dynamic batching (max batch 16, 10 ms",
        "window, length buckets) over whole 30 s encoder windows (the default) and with `--encoder-frames valid`, and",
        "`--backend vllm` (vLLM's CPU build, max 64 sequences, `--enforce-eager`, float32) when `make vllm-env` was",
        "run; all on 127.0.0.1 with the same checkpoint. Every level runs in "
        f"{srv['passes']} passes, the servers alternated (each pass starts with another); figures are the median",
        "[min–max] over the passes, a ratio is req/s against one at a time in the same pass. Every level of every",
        "pass sends clips no server has seen (real traffic rarely repeats audio); the last row repeats each pass's",
        "first clips at the top concurrency, to show what vLLM's caches add.",
        "",
    ]
    names = list(next(iter(srv["levels"].values())))
    lines += ["| clients | " + " | ".join(f"{n}: req/s" for n in names) + " | "
              + " | ".join(f"{n}: ratio" for n in names[1:]) + " |",
              "|---|" + "---|" * (2 * len(names) - 1)]
    for level, by_name in srv["levels"].items():
        cells = [_spread(r["rps"]) for r in by_name.values()]
        ratios = [f"**{_spread(by_name[n]['ratio'], suffix='×')}**" for n in names[1:]]
        lines.append(f"| {level} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    lines += ["", "Latency, p50 / p95 in seconds (median over the passes):", "",
              "| clients | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for level, by_name in srv["levels"].items():
        lines.append(f"| {level} | " + " | ".join(f"{r['p50']:.2f} / {r['p95']:.2f}" for r in by_name.values()) + " |")
    for kind, rates in srv.get("vllm_cache", {}).items():
        shown = ", ".join(f"{name} cache hit rate {value:.1%}" for name, value in rates.items() if value is not None)
        lines.append(f"\nvLLM's cache hit rates with {kind} (its /metrics counters): {shown or 'no queries'}.")
    return lines


SERVING = "## Serving"
FOOTER = ("Timings are benchmarks only; the tests check that each optimisation leaves results unchanged "
          "(cache vs no cache, batched vs single generation).")


def replace_section(path: Path, title: str, lines: list[str], before: str | None = None) -> None:
    """Replace the section of BENCHMARKS.md that starts with ``title`` by ``lines``, the rest kept; where there is
    none yet, insert them before the section titled ``before`` (else at the end)."""
    text = path.read_text()
    start = text.find(title)
    if start >= 0:
        end = text.find("\n## ", start + len(title))
        end = len(text) if end < 0 else end + 1
    else:
        start = end = text.find(before) if before and before in text else len(text)
    path.write_text(text[:start] + "\n".join(lines) + "\n\n" + text[end:])


def measured_alone(lines: list[str], command: str) -> list[str]:
    """A section measured by ``run.py --only ...``: its date, machine and command under its title."""
    return [lines[0], f"\nMeasured {date.today().isoformat()} on {machine()} with `python benchmarks/run.py --only "
                      f"{command}` (the other sections are `make bench`'s).", *lines[1:]]


def rewrite_serving(path: Path, *args: int) -> list[str]:
    """``run.py --only serving [REQUESTS [PASSES]]``: measure serving alone and replace its section of BENCHMARKS.md,
    the rest kept."""
    lines = measured_alone(serving_section(bench_serving.run(*args)) + ["", FOOTER],
                           " ".join(["serving", *map(str, args)]))
    replace_section(path, SERVING, lines)
    return lines


PACKING = "## Packing"


def rewrite_packing(path: Path, repeats: int = 2) -> list[str]:
    """``run.py --only packing [REPEATS]``: measure packing alone and replace (or add, after Training) its section."""
    lines = measured_alone(bench_packing.section(bench_packing.run(repeats)), f"packing {repeats}")
    replace_section(path, PACKING, lines, before="## Generation")
    return lines


def rewrite_profile(path: Path) -> list[str]:
    """``run.py --only profile``: measure the profile alone and replace (or add, after Serving) its section."""
    lines = measured_alone(bench_profile.section(bench_profile.run()), "profile")
    replace_section(path, bench_profile.TITLE, lines, before=KEPT[0])
    return lines


GENERATION = "## Generation, data preparation"


def generation_section(gen: dict, data: dict) -> list[str]:
    """The generation and data-preparation section of BENCHMARKS.md from ``bench_generation.run()`` and
    ``bench_data.run()``."""
    feats = gen["features"]
    paths = list(dict.fromkeys(path for _, path in feats["clips_per_s"]))
    families = list(dict.fromkeys(family for family, _ in feats["clips_per_s"]))
    af3_whole = feats["clips_per_s"][("AF3", "torch, batched, whole windows")]
    tower_only = gen["ratios"]["audiotune (valid frames, whole-window features)"]  # the valid tower, 30 s features
    return [
        GENERATION,
        "",
        "| benchmark | guide | audiotune | ratio | notes |",
        "|---|---|---|---|---|",
        f"| generation, {gen['clips']} clips, greedy | {gen['clips_per_s']['guide']:.2f} clips/s | "
        f"{gen['clips_per_s']['audiotune']:.2f} clips/s | **{gen['ratio']:.2f}×** | batch {gen['batch_size']}, "
        f"median of {gen['repeats']}; identical answers {gen['identical_answers']['audiotune']} |",
        f"| data preparation: decode + resample to 16 kHz, {data['clips']} clips | "
        f"{data['clips_per_s']['guide decode']:.0f} clips/s | {data['clips_per_s']['ours decode']:.0f} clips/s | "
        f"**{data['decode_ratio']:.2f}×** | datasets' torchcodec cast vs soundfile + soxr; median of {data['repeats']} |",
        f"| data preparation: decode + features + labels, batch {data['batch_size']} | "
        f"{data['clips_per_s']['guide full']:.0f} clips/s | {data['clips_per_s']['ours full']:.0f} clips/s | "
        f"**{data['full_ratio']:.2f}×** | the Whisper feature extractor over 30 s windows dominates both |",
        "",
        "Generation by backend, same clips and settings (clips/s; ratio against the guide; answers equal to the guide's):",
        "",
        "| backend | clips/s | ratio | identical answers |",
        "|---|---|---|---|",
        f"| the guide (one clip at a time) | {gen['clips_per_s']['guide']:.2f} | 1.00× | — |",
        *[f"| {name} | {gen['clips_per_s'][name]:.2f} | **{gen['ratios'][name]:.2f}×** | "
          f"{gen['identical_answers'][name]} |" for name in gen["ratios"]],
        "",
        f"Generation target (≥ 4× the guide with the best backend): "
        f"{'met' if max(gen['ratios'].values()) >= 4 else 'missed'} ({max(gen['ratios'].values()):.2f}×). "
        f"\"audiotune\" (the default) runs AF3's encoder over whole 30 s windows as the guide must: the features, that "
        f"encoder and one prefill of every prompt take {gen['seconds']['encoder']:.1f} s of the guide's "
        f"{gen['seconds']['guide']:.1f} s, so batching alone cannot pass {gen['encoder_bound']:.2f}× here. "
        "\"audiotune (valid frames)\" (`--encoder-frames valid`, encoder_frames.py) computes the features and runs "
        "the encoder only as far as each batch's longest clip reaches (plus the two frames its convolutions read past "
        "it), which is what moves past that bound; the row fed whole-window features splits that gain between the "
        f"encoder ({tower_only / gen['ratio']:.2f}× over \"audiotune\") and the features "
        f"({gen['ratios']['audiotune (valid frames)'] / tower_only:.2f}× more)."
        + (f" vLLM's time is its generation only; its engine takes {gen['vllm_load_seconds']:.0f} s to start "
           "(once per `eval`/`infer` run, once per server)." if gen["vllm_load_seconds"] else
           " vLLM was not measured (no `make vllm-env`)."),
        "",
        (f"Quality of valid frames vs whole windows, the demo's tuned adapter on its {gen['quality']['rows']} held-out "
         f"clips: CIDEr-D {gen['quality']['window']:.4f} (windows) vs {gen['quality']['valid']:.4f} (valid frames); "
         f"{gen['quality']['identical']} of {gen['quality']['rows']} captions identical."
         if gen["quality"] else "Quality of valid frames vs whole windows: run `make demo` first (it scores the "
         "demo's tuned adapter both ways)."),
        "The audio-embedding cache removes the encoder cost from every later pass over the same clips (evaluation "
        "during training, `--compare`).",
        "",
        f"Log-mel features alone, the same {feats['clips']} clips (clips/s, batches of {feats['batch_size']} longest "
        "first as generation forms them; ratio against AF3's batched whole windows, transformers' own path):",
        "",
        "| features | " + " | ".join(families) + " | AF3 ratio |",
        "|---|" + "---|" * len(families) + "---|",
        *[f"| {path} | " + " | ".join(f"{feats['clips_per_s'][(f, path)]:.1f}" if (f, path) in feats["clips_per_s"]
                                       else "—" for f in families)
          + f" | {feats['clips_per_s'][('AF3', path)] / af3_whole:.2f}× |" for path in paths],
        "",
        "transformers 5.24's Whisper extractor (AF3, Music Flamingo, Qwen2-Audio, Qwen2.5-Omni, Qwen3-Omni, Voxtral, "
        "GLM-ASR) already takes its batched torch path whenever torch is installed, on the CPU unless given a device; "
        "audiotune's generation collator gives it the model's device (a GPU's, where there is one) and computes each "
        "clip's features once per batch. What is left to remove is the padding: features only as far as the batch "
        "reaches, which `--encoder-frames valid` does for AF3, Music Flamingo and Qwen2-Audio (their towers then run "
        "that far too) and audiotune always does for Qwen2.5-Omni, whose model keeps only each clip's valid frames "
        "of its 300 s windows (models/encoder_frames.py).",
        "",
    ]


def rewrite_generation(path: Path) -> list[str]:
    """``run.py --only generation``: measure data preparation and generation alone and replace their section."""
    lines = generation_section(bench_generation.run(), bench_data.run())
    lines.insert(1, f"\nMeasured {date.today().isoformat()} on {machine()} with `python benchmarks/run.py --only "
                    "generation` (the other sections are `make bench`'s).")
    text = path.read_text()
    start = text.index(GENERATION)
    end = text.find("\n## ", start + len(GENERATION))
    path.write_text(text[:start] + "\n".join(lines).rstrip() + "\n" + (text[end:] if end >= 0 else ""))
    return lines


def main() -> None:
    from transformers.utils import logging as hf_logging

    import datasets

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    if sys.argv[1:3] == ["--only", "serving"]:
        print("\n".join(rewrite_serving(path, *map(int, sys.argv[3:5]))))
        return
    if sys.argv[1:] == ["--only", "generation"]:
        print("\n".join(rewrite_generation(path)))
        return
    if sys.argv[1:3] == ["--only", "packing"]:
        print("\n".join(rewrite_packing(path, *map(int, sys.argv[3:4]))))
        return
    if sys.argv[1:] == ["--only", "profile"]:
        print("\n".join(rewrite_profile(path)))
        return
    training = bench_training.run()
    packing = bench_packing.run()
    data = bench_data.run()
    gen = bench_generation.run()
    srv = bench_serving.run()
    profile = bench_profile.run()
    lines = [
        "# Benchmarks",
        "",
        f"Measured {date.today().isoformat()} on {machine()} with `make bench` (`benchmarks/run.py`).",
        "Each row runs the reference guide's code path and audiotune's on the same tiny AF3 (default preset, whose",
        "encoder/LM compute ratio mirrors the real AF3) and the same synthetic clips, alternated in one process.",
        "",
        "## Training",
        "",
        "The guide's workflow (its LoRA targets, which include the encoder's q/k/v; `output_labels=True`;",
        "gradient checkpointing; streaming) vs `audiotune train` (LoRA on the language model only, assistant-only",
        f"labels, audio-embedding cache) on {bench_training.TRAIN_CLIPS} clips, batch {bench_training.BATCH} × "
        f"accumulation {bench_training.ACCUMULATION}, lr 1e-4, {bench_training.EPOCHS} epochs; each run in its own "
        f"process, alternated, median of {training['repeats']}. Eval loss: the same {bench_training.EVAL_CLIPS} held-out "
        "rows, assistant tokens only, computed the same way for all.",
        "",
        "| variant | epoch 1 samples/s | epoch 2 samples/s | peak RSS (MB) | eval loss |",
        "|---|---|---|---|---|",
    ]
    for name, v in training["variants"].items():
        lines.append(f"| {name} | {v['epoch1']:.2f} | {v['epoch2']:.2f} | {v['peak_rss_mb']:.0f} | {v['eval_loss']:.4f} |")
    g, a, c, t = (training["variants"][k] for k in ("guide", "audiotune", "audiotune-gc", "audiotune-compile"))
    use = training["utilisation"]
    lines += [
        "",
        f"- audiotune (defaults) vs the guide: **{a['epoch1'] / g['epoch1']:.2f}×** in epoch 1 (target ≥ 1.4×), "
        f"**{a['epoch2'] / g['epoch2']:.2f}×** from epoch 2 (target ≥ 2×), eval loss {a['eval_loss']:.4f} vs "
        f"{g['eval_loss']:.4f}, peak RSS {100 * (a['peak_rss_mb'] / g['peak_rss_mb'] - 1):+.0f}%.",
        f"- audiotune with `--activation-checkpointing` (the guide's memory setting): {c['epoch1'] / g['epoch1']:.2f}× / "
        f"{c['epoch2'] / g['epoch2']:.2f}×, peak RSS {100 * (c['peak_rss_mb'] / g['peak_rss_mb'] - 1):+.0f}%.",
        f"- Utilisation: {training['flops_per_sample'] / 1e9:.1f} GFLOP of model work per training sample "
        f"(encoder {training['flops']['encoder'] / 1e9:.1f} + LM forward and backward {training['flops']['lm'] / 1e9:.1f}, "
        f"{training['flops']['tokens']:.0f} tokens); audiotune's epoch 1 achieves "
        f"{training['flops_per_sample'] * a['epoch1'] / 1e9:.1f} GFLOP/s against a dense fp32 matmul peak of "
        f"{training['peak_flops'] / 1e9:.1f} GFLOP/s measured in the same run: **{100 * training['utilisation_epoch1']:.0f}%**"
        f" ({100 * use['audiotune']['epoch2']:.0f}% in epoch 2, counting the language model's work only: the "
        "audio cache holds the encoder's output).",
        f"- `--torch-compile` (TrainingArguments' own: the Trainer compiles the model, CPU inductor here): "
        f"{t['epoch1'] / a['epoch1']:.2f}× audiotune's samples/s in epoch 1 (compiling included), "
        f"{t['epoch2'] / a['epoch2']:.2f}× in epoch 2; utilisation {100 * use['audiotune']['epoch1']:.0f}% → "
        f"{100 * use['audiotune-compile']['epoch1']:.0f}% (epoch 1), {100 * use['audiotune']['epoch2']:.0f}% → "
        f"{100 * use['audiotune-compile']['epoch2']:.0f}% (epoch 2); eval loss {t['eval_loss']:.4f} vs "
        f"{a['eval_loss']:.4f}.",
        "",
        *bench_packing.section(packing),
        "",
        *generation_section(gen, data),
    ]
    lines += serving_section(srv) + ["", FOOTER, "", *bench_profile.section(profile)]
    path.write_text("\n".join(lines) + "\n" + kept_sections(path))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
