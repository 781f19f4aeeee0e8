"""Start a server: audiotune's own (transformers + dynamic batching) or vLLM for GPU deployments."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    model: str
    adapters: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_name: str | None = None
    backend: str = "transformers"  # or "vllm"
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_request_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float | None = None  # None: the family's limit
    max_tokens: int = 1024
    allow_remote_audio: bool = False
    allow_text_only: bool = False
    device: str | None = None
    vllm_args: list[str] = field(default_factory=list)


def build_app(cfg: ServeConfig):
    """The FastAPI app with its engine loaded (used by :func:`serve` and by tests/benchmarks)."""
    from .app import ServerSettings, create_app
    from .engine import Engine
    from .protocol import Limits

    engine = Engine(cfg.model, cfg.adapters, served_name=cfg.served_name, device=cfg.device)
    family = engine.family
    limits = Limits(max_request_bytes=cfg.max_request_bytes,
                    max_audio_seconds=min(cfg.max_audio_seconds or family.max_audio_seconds, family.max_audio_seconds),
                    max_tokens=cfg.max_tokens, default_max_tokens=min(256, cfg.max_tokens),
                    allow_remote_audio=cfg.allow_remote_audio, remote_max_bytes=cfg.max_request_bytes,
                    require_audio=family.requires_audio and not cfg.allow_text_only)
    return create_app(engine, ServerSettings(cfg.max_batch_size, cfg.max_wait_ms, cfg.api_key, limits))


def serve(cfg: ServeConfig) -> None:
    """Run until SIGTERM/SIGINT; in-flight requests finish first (30 s grace)."""
    if cfg.backend == "vllm":
        serve_vllm(cfg)
        return
    if cfg.backend != "transformers":
        raise ConfigError(f"--backend {cfg.backend!r}: choose transformers or vllm.")
    import uvicorn

    app = build_app(cfg)
    uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, timeout_graceful_shutdown=30,
                                  log_level="info", access_log=False)).run()


def _lora_rank(path: str) -> int:
    config = Path(path) / "adapter_config.json"
    try:
        return int(json.loads(config.read_text()).get("r", 16))
    except (OSError, ValueError):
        raise ConfigError(f"{path}: cannot read adapter_config.json to size vLLM's --max-lora-rank.") from None


def vllm_command(cfg: ServeConfig) -> list[str]:
    """The ``vllm serve`` command line equivalent to ``cfg`` (LoRA adapters, limits, key, served name)."""
    from ..models.loading import resolve_family

    family = resolve_family(cfg.model)
    if not family.vllm_supported:
        raise ConfigError(f"vLLM does not serve the {family.name} family; use --backend transformers.")
    command = ["vllm", "serve", cfg.model, "--host", cfg.host, "--port", str(cfg.port),
               "--served-model-name", cfg.served_name or Path(cfg.model.rstrip("/")).name,
               "--limit-mm-per-prompt", json.dumps({"audio": 1}),
               "--max-num-seqs", str(cfg.max_batch_size)]
    if cfg.adapters:
        ranks = [_lora_rank(path) for path in cfg.adapters.values()]
        command += ["--enable-lora", "--max-lora-rank", str(max(ranks)), "--max-loras", str(len(cfg.adapters)),
                    "--lora-modules", *[f"{name}={path}" for name, path in cfg.adapters.items()]]
    if cfg.api_key:
        command += ["--api-key", cfg.api_key]
    if cfg.allow_remote_audio:
        command += ["--allowed-media-domains", "*"]
    return command + list(cfg.vllm_args)


def serve_vllm(cfg: ServeConfig, startup_timeout_s: float = 900.0) -> None:
    """Start ``vllm serve``, wait until its /health answers, then stay attached to it."""
    if shutil.which("vllm") is None:
        raise ConfigError("--backend vllm needs vLLM, which runs on CUDA GPUs: `pip install vllm` there, "
                          "or use --backend transformers.")
    import httpx

    command = vllm_command(cfg)
    logger.info("starting: %s", " ".join(command))
    process = subprocess.Popen(command)
    deadline = time.time() + startup_timeout_s
    url = f"http://{cfg.host}:{cfg.port}/health"
    while time.time() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"vllm serve exited with code {process.returncode} before answering; see its log above.")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                logger.info("vLLM answers on %s", url)
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    else:
        process.terminate()
        raise ConfigError(f"vllm serve did not answer on {url} within {startup_timeout_s:.0f} s.")
    process.wait()
