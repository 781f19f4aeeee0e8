"""Checkpoints are atomic, a kill at any moment loses nothing, a signal saves and stops cleanly."""

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

from audiotune.checkpoints import checkpoint_is_complete, checkpoint_problem, checkpoint_steps


def _cmd(model, data, out, *extra, steps=12):
    return [sys.executable, "-m", "audiotune", "train", "--model", str(model), "--dataset", str(data),
            "--output-dir", str(out), "--max-steps", str(steps), "--save-steps", "2", "--eval-steps", "100",
            "--eval-take", "2", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1",
            "--learning-rate", "3e-3",
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


def _resumable(checkpoint) -> None:
    """Judged without checkpoint_problem(): every state --resume needs loads, and says the checkpoint's step."""
    step = int(checkpoint.name.split("-")[1])
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert _adapter(checkpoint)  # the weights
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert optimizer["state"] and optimizer["param_groups"]
    assert torch.load(checkpoint / "scheduler.pt", weights_only=True)["last_epoch"] == step
    rng = torch.load(checkpoint / "rng_state.pth", weights_only=False)
    assert {"python", "numpy", "cpu"} <= set(rng)


@pytest.mark.slow
def test_kills_where_a_save_is_most_fragile_never_cost_a_checkpoint(micro_af3, synth_data, tmp_path):
    """A test-only hook (AUDIOTUNE_TEST_KILL) SIGKILLs the run at each fragile point of a save: after its files are
    written (no marker), after the marker (not yet renamed into place), after the rename (the old ones not yet
    rotated out). Each time the kill is shown to have landed there, every checkpoint left loads whole, and resuming
    from them finishes with the adapter of a run never killed."""
    reference = tmp_path / "reference"
    subprocess.run(_cmd(micro_af3, synth_data, reference, steps=12), check=True, env=_env(), capture_output=True,
                   timeout=600)
    assert sorted(p.name for p in reference.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-12"]
    run = tmp_path / "killed"
    for point, step in (("files-written", 4), ("marked", 6), ("renamed", 8)):
        before = checkpoint_steps(run) if run.exists() else []
        killed = subprocess.run(_cmd(micro_af3, synth_data, run, "--resume", steps=12), capture_output=True, text=True,
                                env={**_env(), "AUDIOTUNE_TEST_KILL": f"{point}@{step}"}, timeout=600)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        expected = f"--resume: continuing from {before[-1][1]}." if before else "no complete checkpoint"
        assert _flat(expected) in _flat(killed.stderr), killed.stderr[-2000:]
        staged = run / ".staging" / f"checkpoint-{step}"
        left = [p.name for _, p in checkpoint_steps(run)]
        if point == "files-written":  # the new one is in staging without its marker; the older one is in place
            assert (staged / "optimizer.pt").exists() and not (staged / "checkpoint_complete.json").exists()
            assert left == ["checkpoint-2"]
        elif point == "marked":  # whole and marked, never renamed into place
            assert (staged / "checkpoint_complete.json").exists() and left == ["checkpoint-2", "checkpoint-4"]
        else:  # in place, the rotation (save_total_limit=2) not yet done
            assert left == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
        for _, checkpoint in checkpoint_steps(run):
            _resumable(checkpoint)
            assert checkpoint_is_complete(checkpoint), checkpoint_problem(checkpoint)
        assert not (run / "adapter_model.safetensors").exists()

    # A half-written optimizer.pt in the newest checkpoint: --resume passes it over, says so, takes the one before.
    (*_, (_, previous), (_, newest)) = checkpoint_steps(run)
    with (newest / "optimizer.pt").open("r+b") as handle:
        handle.truncate(handle.seek(0, os.SEEK_END) // 2)
    finished = subprocess.run(_cmd(micro_af3, synth_data, run, "--resume", steps=12), env=_env(),
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
