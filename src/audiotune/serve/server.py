"""Start a server: audiotune's own (the transformers engine + dynamic batching) or vLLM's (``vllm_server.py``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import ServeConfig
from ..errors import ConfigError

logger = logging.getLogger(__name__)


API_KEY_ENV = "AUDIOTUNE_API_KEY"


def resolve_api_key(cfg: ServeConfig, environ: dict[str, str] | None = None) -> str | None:
    """The key the server requires: ``--api-key``, else ``--api-key-file``, else ``$AUDIOTUNE_API_KEY``.

    Giving both the key and a key file is refused (which one was meant?). An empty key, file or
    variable is refused too: an empty secret would look configured and protect nothing.
    """
    environ = os.environ if environ is None else environ
    if cfg.api_key is not None and cfg.api_key_file is not None:
        raise ConfigError("--api-key and --api-key-file both given: keep one (the file keeps the key out of `ps`).")
    if cfg.api_key is not None:
        key, source = cfg.api_key, "--api-key"
    elif cfg.api_key_file is not None:
        path = Path(cfg.api_key_file)
        try:
            key = path.read_text().strip()
        except OSError as error:
            raise ConfigError(f"--api-key-file {path}: cannot read it ({error.strerror or error}).") from None
        source = f"--api-key-file {path}"
        if os.name == "posix" and path.stat().st_mode & 0o077:
            logger.warning("%s is open to other users (mode %o): chmod 600 it.", path, path.stat().st_mode & 0o777)
    elif environ.get(API_KEY_ENV) is not None:
        key, source = environ[API_KEY_ENV].strip(), f"${API_KEY_ENV}"
    else:
        return None
    if not key:
        raise ConfigError(f"{source} is empty: put the key there, or drop it to serve without a key.")
    return key


def build_app(cfg: ServeConfig):
    """The FastAPI app with its engine loaded (used by :func:`serve` and by tests/benchmarks)."""
    from .app import ServerSettings, create_app
    from ..engines import open_engine
    from .protocol import Limits

    api_key = resolve_api_key(cfg.validate())  # a bad flag, a missing or empty key file: before the model loads
    engine = open_engine("transformers", cfg.model, cfg.adapter_paths, served_name=cfg.served_name, device=cfg.device,
                         encoder_frames=cfg.engine.encoder_frames, generation=cfg.generation)
    family = engine.family
    limits = Limits(max_request_bytes=cfg.max_request_bytes,
                    max_audio_seconds=min(cfg.max_audio_seconds or family.max_audio_seconds, family.max_audio_seconds),
                    max_tokens=cfg.max_tokens, default_max_tokens=cfg.request_default_tokens,
                    allow_remote_audio=cfg.allow_remote_audio, remote_max_bytes=cfg.max_request_bytes,
                    remote_allow_hosts=tuple(cfg.remote_audio_allow_hosts),
                    require_audio=family.requires_audio and not cfg.allow_text_only)
    if cfg.server_timing:
        from ..models.facts import feature_extractor_of
        from ..profiling import instrument

        instrument(engine.model, family, feature_extractor_of(engine.processor))
    return create_app(engine, ServerSettings(cfg.max_batch_size, cfg.max_wait_ms, api_key, limits, cfg.server_timing))


def serve(cfg: ServeConfig) -> None:
    """Run until SIGTERM/SIGINT; in-flight requests finish first (30 s grace)."""
    if cfg.validate().engine.backend == "vllm":
        serve_vllm(cfg)
        return
    import uvicorn

    app = build_app(cfg)
    uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, timeout_graceful_shutdown=30,
                                  log_level="info", access_log=False)).run()


def serve_vllm(cfg: ServeConfig, startup_timeout_s: float = 900.0) -> None:
    """Start vLLM's OpenAI server (adapters exported for it), wait until it answers, stay attached until SIGTERM."""
    from .vllm_server import VllmServer

    server = VllmServer(cfg, api_key=resolve_api_key(cfg))
    server.start(startup_timeout_s)
    server.wait()
