"""``serve --backend vllm``: vLLM's OpenAI server as a child process, adapters exported or merged for it.

The interpreter, environment and adapter plan are every vLLM process's (:mod:`audiotune.engines.vllm_env`);
this module builds the servers' command lines and runs the children: started, healthy, stopped.

vLLM serves one base model per process, with LoRA adapters on it. An adapter its LoRA cannot load (a trained
projector, an encoder LoRA) is served from a merged copy of the base, by a vLLM process of its own. With no such
adapter the one child listens on ``--host``/``--port`` itself, as before; with one or more, every child listens on a
loopback port and a small router (:func:`router_app`) answers on ``--port``: it sends each request to the child that
serves the request's ``model`` and lists every child's models on ``GET /v1/models``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engines.vllm_engine import vllm_sampling
from ..engines.vllm_env import (cpu_arguments, find_vllm_python, lora_rank, modality_lora, on_cpu_only,
                                require_vllm_family, vllm_adapters, vllm_environment)
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


# vLLM's default share of GPU memory for one process (--gpu-memory-utilization, vllm/config/cache.py): split
# between the processes when a merged adapter adds one, since each would otherwise claim it all.
GPU_MEMORY_SHARE = 0.9
# Headers that belong to one hop (RFC 9110 section 7.6.1) or that httpx/Starlette recompute for the next one.
HOP_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length"}


@dataclass
class Child:
    """One vLLM server process: the model names it serves, its command, where it answers."""

    names: list[str]
    command: list[str]
    url: str
    process: subprocess.Popen | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """vLLM server children (the base with its LoRA adapters, one per merged adapter), and the router in front of
    them when there is more than one: started, healthy, stopped (SIGTERM)."""

    def __init__(self, cfg: "ServeConfig", api_key: str | None = None, python: str | None = None, *,
                 environ: dict[str, str] | None = None, log: str | Path | None = None) -> None:
        """``environ``: more variables for the children (GRPO's rollout server turns on runtime LoRA loading);
        ``log``: a file for their output (default: this process's)."""
        family = require_vllm_family(cfg.model)  # resolved once: the adapter plan and the commands reuse it
        self.cfg, self.api_key, self.environ, self.log = cfg, api_key, dict(environ or {}), log
        self.python = find_vllm_python(python or cfg.engine.vllm_python)
        self._folder = Path(tempfile.mkdtemp(prefix="audiotune-vllm-"))
        try:
            plan = vllm_adapters(cfg.model, cfg.adapter_paths, family, self._folder)
        except BaseException:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        self.adapters, self.merged = plan.lora, plan.merged
        self._router: Any = None
        self._router_thread: threading.Thread | None = None
        base_name = cfg.served_name or Path(cfg.model.rstrip("/")).name
        if not self.merged:
            self.children = [Child([base_name, *self.adapters],
                                   vllm_command(cfg, self.python, self.adapters, family=family),
                                   f"http://{cfg.host}:{cfg.port}")]
        else:
            share = [] if on_cpu_only() or "--gpu-memory-utilization" in cfg.vllm_args else [
                "--gpu-memory-utilization", f"{GPU_MEMORY_SHARE / (1 + len(self.merged)):.3f}"]
            models = [(base_name, cfg.model, self.adapters)] + [(n, m, {}) for n, m in self.merged.items()]
            self.children = []
            for name, model, adapters in models:
                child = replace(cfg, model=model, served_name=name, adapters=[], host="127.0.0.1", port=free_port(),
                                vllm_args=[*cfg.vllm_args, *share])
                self.children.append(Child([name, *adapters], vllm_command(child, self.python, adapters,
                                                                           family=family),
                                           f"http://127.0.0.1:{child.port}"))
        self.command = self.children[0].command

    def start(self, timeout_s: float = 900.0) -> "VllmServer":
        import httpx

        env = {**vllm_environment(self.api_key), **self.environ}
        output = open(self.log, "ab") if self.log is not None else None  # noqa: SIM115  (the children keep it)
        for child in self.children:
            logger.info("starting: %s", " ".join(child.command))
            # Its own process group, so that a child that ignores SIGTERM can be killed with its engine processes.
            child.process = subprocess.Popen(child.command, env=env, start_new_session=True, stdout=output,
                                             stderr=subprocess.STDOUT if output else None)
        if output is not None:
            output.close()  # the children hold their own descriptors
        deadline = time.monotonic() + timeout_s
        waiting = list(self.children)
        while waiting and time.monotonic() < deadline:
            for child in list(waiting):
                assert child.process is not None
                if child.process.poll() is not None:
                    self.stop()
                    raise ConfigError(f"vLLM ({', '.join(child.names)}) exited with code {child.process.returncode} "
                                      f"before answering; see {self.log or 'its log above'}.")
                try:
                    if httpx.get(f"{child.url}/health", timeout=2).status_code == 200:
                        logger.info("vLLM answers on %s for %s", child.url, ", ".join(child.names))
                        waiting.remove(child)
                except httpx.HTTPError:
                    pass
            if waiting:
                time.sleep(1)
        if waiting:
            self.stop()
            raise ConfigError(f"vLLM did not answer on {waiting[0].url} within {timeout_s:.0f} s.")
        if len(self.children) > 1:
            self._start_router()
        return self

    def _start_router(self) -> None:
        """The router on ``--host``/``--port``, in a thread of this process (uvicorn leaves signals to us there)."""
        import uvicorn

        routes = {name: child.url for child in self.children for name in child.names}
        config = uvicorn.Config(router_app(routes, self.children[0].url), host=self.cfg.host, port=self.cfg.port,
                                log_level="warning", access_log=False, timeout_graceful_shutdown=30)
        self._router = uvicorn.Server(config)
        self._router_thread = threading.Thread(target=self._router.run, name="vllm-router", daemon=True)
        self._router_thread.start()
        while not self._router.started:
            if not self._router_thread.is_alive():
                self.stop()
                raise ConfigError(f"the router could not listen on {self.cfg.host}:{self.cfg.port} (in use?); "
                                  "choose another --port.")
            time.sleep(0.05)
        logger.info("serving %s on http://%s:%d", ", ".join(routes), self.cfg.host, self.cfg.port)

    def wait(self) -> int:
        """Stay attached until a child ends; SIGTERM/SIGINT to us stops every child first (vLLM drains its requests
        on SIGTERM). One child ending stops the others: a server missing some of its models is not kept running."""
        processes = [child.process for child in self.children]
        assert all(p is not None for p in processes)

        def forward(*_: Any) -> None:  # only signal here: waiting inside a handler would deadlock Popen.wait
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while all(p.poll() is None for p in processes):
                time.sleep(0.5)
            ended = next(p for p in processes if p.returncode is not None)
            return ended.returncode
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self, grace_s: float = 30.0) -> None:
        if self._router is not None:
            self._router.should_exit = True
            if self._router_thread is not None:
                self._router_thread.join(grace_s)
            self._router = None
        for child in self.children if hasattr(self, "children") else []:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in self.children if hasattr(self, "children") else []:
            if child.process is not None and child.process.poll() is None:
                try:
                    child.process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    os.killpg(child.process.pid, signal.SIGKILL)
                    child.process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def router_app(routes: dict[str, str], default: str) -> Any:
    """The front of several vLLM servers: a request goes to the server of its ``model`` (JSON body or form field;
    an unknown or missing name to ``default``, the base's server, which answers vLLM's own 404), streamed both ways;
    ``GET /v1/models`` lists every server's models (each checks the caller's key itself, so a refusal passes
    through). Authentication, limits and errors stay vLLM's: the router only forwards."""
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=None)
    servers = list(dict.fromkeys([default, *routes.values()]))

    def forwarded(headers: Any) -> dict[str, str]:
        return {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}

    async def model_of(request: Request, body: bytes) -> str | None:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):  # the audio API's upload; Starlette re-reads the cached body
            value = (await request.form()).get("model")
            return value if isinstance(value, str) else None
        try:
            value = json.loads(body).get("model") if body else None
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    async def models(request: Request) -> Response:
        data = []
        for url in servers:
            answer = await client.get(f"{url}/v1/models", headers=forwarded(request.headers))
            if answer.status_code != 200:
                return Response(answer.content, answer.status_code, headers=forwarded(answer.headers))
            data += answer.json()["data"]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        for url in servers:
            try:
                if (await client.get(f"{url}/health")).status_code != 200:
                    return Response(status_code=503)
            except httpx.HTTPError:
                return Response(status_code=503)
        return Response(status_code=200)

    async def forward(request: Request) -> Response:
        body = await request.body()
        url = routes.get(await model_of(request, body) or "", default)
        upstream = client.build_request(request.method, url + request.url.path, params=request.query_params,
                                        headers=forwarded(request.headers), content=body)
        answer = await client.send(upstream, stream=True)
        return StreamingResponse(answer.aiter_raw(), answer.status_code, headers=forwarded(answer.headers),
                                 background=BackgroundTask(answer.aclose))

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/v1/models", models, methods=["GET"]), Route("/health", health),
                             Route("/{path:path}", forward, methods=methods)])
