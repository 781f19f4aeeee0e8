"""Every adapter serves on vLLM (#26.2): LM-only LoRA takes vLLM's LoRA path; an adapter that trains the projector
(``modules_to_save``) or the audio encoder is merged into a cached copy of the base that vLLM serves as a model of
its own, next to the base and its LoRA adapters behind one ``serve --backend vllm``.

The plan and the cache are checked on the micro AF3 (fast); the server on the default tiny AF3 with real vLLM
(`make vllm-env`; vLLM's CPU attention has no kernel for the micro preset's head size 16), one server for the module.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from audiotune.engines.vllm_env import merged_copy, vllm_adapters
from audiotune.models.loading import AdaptationPlan, load_model, prepare_for_training
from tests.conftest import tone
from tests.test_serve_vllm import _b64, _free_port, _vllm_python


def _adapter(model_dir: Path, family, out: Path, plan: AdaptationPlan) -> Path:
    """An adapter of ``plan``'s kind whose every trained tensor is moved off its initial value (LoRA's B starts at
    zero, a saved module as the base's copy): merged or not, it changes what the model computes."""
    model, _ = load_model(model_dir)
    peft = prepare_for_training(model, family, plan)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in peft.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def micro_adapters(micro_af3, family, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("micro-adapters")
    return {"lm": _adapter(micro_af3, family, root / "lm", AdaptationPlan(lora_r=4)),
            "projector": _adapter(micro_af3, family, root / "projector", AdaptationPlan(lora_r=4,
                                                                                       train_projector=True)),
            "encoder": _adapter(micro_af3, family, root / "encoder", AdaptationPlan(lora_r=4,
                                                                                   train_audio_encoder="lora"))}


def test_lm_only_lora_is_exported_and_the_others_merged(micro_af3, family, micro_adapters, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOTUNE_CACHE", str(tmp_path / "cache"))
    plan = vllm_adapters(str(micro_af3), {k: str(v) for k, v in micro_adapters.items()}, family, tmp_path / "export")
    assert set(plan.lora) == {"lm"} and set(plan.merged) == {"projector", "encoder"}
    assert (Path(plan.lora["lm"]) / "adapter_model.safetensors").is_file()
    assert all(Path(folder).parent == tmp_path / "cache" / "vllm-merged" for folder in plan.merged.values())
    # The merged copy carries the trained projector as the adapter saved it (read from the adapter's own file).
    saved = load_file(micro_adapters["projector"] / "adapter_model.safetensors")
    projector = {k.removeprefix("base_model.model."): v for k, v in saved.items() if ".lora_" not in k}
    assert projector and all("projector" in k for k in projector)
    merged, _ = load_model(plan.merged["projector"])
    base, _ = load_model(str(micro_af3))
    merged_state, base_state = merged.state_dict(), base.state_dict()
    for name, tensor in projector.items():
        name = name.replace(".modules_to_save.default", "")
        assert torch.equal(merged_state[name], tensor) and not torch.equal(base_state[name], tensor), name
    # The encoder-LoRA copy's audio tower moved off the base's (vLLM's LoRA would have left it untrained).
    merged, _ = load_model(plan.merged["encoder"])
    tower = [n for n in merged.state_dict() if family.is_encoder_module(n) and n.endswith("q_proj.weight")]
    assert tower and not torch.equal(merged.state_dict()[tower[0]], base_state[tower[0]])


@pytest.mark.parametrize("name", ["qwen2audio", "granite_speech"])
def test_a_family_without_vllm_lora_serves_even_an_lm_only_adapter_merged(name, tmp_path, monkeypatch):
    """Qwen2-Audio's vLLM code takes no LoRA; Granite Speech 3.3's own audio LoRA takes the one vLLM applies per
    request: an LM-only adapter, which AF3 serves on the LoRA path, is merged for them (it used to be refused)."""
    from audiotune.models.loading import resolve_family
    from audiotune.models.tiny import cached_tiny

    monkeypatch.setenv("AUDIOTUNE_CACHE", str(tmp_path / "cache"))
    model = cached_tiny(name)
    family = resolve_family(str(model))
    assert (not family.vllm_lora) if name == "qwen2audio" else (model / "adapter_config.json").is_file()
    adapter = _adapter(model, family, tmp_path / "lm", AdaptationPlan(lora_r=4))
    plan = vllm_adapters(str(model), {"lm": str(adapter)}, family, tmp_path / "export")
    assert plan.lora == {} and set(plan.merged) == {"lm"}
    # The base keeps its own audio LoRA for requests to the base; the merged copy has it folded in, so vLLM must not
    # apply it a second time (no adapter_config.json in the copy).
    assert plan.audio_lora == (None if name == "qwen2audio" else (str(model), 8))
    assert (Path(plan.merged["lm"]) / "config.json").is_file()
    assert not (Path(plan.merged["lm"]) / "adapter_config.json").exists()


def test_the_merged_copy_is_reused_until_the_adapter_changes(micro_af3, micro_adapters, tmp_path, caplog,
                                                             monkeypatch):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for file in micro_adapters["projector"].iterdir():
        (adapter / file.name).write_bytes(file.read_bytes())
    root = tmp_path / "merged"
    with caplog.at_level(logging.INFO, logger="audiotune"):
        first = merged_copy(str(micro_af3), adapter, root)
        made = (first / "model.safetensors").stat().st_mtime_ns
        caplog.clear()
        again = merged_copy(str(micro_af3), adapter, root)
    assert again == first and (first / "model.safetensors").stat().st_mtime_ns == made
    assert "reused" in caplog.text and "merging" not in caplog.text
    # Retrained (other bytes, same names): a new copy, the old one left for whoever still serves it.
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, adapter / "adapter_model.safetensors",
              metadata={"format": "pt"})
    changed = merged_copy(str(micro_af3), adapter, root)
    assert changed != first and (changed / "config.json").is_file() and (first / "config.json").is_file()
    # A merge killed half-way (its temporary folder, its process gone) is never taken for a copy: it is cleared and
    # the merge runs again into a complete folder.
    save_file({k: v + 0.02 for k, v in weights.items()}, adapter / "adapter_model.safetensors",
              metadata={"format": "pt"})
    key = _key_of(micro_af3, adapter, root)
    half = root / f"{key}.tmp999999999"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    fresh = merged_copy(str(micro_af3), adapter, root)
    assert fresh.name == key and (fresh / "config.json").is_file() and not half.exists()
    # Stopped after the files are written but before the merge returns (Ctrl-C): nothing under the key is left.
    import audiotune.merge

    real = audiotune.merge.merge_adapter

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    save_file({k: v + 0.03 for k, v in weights.items()}, adapter / "adapter_model.safetensors",
              metadata={"format": "pt"})
    key = _key_of(micro_af3, adapter, root)
    monkeypatch.setattr(audiotune.merge, "merge_adapter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merged_copy(str(micro_af3), adapter, root)
    assert not [p for p in root.iterdir() if p.name.startswith(key)]
    monkeypatch.setattr(audiotune.merge, "merge_adapter", real)
    with caplog.at_level(logging.INFO, logger="audiotune"):
        caplog.clear()
        assert (merged_copy(str(micro_af3), adapter, root) / "config.json").is_file()
    assert "merging" in caplog.text


def _key_of(model: Path, adapter: Path, root: Path) -> str:
    """The cache key merged_copy would use, learned by merging into a scratch root (the name is the key)."""
    return merged_copy(str(model), adapter, root.with_name(root.name + "-scratch")).name


def _upstream(tag: str, names: list[str]):
    """A stand-in for one vLLM server (its routes' shapes): says which server answered, and for which model."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def models(request):
        if request.headers.get("authorization") != "Bearer k":
            return JSONResponse({"error": "Unauthorized"}, 401)
        return JSONResponse({"object": "list", "data": [{"id": n} for n in names]})

    async def answer(request):
        kind = request.headers.get("content-type", "")
        body = await request.json() if kind.startswith("application/json") else dict(await request.form())
        if body.get("stream"):
            async def chunks():
                for i in range(3):
                    yield f"data: {tag}{i}\n\n".encode()
            return StreamingResponse(chunks(), media_type="text/event-stream")
        return JSONResponse({"server": tag, "model": body.get("model"), "query": dict(request.query_params)})

    async def health(request):
        return Response(status_code=200)

    return Starlette(routes=[Route("/v1/models", models), Route("/health", health),
                             Route("/v1/chat/completions", answer, methods=["POST"]),
                             Route("/v1/audio/transcriptions", answer, methods=["POST"])])


def test_the_router_sends_each_request_to_the_server_of_its_model():
    """Beyond what the real-vLLM test reaches: an audio upload (multipart form) routed by its model field, a query
    string kept, an unknown model sent to the base's server (whose 404 names the models), a refusal passed on."""
    import threading

    import uvicorn

    from audiotune.serve.vllm_server import router_app

    def run(app) -> str:
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    main, merged = run(_upstream("main", ["base", "lm"])), run(_upstream("merged", ["proj"]))
    router = run(router_app({"base": main, "lm": main, "proj": merged}, main))
    key = {"Authorization": "Bearer k"}
    assert [m["id"] for m in httpx.get(f"{router}/v1/models", headers=key).json()["data"]] == ["base", "lm", "proj"]
    assert httpx.get(f"{router}/v1/models").status_code == 401
    for model, server in (("base", "main"), ("lm", "main"), ("proj", "merged"), ("other", "main")):
        answer = httpx.post(f"{router}/v1/chat/completions?trace=1", json={"model": model}).json()
        assert answer == {"server": server, "model": model, "query": {"trace": "1"}}
    upload = httpx.post(f"{router}/v1/audio/transcriptions", data={"model": "proj"}, files={"file": ("a.wav", b"x")})
    assert upload.json()["server"] == "merged"
    with httpx.stream("POST", f"{router}/v1/chat/completions", json={"model": "proj", "stream": True}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.read() == b"data: merged0\n\ndata: merged1\n\ndata: merged2\n\n"


# --- real vLLM ------------------------------------------------------------------------------------------------

PROMPT = "Describe the audio."


@pytest.fixture(scope="module")
def projector_adapter(tmp_path_factory, tiny_af3, synth_data) -> Path:
    """LoRA on the language model and a trained projector (modules_to_save), trained as `trained_adapter` is, so
    that its greedy answers are clear of the near-ties where two float32 kernels may part."""
    from audiotune.train import train
    from audiotune.train_config import TrainConfig

    out = tmp_path_factory.mktemp("projector-adapter")
    train(TrainConfig.from_flat(model=str(tiny_af3), dataset=str(synth_data), output_dir=str(out),
                                per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=3e-3,
                                warmup_steps=4, max_steps=40, logging_steps=5, eval_split=None, save_steps=40,
                                train_projector=True, seed=0))
    return out


@pytest.fixture(scope="module")
def mixed_server(tiny_af3, trained_adapter, projector_adapter, tmp_path_factory):
    """One `serve --backend vllm` with the base, an LM-only adapter ("lm", vLLM's LoRA path) and a projector adapter
    ("proj", a merged copy in its own vLLM process): (base URL, its log, the cache folder it merged into)."""
    python, port = _vllm_python(), _free_port()
    root = tmp_path_factory.mktemp("mixed-server")
    (root / "key").write_text("mixed-key\n")
    log = root / "serve.log"  # vLLM logs a lot: a pipe nobody reads would fill and stall it
    env = {**os.environ, "AUDIOTUNE_CACHE": str(root / "cache"), "COLUMNS": "1000"}  # log lines unwrapped
    process = subprocess.Popen([sys.executable, "-m", "audiotune", "serve", "--backend", "vllm", "--vllm-python",
                                str(python), "--model", str(tiny_af3), "--adapter", f"lm={trained_adapter}",
                                "--adapter", f"proj={projector_adapter}", "--served-name", "base", "--port",
                                str(port), "--api-key-file", str(root / "key")],
                               stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise AssertionError("the vLLM servers did not start within 900 s:\n" + log.read_text()[-3000:])
        yield url, log, root / "cache"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=180)
    assert code == 0 or code == -signal.SIGTERM, log.read_text()[-3000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)  # the router is gone


def _native_answer(model_dir: Path, adapter: Path | None, wave) -> str:
    """audiotune's own engine (transformers, PEFT adapter unmerged): the reference, computed without vLLM."""
    from audiotune.generate import GenerationSettings, examples_from_audio, generate
    from audiotune.models.loading import load_processor

    model, family = load_model(model_dir, adapter=adapter)
    return generate(model, load_processor(adapter or model_dir), family, examples_from_audio([wave], PROMPT),
                    settings=GenerationSettings(max_new_tokens=16))[0]


@pytest.mark.slow
def test_one_vllm_server_answers_the_base_a_lora_and_a_merged_adapter_as_the_native_backend(
        mixed_server, tiny_af3, trained_adapter, projector_adapter):
    from openai import AuthenticationError, OpenAI

    url, log, _ = mixed_server
    client = OpenAI(base_url=f"{url}/v1", api_key="mixed-key", max_retries=0, timeout=300)
    assert sorted(m.id for m in client.models.list().data) == ["base", "lm", "proj"]
    wave = tone(2.0, 220)
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": _b64(wave),
                                                                                      "format": "wav"}},
                                             {"type": "text", "text": PROMPT}]}]
    answers = {name: client.chat.completions.create(model=name, messages=messages, temperature=0,
                                                    max_tokens=16).choices[0].message.content.strip()
               for name in ("base", "lm", "proj")}
    expected = {"base": _native_answer(tiny_af3, None, wave), "lm": _native_answer(tiny_af3, trained_adapter, wave),
                "proj": _native_answer(tiny_af3, projector_adapter, wave)}
    assert answers == expected
    assert len(set(answers.values())) == 3, answers  # three models, three answers: each request met its own
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="proj", messages=messages, temperature=0, max_tokens=16, stream=True) if chunk.choices)
    assert streamed.strip() == answers["proj"]  # the router streams the merged model's tokens through
    with pytest.raises(AuthenticationError):  # every vLLM process checks the key; the router passes refusals on
        OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="proj", messages=messages, max_tokens=4)
    assert re.search(r"adapter proj .*modules_to_save.*serving a merged copy", log.read_text())


