"""GRPO and DPO on two processes (torchrun, gloo on CPU), against one uninterrupted process on the same global batch.

One two-process run per method is killed right after its checkpoint at step 3 is in place (the test-only
``AUDIOTUNE_TEST_KILL`` hook, so the crash falls at a known point and nothing races) and then resumed. Its
checkpoint-3 shows that the same global batch makes the same updates as one process; its final adapter, after
``--resume``, that the resumed run continues exactly where the uninterrupted one went (GRPO: the window's saved
rollouts are replayed, and every completion's sampling seed depends only on the run's seed, the window and the
prompt's global position; DPO: the data order). The single-process reference runs in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

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


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "dpo"])
def test_two_processes_killed_and_resumed_match_one_uninterrupted(method, micro_af3, beeps, reward_file, tmp_path):
    reference, run = tmp_path / "one", tmp_path / "two"
    cfg, _ = parse(TrainConfig, _flags(method, micro_af3, beeps, reference, reward_file, 1), "audiotune train")
    train(cfg)

    killed = _two_processes(_flags(method, micro_af3, beeps, run, reward_file, 2), {KILL_ENV: f"renamed@{KILLED_AT}"})
    assert killed.returncode != 0 and not (run / "adapter_model.safetensors").exists(), killed.stderr[-3000:]
    checkpoint = run / f"checkpoint-{KILLED_AT}"
    assert checkpoint_is_complete(checkpoint)
    # The same global batch, the same updates: three optimizer steps on two processes as on one.
    assert _max_difference(reference / checkpoint.name, checkpoint) < TOLERANCE
    key = "reward" if method == "grpo" else "rewards/margins"  # rank 0 logs the mean over both processes
    assert _logged(checkpoint, key) == pytest.approx(_logged(reference / checkpoint.name, key), abs=1e-5)
    if method == "grpo":  # inside a replay window: each process saved the rollouts step 4 replays
        assert all((checkpoint / ROLLOUTS.format(rank=rank)).is_file() for rank in (0, 1))

    resumed = _two_processes(_flags(method, micro_af3, beeps, run, reward_file, 2) + ["--resume"], {})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "train_metrics.json").read_text())["resumed_from"] == str(checkpoint)
    assert _max_difference(reference, run) < TOLERANCE
    moved = load_file(reference / "adapter_model.safetensors")
    assert max(float(v.abs().max()) for k, v in moved.items() if "lora_B" in k) > 1e-3  # it did train
