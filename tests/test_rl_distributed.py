"""GRPO and DPO on two processes (torchrun, gloo on CPU), against one uninterrupted process on the same global batch.

Each method's checkpoint-3 on two processes shows that the same global batch makes the same updates as on one, and
a run stopped at step 3 and resumed ends with the uninterrupted run's adapter. The GRPO two-process run is killed
right after its checkpoint-3 is in place (the test-only ``AUDIOTUNE_TEST_KILL`` hook: the crash falls at a known
point, nothing races) and resumed: step 4 replays the window's saved rollouts on each process, and every
completion's sampling seed depends only on the run's seed, the window and the prompt's global position. The
single-process runs run in this process (no start-up cost).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback

from audiotune.checkpoints import KILL_ENV, checkpoint_is_complete
from audiotune.cli_args import parse
from audiotune.rl.grpo import ROLLOUTS
from audiotune.train import train
from audiotune.train_config import TrainConfig
from tests.test_grpo import beeps  # noqa: F401 (a fixture)

# float32 sums in another order (the gradient all-reduce, per-process batches): as tests/test_distributed.py
TOLERANCE = 1e-5
STEPS, KILLED_AT = 4, 3  # GRPO replays each window twice (--num-iterations 2): step 3 falls inside a window

REWARD = '''
def length(prompts, completions, **fields):
    """Varies within every group (the micro model's completions are noise), so the policy gradient is not zero."""
    return [float(len(c)) for c in completions]
'''


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "lengths.py"
    path.write_text(REWARD)
    return path


def _flags(method: str, model, data, out, reward, processes: int) -> list[str]:
    """The same global batch on one or two processes: per-device batch halved with two."""
    flags = ["--model", str(model), "--dataset", str(data), "--output-dir", str(out), "--method", method,
             "--max-steps", str(STEPS), "--save-steps", str(KILLED_AT), "--learning-rate", "3e-3",
             "--logging-steps", "1", "--seed", "5", "--eval-take", "2", "--eval-generate-take", "0"]
    if method == "grpo":  # 2 prompts × 2 micro-batches a step, groups of 4, the batch's std, each window twice
        return [*flags, "--task", "mcq", "--per-device-train-batch-size", str(2 // processes),
                "--gradient-accumulation-steps", "2", "--num-generations", "4", "--max-completion-length", "3",
                "--num-iterations", "2", "--scale-rewards", "batch", "--rewards", f"{reward}:length"]
    # 4 pairs a step over 8 rows: the resumed step 4 starts the second epoch's second batch
    return [*flags, "--per-device-train-batch-size", str(4 // processes), "--gradient-accumulation-steps", "1",
            "--train-take", "8"]


def _two_processes(flags: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audiotune", "train", "--nproc", "2", *flags],
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True,
                          timeout=600)


def _max_difference(a_dir, b_dir) -> float:
    a, b = load_file(a_dir / "adapter_model.safetensors"), load_file(b_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _logged(checkpoint, key: str) -> list[float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [h[key] for h in history if "loss" in h]


class _SigtermAt(TrainerCallback):
    """Sends this process SIGTERM as step ``step`` begins: audiotune's graceful stop (``checkpoints.py``) finishes
    the step, saves checkpoint-``step`` and stops, as on a preemption."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def _reference(method: str, model, data, out, reward):
    """One process, uninterrupted (it saves checkpoint-3 on its way)."""
    cfg, _ = parse(TrainConfig, _flags(method, model, data, out, reward, 1), "audiotune train")
    train(cfg)
    trained = load_file(out / "adapter_model.safetensors")
    assert max(float(v.abs().max()) for k, v in trained.items() if "lora_B" in k) > 1e-3  # it did train


def _same_steps_so_far(reference, checkpoint, key: str) -> None:
    """Three optimizer steps on two processes as on one: the adapter, and the value rank 0 logged (its mean over
    both processes)."""
    assert _max_difference(reference / checkpoint.name, checkpoint) < TOLERANCE
    assert _logged(checkpoint, key) == pytest.approx(_logged(reference / checkpoint.name, key), abs=1e-5)


@pytest.mark.slow
def test_grpo_on_two_processes_killed_and_resumed_matches_one_uninterrupted(micro_af3, beeps, reward_file, tmp_path):
    reference, run = tmp_path / "one", tmp_path / "two"
    _reference("grpo", micro_af3, beeps, reference, reward_file)
    flags = _flags("grpo", micro_af3, beeps, run, reward_file, 2)
    killed = _two_processes(flags, {KILL_ENV: f"renamed@{KILLED_AT}"})
    assert killed.returncode != 0 and not (run / "adapter_model.safetensors").exists(), killed.stderr[-3000:]
    checkpoint = run / f"checkpoint-{KILLED_AT}"
    assert checkpoint_is_complete(checkpoint)
    _same_steps_so_far(reference, checkpoint, "reward")
    # inside a replay window: each process saved the rollouts that step 4 replays
    assert all((checkpoint / ROLLOUTS.format(rank=rank)).is_file() for rank in (0, 1))

    resumed = _two_processes([*flags, "--resume"], {})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "train_metrics.json").read_text())["resumed_from"] == str(checkpoint)
    assert _max_difference(reference, run) < TOLERANCE


@pytest.mark.slow
def test_dpo_on_two_processes_matches_one_and_a_stopped_run_resumes_the_same(micro_af3, beeps, tmp_path):
    """DPO keeps no state of its own: its resume is the Trainer's (the data order), whose two-process kill and
    resume tests/test_distributed.py proves for SFT; here one process is stopped and resumed."""
    reference, run, stopped = tmp_path / "one", tmp_path / "two", tmp_path / "stopped"
    _reference("dpo", micro_af3, beeps, reference, None)
    done = _two_processes(_flags("dpo", micro_af3, beeps, run, None, 2), {})
    assert done.returncode == 0, done.stderr[-3000:]
    _same_steps_so_far(reference, run / f"checkpoint-{KILLED_AT}", "rewards/margins")
    assert _max_difference(reference, run) < TOLERANCE

    flags = _flags("dpo", micro_af3, beeps, stopped, None, 1)
    assert train(parse(TrainConfig, flags, "audiotune train")[0], callbacks=[_SigtermAt(KILLED_AT)]).interrupted
    assert not (stopped / "adapter_model.safetensors").exists()
    resumed = train(parse(TrainConfig, [*flags, "--resume"], "audiotune train")[0])
    assert resumed.resumed_from == str(stopped / f"checkpoint-{KILLED_AT}") and resumed.steps == STEPS
    assert _max_difference(reference, stopped) < TOLERANCE
