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
import bench_serving  # noqa: E402


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


def main() -> None:
    from transformers.utils import logging as hf_logging

    import datasets

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    data = bench_data.run()
    gen = bench_generation.run()
    srv = bench_serving.run()
    lines = [
        "# Benchmarks",
        "",
        f"Measured {date.today().isoformat()} on {machine()} with `make bench` (`benchmarks/run.py`).",
        "Each row runs the reference guide's code path and audiotune's on the same tiny AF3 (default preset, whose",
        "encoder/LM compute ratio mirrors the real AF3) and the same synthetic clips, alternated in one process.",
        "",
        "| benchmark | guide | audiotune | ratio | notes |",
        "|---|---|---|---|---|",
        f"| generation, {gen['clips']} clips, greedy | {gen['clips_per_s']['guide']:.2f} clips/s | "
        f"{gen['clips_per_s']['audiotune']:.2f} clips/s | **{gen['ratio']:.2f}×** | batch {gen['batch_size']}, "
        f"median of {gen['repeats']}; identical answers {gen['identical_answers']} |",
        f"| data preparation: decode + resample to 16 kHz, {data['clips']} clips | "
        f"{data['clips_per_s']['guide decode']:.0f} clips/s | {data['clips_per_s']['ours decode']:.0f} clips/s | "
        f"**{data['decode_ratio']:.2f}×** | datasets' torchcodec cast vs soundfile + soxr; median of {data['repeats']} |",
        f"| data preparation: decode + features + labels, batch {data['batch_size']} | "
        f"{data['clips_per_s']['guide full']:.0f} clips/s | {data['clips_per_s']['ours full']:.0f} clips/s | "
        f"**{data['full_ratio']:.2f}×** | the Whisper feature extractor over 30 s windows dominates both |",
        "",
        f"## Serving ({srv['requests']} caption requests per level, 1–6 s clips, greedy, max_tokens 24)",
        "",
        "`audiotune serve` with dynamic batching (max batch 16, 10 ms window) vs the same server with",
        "`--max-batch-size 1` (one request at a time), both on 127.0.0.1, measured alternately.",
        "",
        "| clients | one at a time: req/s | p50 / p95 (s) | dynamic batching: req/s | p50 / p95 (s) | ratio (req/s) |",
        "|---|---|---|---|---|---|",
    ]
    for level, pair in srv["levels"].items():
        a, b = pair["one at a time"], pair["dynamic batching"]
        lines.append(f"| {level} | {a['rps']:.2f} | {a['p50']:.2f} / {a['p95']:.2f} | {b['rps']:.2f} | "
                     f"{b['p50']:.2f} / {b['p95']:.2f} | **{b['rps'] / a['rps']:.2f}×** |")
    lines += ["", "Training throughput, data preparation and utilisation benchmarks arrive with the performance issue."]
    Path(__file__).resolve().parent.parent.joinpath("BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