@pytest.mark.slow
def test_a_second_start_reuses_the_merged_copy(mixed_server, tiny_af3, trained_adapter, projector_adapter,
                                               monkeypatch, caplog):
    """The server merged once into the cache; the next start (the plan and the commands, up to launching vLLM) finds
    the copy and serves it again, unchanged."""
    from audiotune.serve.server import ServeConfig
    from audiotune.serve.vllm_server import VllmServer

    _, log, cache = mixed_server
    made = re.findall(r"merging adapter \S+ with base \S+ for vLLM into (\S+)", log.read_text())
    assert len(made) == 1 and Path(made[0]).parent == cache / "vllm-merged", log.read_text()[-3000:]
    written = (Path(made[0]) / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setenv("AUDIOTUNE_CACHE", str(cache))
    with caplog.at_level(logging.INFO, logger="audiotune"):
        cfg = ServeConfig.from_flat(model=str(tiny_af3), served_name="base",
                                    adapters={"lm": str(trained_adapter), "proj": str(projector_adapter)})
        server = VllmServer(cfg, python=str(_vllm_python()))
    try:
        assert server.merged == {"proj": made[0]} and set(server.adapters) == {"lm"}
        assert [c.names for c in server.children] == [["base", "lm"], ["proj"]]
        assert server.children[1].command[server.children[1].command.index("--model") + 1] == made[0]
        assert "reused" in caplog.text and "merging" not in caplog.text
        assert (Path(made[0]) / "model.safetensors").stat().st_mtime_ns == written
    finally:
        server.stop()


@pytest.mark.slow
def test_the_offline_vllm_engine_opens_the_merged_copy(mixed_server, tiny_af3, projector_adapter, monkeypatch):
    """eval/infer --backend vllm with a projector adapter: the engine's call for it runs vLLM on the merged copy
    (the server's, from the cache) and answers as the native backend does."""
    from audiotune.engines import open_engine
    from audiotune.generate import GenerationSettings, examples_from_audio

    _, _, cache = mixed_server
    monkeypatch.setenv("AUDIOTUNE_CACHE", str(cache))
    wave = tone(2.0, 220)
    engine = open_engine("vllm", str(tiny_af3), {"proj": str(projector_adapter)}, vllm_python=str(_vllm_python()))
    try:
        assert engine.merged and not engine.exported
        answer = engine.generate(examples_from_audio([wave], PROMPT), GenerationSettings(max_new_tokens=16),
                                 model="proj")
    finally:
        engine.close()
    assert answer == [_native_answer(tiny_af3, projector_adapter, wave)]
