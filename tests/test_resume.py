"""A run killed with SIGKILL and resumed ends with the same adapter as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from audiotune.checkpoints import MARKER, checkpoint_steps


def _train_cmd(model, data, out, *extra):
    return [sys.executable, "-m", "audiotune", "train", "--model", str(model), "--dataset", str(data),
            "--output-dir", str(out), "--max-steps", "8", "--save-steps", "2", "--eval-steps", "100",
            "--eval-take", "2", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "2",
            "--learning-rate", "3e-3",
            "--logging-steps", "1", "--seed", "7", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_sigkill_then_resume_matches_uninterrupted(micro_af3, synth_data, tmp_path, streaming):
    extra = ["--streaming"] if streaming else []
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(micro_af3, synth_data, reference, *extra), check=True, env=_env(), capture_output=True,
                   timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_cmd(micro_af3, synth_data, killed, *extra), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint-4").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "adapter_model.safetensors").exists()

    # The newest checkpoint lost its completeness marker: --resume passes it over, says so, takes the one before.
    (*_, (_, previous), (_, newest)) = checkpoint_steps(killed)
    (newest / MARKER).unlink()
    resumed = subprocess.run(_train_cmd(micro_af3, synth_data, killed, "--resume", *extra), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    flat = "".join(resumed.stderr.split())  # rich wraps long log lines
    assert "".join(f"--resume: skipping {newest}: it has no {MARKER}".split()) in flat, resumed.stderr[-3000:]
    metrics = json.loads((killed / "train_metrics.json").read_text())
    assert metrics["resumed_from"] == str(previous), "the second run did not resume from the last whole checkpoint"
    expected = load_file(reference / "adapter_model.safetensors")
    actual = load_file(killed / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-5), name
    # The adapter did train: LoRA's B matrices start at zero.
    assert min(float(v.abs().max()) for k, v in actual.items() if "lora_B" in k) > 0
