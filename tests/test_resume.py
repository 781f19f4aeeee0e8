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


def _train_cmd(model, data, out, *extra):
    return [sys.executable, "-m", "audiotune", "train", "--model", str(model), "--dataset", str(data),
            "--out", str(out), "--max-steps", "8", "--save-steps", "2", "--eval-steps", "100", "--eval-take", "2",
            "--batch-size", "2", "--gradient-accumulation-steps", "2", "--learning-rate", "3e-3",
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
    process.wait()
    assert not (killed / "adapter_model.safetensors").exists()

    resumed = subprocess.run(_train_cmd(micro_af3, synth_data, killed, "--resume", *extra), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((killed / "train_metrics.json").read_text())
    assert "checkpoint-" in (metrics["resumed_from"] or ""), "the second run did not resume from a checkpoint"
    expected = load_file(reference / "adapter_model.safetensors")
    actual = load_file(killed / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-5), name
    start = load_file(micro_af3 / "model.safetensors")  # the adapter did train: B matrices moved from zero
    assert any(v.abs().max() > 0 for k, v in actual.items() if "lora_B" in k) and start
