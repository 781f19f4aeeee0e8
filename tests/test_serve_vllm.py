"""``--backend vllm``: the command it would run, and a clear message where vLLM cannot run (here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from audiotune.errors import ConfigError
from audiotune.serve.server import ServeConfig, serve_vllm, vllm_command


def test_command_carries_adapters_limits_and_key(micro_af3, tmp_path):
    adapters = {}
    for name, rank in (("captions", 16), ("asr", 32)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
        adapters[name] = str(folder)
    command = vllm_command(ServeConfig(model=str(micro_af3), adapters=adapters, port=9001, api_key="k",
                                       served_name="af3", max_batch_size=8))
    assert command[:3] == ["vllm", "serve", str(micro_af3)]
    joined = " ".join(command)
    assert "--port 9001" in joined and "--served-model-name af3" in joined
    assert "--api-key" not in command  # the key travels in the child's environment (tests/test_serve_security.py)
    assert "--enable-lora" in command and command[command.index("--max-lora-rank") + 1] == "32"
    lora = command.index("--lora-modules")
    assert command[lora + 1 : lora + 3] == [f"captions={adapters['captions']}", f"asr={adapters['asr']}"]
    assert json.loads(command[command.index("--limit-mm-per-prompt") + 1]) == {"audio": 1}
    assert command[command.index("--max-num-seqs") + 1] == "8"


def test_no_lora_flags_without_adapters(micro_af3):
    command = vllm_command(ServeConfig(model=str(micro_af3)))
    assert "--enable-lora" not in command and "--api-key" not in command


def test_missing_vllm_is_a_clear_error(micro_af3):
    if shutil.which("vllm"):
        pytest.skip("vLLM is installed on this machine")
    with pytest.raises(ConfigError, match="pip install vllm"):
        serve_vllm(ServeConfig(model=str(micro_af3), backend="vllm"))
    result = subprocess.run([sys.executable, "-m", "audiotune", "serve", "--model", str(micro_af3), "--backend",
                             "vllm"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "pip install vllm" in result.stderr and "Traceback" not in result.stderr
    printed = subprocess.run([sys.executable, "-m", "audiotune", "serve", "--model", str(micro_af3),
                              "--print-vllm-command"], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0 and printed.stdout.startswith("vllm serve ")
