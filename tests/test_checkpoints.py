"""Checkpoints are atomic, a kill at any moment loses nothing, a signal saves and stops cleanly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from audiotune.checkpoints import checkpoint_is_complete, checkpoint_problem, checkpoint_steps


def _cmd(model, data, out, *extra, steps=12):
    return [sys.executable, "-m", "audiotune", "train", "--model", str(model), "--dataset", str(data),
            "--out", str(out), "--max-steps", str(steps), "--save-steps", "2", "--eval-steps", "100",
            "--eval-take", "2", "--batch-size", "2", "--gradient-accumulation-steps", "1", "--learning-rate", "3e-3",
            "--logging-steps", "1", "--seed", "11", "--eval-generate-take", "0", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _adapter(folder):
    return load_file(folder / "adapter_model.safetensors")


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def _flat(text: str) -> str:
    """Log text without whitespace: rich wraps long lines (paths) at the console width."""
    return "".join(text.split())


@pytest.mark.slow
def test_kills_at_random_points_never_leave_a_partial_checkpoint(micro_af3, synth_data, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_cmd(micro_af3, synth_data, reference, steps=40), check=True, env=_env(), capture_output=True,
                   timeout=600)
    assert sorted(p.name for p in reference.glob("checkpoint-*")) == ["checkpoint-38", "checkpoint-40"]
    assert all(checkpoint_is_complete(p) for p in reference.glob("checkpoint-*"))
    assert not (reference / ".staging").exists()

    run = tmp_path / "killed"
    rng = random.Random(0)
    for attempt, target in enumerate((6, 16, 28)):  # kill soon after checkpoint-N appears: in later steps or saves
        before = checkpoint_steps(run) if run.exists() else []
        log = tmp_path / f"attempt-{attempt}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(_cmd(micro_af3, synth_data, run, "--resume", steps=40), env=_env(),
                                       stdout=subprocess.DEVNULL, stderr=stderr)
            deadline = time.time() + 300
            while not (run / f"checkpoint-{target}").exists() and process.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
            assert process.poll() is None, "the run ended before the kill"
            process.send_signal(signal.SIGKILL)
            assert process.wait() == -signal.SIGKILL
        # It resumed from the newest checkpoint the previous kill left (the first attempt had none).
        expected = f"--resume: continuing from {before[-1][1]}." if before else "no complete checkpoint"
        assert _flat(expected) in _flat(log.read_text()), log.read_text()[-2000:]
        assert not (run / "adapter_model.safetensors").exists()
        assert checkpoint_steps(run)[-1][0] >= target
        for _, checkpoint in checkpoint_steps(run):  # whatever survived the kill is whole
            assert checkpoint_is_complete(checkpoint), checkpoint_problem(checkpoint)

    # A half-written optimizer.pt in the newest checkpoint: --resume passes it over, says so, takes the one before.
    (*_, (_, previous), (_, newest)) = checkpoint_steps(run)
    with (newest / "optimizer.pt").open("r+b") as handle:
        handle.truncate(handle.seek(0, os.SEEK_END) // 2)
    finished = subprocess.run(_cmd(micro_af3, synth_data, run, "--resume", steps=40), env=_env(),
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert _flat(f"--resume: skipping {newest}: optimizer.pt is") in _flat(finished.stderr), finished.stderr[-2000:]
    assert json.loads((run / "train_metrics.json").read_text())["resumed_from"] == str(previous)
    _same(_adapter(reference), _adapter(run))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes_the_same(micro_af3, synth_data, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_cmd(micro_af3, synth_data, reference, steps=40), check=True, env=_env(), capture_output=True,
                   timeout=600)
    run = tmp_path / "stopped"
    process = subprocess.Popen(_cmd(micro_af3, synth_data, run, steps=40), env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoint-2").exists() and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert "stopped by a signal" in stdout and "--resume" in stdout
    saved = [int(p.name.split("-")[1]) for p in run.glob("checkpoint-*")]
    assert saved and max(saved) < 40 and all(checkpoint_is_complete(p) for p in run.glob("checkpoint-*"))
    assert not (run / "adapter_model.safetensors").exists()  # not a finished run
    resumed = subprocess.run(_cmd(micro_af3, synth_data, run, "--resume", steps=40), env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "train_metrics.json").read_text())["resumed_from"].endswith(f"checkpoint-{max(saved)}")
    _same(_adapter(reference), _adapter(run))


@pytest.mark.parametrize("flag", ["--qlora", "--bf16"])
def test_gpu_only_flags_fail_fast_without_cuda(micro_af3, synth_data, tmp_path, flag):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run(_cmd(micro_af3, synth_data, tmp_path, flag), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "needs a CUDA GPU" in result.stderr and flag in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.glob("checkpoint-*"))
