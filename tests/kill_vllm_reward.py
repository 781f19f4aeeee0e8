"""A GRPO user reward (``--rewards tests/kill_vllm_reward.py:reward_killing_vllm``) that kills the vLLM rollout
server at chosen calls: a real death, mid-run, for tests/test_vllm_rollouts.py.

The reward is the accuracy plus 0.1 on every other completion of a group, so that no group's rewards are all equal:
every step's policy gradient is non-zero, and the test can check that the steps moved the adapter whatever the
completions (with the accuracy alone, a step whose groups all answered alike left the adapter as it was).

``$AUDIOTUNE_TEST_KILL_VLLM`` holds JSON: ``server_file`` (the trainer's ``vllm-rollouts/server.json``: the server's
pid and URL), ``at`` (the 1-based calls after which to kill it) and ``record`` (a JSON file of the calls so far and
the pids killed, so the count survives the reward module being loaded twice). After the kill it waits until the
server's port refuses connections: the next request meets a dead server, whatever the timing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from audiotune.rl.rewards import accuracy_reward

ENV = "AUDIOTUNE_TEST_KILL_VLLM"


def reward_killing_vllm(prompts, completions, **fields):
    plan = json.loads(os.environ[ENV])
    record = Path(plan["record"])
    state = json.loads(record.read_text()) if record.exists() else {"calls": 0, "killed": []}
    state["calls"] += 1
    if state["calls"] in plan["at"]:
        server = json.loads(Path(plan["server_file"]).read_text())
        os.killpg(server["pid"], signal.SIGKILL)  # the server and its engine processes, as the OOM killer would
        state["killed"].append(server["pid"])
        address = urlparse(server["url"])
        for _ in range(1_200):  # until the port refuses (a state); bounded, so that a bug cannot hang the test
            try:
                socket.create_connection((address.hostname, address.port), timeout=1).close()
            except OSError:
                break
            time.sleep(0.05)
    record.write_text(json.dumps(state))
    return [score + 0.1 * (i % 2) for i, score in enumerate(accuracy_reward(prompts, completions, **fields))]
