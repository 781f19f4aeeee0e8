"""``serve --backend vllm``: vLLM's OpenAI server as a child process, adapters exported for it.

The interpreter, environment and adapter export are every vLLM process's (:mod:`audiotune.engines.vllm_env`);
this module builds the server's command line and runs the child: started, healthy, stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engines.vllm_engine import vllm_sampling
from ..engines.vllm_env import (cpu_arguments, export_adapter, find_vllm_python, lora_rank, modality_lora,
                                on_cpu_only, require_vllm_family, vllm_environment)
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import ServeConfig
    from ..models.family import Family

logger = logging.getLogger(__name__)


def vllm_command(cfg: "ServeConfig", python: str = "python", adapters: dict[str, str] | None = None,
                 on_cpu: bool | None = None, family: "Family | None" = None) -> list[str]:
    """The vLLM server command equivalent to ``cfg``: adapters (exported), limits, served name; never the key.

    The API key is not on it (every user sees a command line in ``ps``): :func:`vllm_environment` passes it.
    """
    family = require_vllm_family(cfg.model, family)
    adapters = cfg.adapter_paths if adapters is None else adapters
    audio_lora = modality_lora(cfg.model, family, list(adapters.values()))
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", cfg.model,
               "--host", cfg.host, "--port", str(cfg.port),
               "--served-model-name", cfg.served_name or Path(cfg.model.rstrip("/")).name,
               "--limit-mm-per-prompt", json.dumps({"audio": 1}),
               "--max-num-seqs", str(cfg.max_batch_size)]
    if adapters:
        command += ["--enable-lora", "--max-lora-rank", str(max(lora_rank(p) for p in adapters.values())),
                    "--max-loras", str(len(adapters)),
                    "--lora-modules", *[f"{name}={path}" for name, path in adapters.items()]]
    if audio_lora:
        command += ["--enable-lora", "--max-lora-rank", str(audio_lora[1]),
                    "--default-mm-loras", json.dumps({"audio": audio_lora[0]})]
    if cfg.allow_remote_audio:  # validate() has required the hosts: vLLM cannot refuse inside addresses itself
        command += ["--allowed-media-domains", *cfg.remote_audio_allow_hosts]
    # A request's unset max_tokens/temperature/top_p get our settings, not the checkpoint's generation_config
    # (vLLM reads max_new_tokens there as the default max_tokens).
    defaults = vllm_sampling(cfg.generation)
    defaults.pop("max_tokens")
    defaults["max_new_tokens"] = cfg.request_default_tokens
    command += ["--override-generation-config", json.dumps(defaults)]
    if on_cpu_only() if on_cpu is None else on_cpu:
        command += cpu_arguments(cfg.vllm_args)
    return command + list(cfg.vllm_args)


class VllmServer:
    """A vLLM server child: exported adapters in a temporary folder, started, healthy, stopped (SIGTERM)."""

    def __init__(self, cfg: "ServeConfig", api_key: str | None = None, python: str | None = None) -> None:
        family = require_vllm_family(cfg.model)  # resolved once: the export and the command reuse it
        self.cfg, self.api_key = cfg, api_key
        self.python = find_vllm_python(python or cfg.engine.vllm_python)
        self.process: subprocess.Popen | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="audiotune-vllm-"))
        self.adapters = {name: str(export_adapter(cfg.model, path, self._folder / name, family))
                         for name, path in cfg.adapter_paths.items()}
        self.command = vllm_command(cfg, self.python, self.adapters, family=family)

    def start(self, timeout_s: float = 900.0) -> "VllmServer":
        import httpx

        logger.info("starting: %s", " ".join(self.command))
        # Its own process group, so that a child that ignores SIGTERM can be killed with its engine processes.
        self.process = subprocess.Popen(self.command, env=vllm_environment(self.api_key), start_new_session=True)
        url = f"http://{self.cfg.host}:{self.cfg.port}/health"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise ConfigError(f"vLLM exited with code {self.process.returncode} before answering; see its log "
                                  "above.")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    logger.info("vLLM answers on %s", url)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise ConfigError(f"vLLM did not answer on {url} within {timeout_s:.0f} s.")

    def wait(self) -> int:
        """Stay attached; SIGTERM/SIGINT to us stops the child first (vLLM drains its requests on SIGTERM)."""
        assert self.process is not None
        process = self.process

        def forward(*_: Any) -> None:  # only signal here: waiting inside a handler would deadlock Popen.wait
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self.process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
