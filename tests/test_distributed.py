"""Data-parallel training on CPU (torchrun, gloo): same adapter as one process; kills at random points resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest
from safetensors.torch import load_file

from audiotune.checkpoints import checkpoint_is_complete, checkpoint_problem, checkpoint_steps
from audiotune.train_config import TrainConfig
from audiotune.train import build_datasets
from tests.conftest import offline_entry

TOLERANCE = 1e-5  # float32 sums in a different order (gradient all-reduce) — documented in docs/scaling.md


def _cmd(model, data, out, *extra, nproc=1, batch=2, steps=8):
    return [sys.executable, "-m", "audiotune", "train", "--nproc", str(nproc), "--model", str(model),
            "--dataset", str(data), "--output-dir", str(out), "--max-steps", str(steps),
            "--per-device-train-batch-size", str(batch),
            "--gradient-accumulation-steps", "1", "--learning-rate", "3e-3", "--lora-dropout", "0",
            "--save-steps", "2", "--eval-steps", "100", "--eval-take", "2", "--eval-generate-take", "0",
            "--seed", "5", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _max_difference(a_dir, b_dir) -> float:
    a, b = load_file(a_dir / "adapter_model.safetensors"), load_file(b_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_process_run(micro_af3, synth_data, tmp_path_factory):
    """One uninterrupted 2-process run: the equality test's subject and the kill test's reference."""
    out = tmp_path_factory.mktemp("two-processes")
    run = subprocess.run(_cmd(micro_af3, synth_data, out, nproc=2, batch=2), env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run.stdout


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(micro_af3, synth_data, tmp_path, two_process_run):
    single, (double, stdout) = tmp_path / "one", two_process_run
    done = subprocess.run(_cmd(micro_af3, synth_data, single, batch=4), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert stdout.count("done 8 steps") == 1  # only rank 0 reports
    moved = load_file(single / "adapter_model.safetensors")
    assert max(float(v.abs().max()) for k, v in moved.items() if "lora_B" in k) > 1e-3  # it did train
    assert _max_difference(single, double) < TOLERANCE


def test_streaming_is_split_by_rank(synth_data, tmp_path, monkeypatch):
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        cfg = TrainConfig.from_flat(model="m", dataset=str(synth_data), output_dir=str(tmp_path), streaming=True)
        train_ds, _, _ = build_datasets(cfg, offline_entry("af3"), tmp_path)
        seen.append([example.id for example in train_ds])
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 38 and min(map(len, seen)) > 0


@pytest.mark.slow
def test_kill_a_two_process_run_at_random_points_then_resume(micro_af3, synth_data, tmp_path, two_process_run):
    reference, _ = two_process_run  # the same 8 steps, never interrupted
    run = tmp_path / "killed"
    rng = random.Random(1)
    for attempt, target in enumerate((2, 4)):
        before = checkpoint_steps(run) if run.exists() else []
        log = tmp_path / f"attempt-{attempt}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(_cmd(micro_af3, synth_data, run, "--resume", nproc=2), env=_env(),
                                       stdout=subprocess.DEVNULL, stderr=stderr)
            deadline = time.time() + 300
            while not (run / f"checkpoint-{target}").exists() and process.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.2))
            assert process.poll() is None, "the run ended before the kill"
            # The CLI, torchrun and both workers at once, like a lost node. torchrun starts each worker in a
            # session of its own, so killing the CLI's process group would leave the workers training on.
            tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            for member in tree:
                member.send_signal(signal.SIGKILL)
            assert process.wait() == -signal.SIGKILL
            _, alive = psutil.wait_procs(tree, timeout=60)
            assert len(tree) >= 4 and not alive, (tree, alive)  # the CLI, torchrun, two workers
        # Both ranks resumed from the newest checkpoint the previous kill left (the first attempt had none).
        text = "".join(log.read_text().split())  # rich wraps long log lines
        if before:
            assert text.count("".join(f"--resume: continuing from {before[-1][1]}.".split())) == 2, text[-2000:]
        else:
            assert text.count("--resume:nocompletecheckpoint") == 2, text[-2000:]
        assert checkpoint_steps(run)[-1][0] >= target
        for _, checkpoint in checkpoint_steps(run):
            assert checkpoint_is_complete(checkpoint), checkpoint_problem(checkpoint)
    newest = checkpoint_steps(run)[-1][1]
    finished = subprocess.run(_cmd(micro_af3, synth_data, run, "--resume", nproc=2), env=_env(),
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert json.loads((run / "train_metrics.json").read_text())["resumed_from"] == str(newest)
    assert _max_difference(reference, run) < TOLERANCE


def test_shipped_accelerate_configs_are_valid():
    from pathlib import Path

    import yaml

    folder = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
    kinds = {}
    for path in sorted(folder.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        kinds[path.stem] = config["distributed_type"]
        assert config["mixed_precision"] == "bf16" and config["num_machines"] == 1
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    assert yaml.safe_load((folder / "fsdp.yaml").read_text())["fsdp_config"]["fsdp_use_orig_params"] is True
