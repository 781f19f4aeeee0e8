"""benchmarks/gpu_check.py (#23) cannot rot: its CPU run (``--device cpu --tiny``) prints the whole table with finite
numbers, and the real-size model it would build on the GPU is the published architecture with the tiny processor's
token ids (checked on the meta device, no storage)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

ROWS = [("guide LoRA recipe", "off"), ("guide LoRA recipe", "on"), ("audiotune defaults", "off"),
        ("audiotune defaults", "on")]


@pytest.fixture(scope="module")
def table() -> list[list[str]]:
    """The markdown table of one CPU run (4 steps per arm, 1 of them warm-up, batch 2), as rows of cells."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--steps", "4", "--warmup", "1", "--batch", "2"], capture_output=True, text=True,
                          env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def _numbers(row: list[str]) -> list[float]:
    return [float(cell) for cell in row[2:]]


@pytest.mark.slow
def test_every_row_and_column_is_there(table):
    header, rule, *rows = table
    assert tuple(header) == ("arm", "packing", "steps/s", "tokens/s", "peak memory (GB)", "plan (GB)", "MFU (%)")
    assert all(cell == "---" for cell in rule)
    assert [(row[0], row[1]) for row in rows] == ROWS
    for row in rows:
        assert len(row) == len(header)
        assert all(math.isfinite(value) and value > 0 for value in _numbers(row)), row  # packing on too


def test_the_real_size_model_is_the_published_architecture(micro_af3, tmp_path):
    """What the GPU run builds: AF3's published sizes (plan's exact count, on the meta device), the tiny tokenizer's
    ids, so every token id the collator makes is inside the real vocabulary."""
    import torch

    from audiotune.models.loading import load_processor
    from audiotune.plan import make_plan

    folder = gpu_check.real_size_folder(micro_af3, tmp_path / "real")
    model, family = gpu_check.random_weights_loader("meta", "sdpa")(str(folder), dtype=torch.bfloat16)
    assert family.name == "af3"
    assert sum(p.numel() for p in model.parameters()) == make_plan("nvidia/audio-flamingo-3-hf").parameters.total
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    config = model.config
    assert (config.text_config.vocab_size, config.text_config.num_hidden_layers, config.audio_config.hidden_size) == \
        (151672, 28, 1280)  # models/published/nvidia--audio-flamingo-3-hf.json
    tokenizer = load_processor(str(folder)).tokenizer
    assert config.audio_token_id == tokenizer.convert_tokens_to_ids(family.audio_token)
    assert len(tokenizer) <= config.text_config.vocab_size
