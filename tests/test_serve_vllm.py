"""``--backend vllm``: the command and adapter export (fast), then real vLLM (`make vllm-env`) serving and evaluating.

The live tests use the default tiny AF3 (vLLM's CPU attention has no kernel for the micro preset's head size 16).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from safetensors import safe_open

from audiotune.errors import ConfigError
from audiotune.serve.server import ServeConfig, resolve_api_key
from audiotune.engines.vllm_env import (VLLM_ENV_DIR, VLLM_PYTHON_ENV, export_adapter, find_vllm_python,
                                        vllm_environment)
from audiotune.serve.vllm_server import vllm_command
from tests.conftest import tone

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / VLLM_ENV_DIR / "bin" / "python"


def _micro_adapter(model_dir, out):
    from peft import LoraConfig, get_peft_model

    from audiotune.models.loading import load_model

    model, family = load_model(model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=family.lm_lora_regex))
    peft.save_pretrained(out)
    return out


def test_command_carries_adapters_limits_but_never_the_key(micro_af3, tmp_path):
    adapters = {}
    for name, rank in (("captions", 16), ("asr", 32)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
        adapters[name] = str(folder)
    cfg = ServeConfig.from_flat(model=str(micro_af3), adapters=adapters, port=9001, api_key="k", served_name="af3",
                                max_batch_size=8)
    command = vllm_command(cfg, "/venv/bin/python", on_cpu=False)
    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(command)
    assert f"--model {micro_af3}" in joined and "--port 9001" in joined and "--served-model-name af3" in joined
    assert "--api-key" not in command and "k" not in command
    assert "--enable-lora" in command and command[command.index("--max-lora-rank") + 1] == "32"
    lora = command.index("--lora-modules")
    assert command[lora + 1 : lora + 3] == [f"captions={adapters['captions']}", f"asr={adapters['asr']}"]
    assert json.loads(command[command.index("--limit-mm-per-prompt") + 1]) == {"audio": 1}
    assert command[command.index("--max-num-seqs") + 1] == "8"
    assert "--enforce-eager" not in command
    # A request that sets nothing gets serve's generation settings, as with --backend transformers (greedy).
    defaults = json.loads(command[command.index("--override-generation-config") + 1])
    assert defaults == {"max_new_tokens": cfg.generation.max_new_tokens, "temperature": 0.0, "top_p": 1.0,
                        "repetition_penalty": 1.0}
    sampled = vllm_command(ServeConfig.from_flat(model=str(micro_af3), do_sample=True, temperature=0.7, top_p=0.9,
                                                 max_new_tokens=2000, max_tokens=100), on_cpu=False)
    assert json.loads(sampled[sampled.index("--override-generation-config") + 1]) == {
        "max_new_tokens": 100, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.0}
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        vllm_command(ServeConfig.from_flat(model=str(micro_af3), no_repeat_ngram_size=3))
    cpu = vllm_command(ServeConfig.from_flat(model=str(micro_af3), vllm_args=["--dtype", "bfloat16"]), on_cpu=True)
    assert "--enforce-eager" in cpu and cpu.count("--dtype") == 1 and cpu[-2:] == ["--dtype", "bfloat16"]
    env = vllm_environment(resolve_api_key(cfg, {}), {"PATH": "/bin"})
    assert env["VLLM_API_KEY"] == "k" and env["VLLM_HOST_IP"] == "127.0.0.1"


def test_unsupported_family_and_missing_vllm_are_clear_errors(tmp_path, monkeypatch, micro_af3, cli):
    from audiotune.models.tiny import build_tiny

    phi4 = build_tiny("phi4mm", tmp_path / "phi4", seed=0, preset="micro")
    with pytest.raises(ConfigError, match="vLLM does not serve the phi4mm family"):
        vllm_command(ServeConfig.from_flat(model=str(phi4)))
    monkeypatch.setenv(VLLM_PYTHON_ENV, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(ConfigError, match="no such interpreter.*make vllm-env"):
        find_vllm_python()
    code, _, stderr = cli("serve", "--model", micro_af3, "--backend", "vllm", "--vllm-python", tmp_path / "none")
    assert code == 1 and "no such interpreter" in stderr and "Traceback" not in stderr


def test_exported_adapter_uses_the_checkpoint_names(micro_af3, tmp_path):
    adapter = _micro_adapter(micro_af3, tmp_path / "adapter")
    exported = export_adapter(str(micro_af3), adapter, tmp_path / "exported")
    with safe_open(str(micro_af3 / "model.safetensors"), "pt") as handle:
        base = set(handle.keys())
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as handle:
        original = {k: handle.get_tensor(k) for k in handle.keys()}
    with safe_open(str(exported / "adapter_model.safetensors"), "pt") as handle:
        renamed = {k: handle.get_tensor(k) for k in handle.keys()}
    assert len(renamed) == len(original) > 0
    modules = {k.removeprefix("base_model.model.").split(".lora_")[0] for k in renamed}
    assert all(f"{m}.weight" in base for m in modules)  # every LoRA module sits on a weight vLLM loads
    assert not any(f"{k.removeprefix('base_model.model.').split('.lora_')[0]}.weight" in base for k in original)
    assert sorted(t.sum().item() for t in renamed.values()) == sorted(t.sum().item() for t in original.values())
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"})


# --- real vLLM ------------------------------------------------------------------------------------------------

def _vllm_python() -> Path:
    if not VLLM_PYTHON.exists():
        message = f"{VLLM_PYTHON} is missing: `make vllm-env` builds it (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return VLLM_PYTHON


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(wave, rate: int = 16000) -> str:
    import base64

    from audiotune.audio import encode_audio

    return base64.b64encode(encode_audio(wave, rate)).decode()


@pytest.mark.slow
def test_vllm_serves_base_and_adapter_through_openai_then_stops_on_sigterm(tiny_af3, trained_adapter, family,
                                                                          tmp_path):
    from openai import APIStatusError, AuthenticationError, OpenAI

    from audiotune.audio import load_audio  # noqa: F401  (the same decoding the server's clients rely on)
    from audiotune.generate import GenerationSettings, examples_from_audio, generate
    from audiotune.models.loading import load_model, load_processor

    python, port = _vllm_python(), _free_port()
    key_file = tmp_path / "key"
    key_file.write_text("vllm-test-key\n")
    log = tmp_path / "serve.log"  # vLLM logs a lot: a pipe nobody reads would fill and stall it
    process = subprocess.Popen([sys.executable, "-m", "audiotune", "serve", "--backend", "vllm", "--vllm-python",
                                str(python), "--model", str(tiny_af3), "--adapter", f"tuned={trained_adapter}",
                                "--served-name", "base", "--port", str(port), "--api-key-file", str(key_file)],
                               stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise AssertionError("vLLM did not start within 600 s")
        client = OpenAI(base_url=f"{base_url}/v1", api_key="vllm-test-key", max_retries=0, timeout=120)
        assert {m.id for m in client.models.list().data} == {"base", "tuned"}
        wave = tone(2.0, 220)
        messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": _b64(wave),
                                                                                          "format": "wav"}},
                                                 {"type": "text", "text": "Describe the audio."}]}]
        answers = {name: client.chat.completions.create(model=name, messages=messages, temperature=0,
                                                        max_tokens=16).choices[0].message.content
                   for name in ("base", "tuned")}
        assert answers["base"] != answers["tuned"]  # the adapter's weights reach vLLM (they differ from the base's)
        model, _ = load_model(tiny_af3, adapter=trained_adapter)
        local = generate(model, load_processor(trained_adapter), family,
                         examples_from_audio([wave], "Describe the audio."),
                         settings=GenerationSettings(max_new_tokens=16))[0]
        assert answers["tuned"].strip() == local  # the same greedy answer as audiotune's own engine
        url_part = {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64," + _b64(wave)}}
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="tuned", messages=[{"role": "user", "content": [url_part, messages[0]["content"][1]]}],
            temperature=0, max_tokens=16, stream=True) if chunk.choices)
        assert streamed == answers["tuned"]
        # A clip at 44.1 kHz: vLLM resamples it to the model's 16 kHz (with torchaudio, which make vllm-env keeps).
        cd_rate = {"type": "input_audio", "input_audio": {"data": _b64(tone(2.0, 220, 44100), 44100), "format": "wav"}}
        resampled = client.chat.completions.create(model="tuned", temperature=0, max_tokens=16, messages=[
            {"role": "user", "content": [cd_rate, messages[0]["content"][1]]}])
        at_16k = client.chat.completions.create(model="tuned", temperature=0, max_tokens=16, messages=messages)
        assert resampled.choices[0].message.content
        assert resampled.usage.prompt_tokens == at_16k.usage.prompt_tokens  # 2 s either way: as many audio tokens
        with pytest.raises(APIStatusError) as bad:
            client.chat.completions.create(model="tuned", max_tokens=4, messages=[{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "not base64 audio", "format": "wav"}}]}])
        assert 400 <= bad.value.status_code < 500
        # Bad requests sent at the same time as good ones cost only themselves: each good one gets the answer it
        # got alone, each bad one its 4xx.
        from concurrent.futures import ThreadPoolExecutor

        broken = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "not base64 audio",
                                                                                        "format": "wav"}},
                                                messages[0]["content"][1]]}]

        def ask(conversation):
            try:
                return client.chat.completions.create(model="tuned", messages=conversation, temperature=0,
                                                      max_tokens=16).choices[0].message.content
            except APIStatusError as error:
                return error.status_code

        with ThreadPoolExecutor(4) as pool:
            mixed = list(pool.map(ask, [messages, broken, messages, broken]))
        assert mixed[0] == mixed[2] == answers["tuned"] and all(400 <= code < 500 for code in mixed[1::2]), mixed
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).models.list()
        # OpenAI's audio API on vLLM is vLLM's own: served only for models whose vLLM code implements
        # SupportsTranscription (GLM-ASR, Granite Speech…), which AF3's does not; a clear client error, not a crash.
        with pytest.raises(APIStatusError) as no_asr_api:
            client.audio.transcriptions.create(model="base", file=("clip.wav", base64.b64decode(_b64(wave)),
                                                                   "audio/wav"))
        assert 400 <= no_asr_api.value.status_code < 500
        assert client.models.list().data  # and the server still answers
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    assert code == 0 or code == -signal.SIGTERM
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base_url}/health", timeout=2)  # the vLLM child is gone too


@pytest.mark.slow
def test_eval_with_vllm_scores_the_same_rows_as_the_native_backend(tiny_af3, trained_adapter, synth_data, tmp_path):
    from audiotune.evaluate import EvalConfig, run_evaluation

    python = _vllm_python()
    runs = {backend: run_evaluation(EvalConfig.from_flat(model=str(tiny_af3), dataset=str(synth_data), adapters=[
        str(trained_adapter)], out=str(tmp_path / backend), split="test", max_new_tokens=16, backend=backend,
        vllm_python=str(python), with_meteor=False)) for backend in ("transformers", "vllm")}
    rows = {b: [json.loads(line) for line in (tmp_path / b / "predictions.jsonl").read_text().splitlines()]
            for b in runs}
    assert [r["id"] for r in rows["vllm"]] == [r["id"] for r in rows["transformers"]] and rows["vllm"]
    assert set(runs["vllm"].table()[runs["vllm"].models[0].name]) == set(
        runs["transformers"].table()[runs["transformers"].models[0].name])
    agree = sum(a["prediction"] == b["prediction"] for a, b in zip(rows["vllm"], rows["transformers"]))
    print(f"greedy predictions equal between vLLM and transformers: {agree} of {len(rows['vllm'])}")
    # Both decode greedily from the same float32 weights; they may part where two logits tie within float error
    # (different kernels and summation order), after which the continuations differ.
    assert agree >= len(rows["vllm"]) // 2


@pytest.mark.slow
def test_eval_with_vllm_answers_the_good_rows_as_a_clean_run_and_names_the_bad(tiny_af3, tmp_path):
    """A manifest with a truncated WAV and a missing file between good clips: the vLLM run answers every good row as
    a run without the bad ones does, and lists each bad one (decoding happens before the engine starts)."""
    import soundfile as sf

    from audiotune.evaluate import EvalConfig, run_evaluation

    clips = tmp_path / "clips"
    clips.mkdir()
    sf.write(clips / "ok.wav", tone(1.0, 440), 16000)
    sf.write(clips / "ok2.wav", tone(1.5, 880), 16000)
    good = (clips / "ok.wav").read_bytes()
    (clips / "truncated.wav").write_bytes(good[: len(good) // 2])
    rows = [("ok", "ok.wav"), ("truncated", "truncated.wav"), ("ok2", "ok2.wav"), ("missing", "missing.wav")]
    mixed, clean = tmp_path / "mixed.jsonl", tmp_path / "clean.jsonl"
    mixed.write_text("".join(json.dumps({"id": i, "audio_path": str(clips / f), "text": "a tone"}) + "\n"
                             for i, f in rows))
    clean.write_text("".join(line for line in mixed.read_text().splitlines(keepends=True) if '"ok' in line))
    runs = {name: run_evaluation(EvalConfig.from_flat(
        model=str(tiny_af3), dataset=str(data), split="train", task="asr", out=str(tmp_path / name),
        max_new_tokens=8, with_meteor=False, backend="vllm", vllm_python=str(_vllm_python())))
        for name, data in (("mixed", mixed), ("clean", clean))}
    answers = {name: [(r["id"], r["prediction"]) for r in report.models[0].predictions]
               for name, report in runs.items()}
    assert [i for i, _ in answers["mixed"]] == ["ok", "ok2"] and answers["mixed"] == answers["clean"]
    skipped = {entry["id"]: entry["message"] for entry in runs["mixed"].skipped}
    assert set(skipped) == {"truncated", "missing"} and "truncated WAV" in skipped["truncated"]


# Families a test starts vLLM on besides AF3: one engine start each, through `audiotune infer --backend vllm`.
VLLM_FAMILIES = ("qwen2audio", "glmasr", "granite_speech", "granite_speech_plus")


@pytest.mark.slow
@pytest.mark.parametrize("name", VLLM_FAMILIES)
def test_infer_with_vllm_answers_what_the_native_backend_answers(name, tmp_path, cli):
    """`infer --backend vllm` with a LoRA adapter on the family's default tiny checkpoint gives the native backend's
    greedy answers, and a file that is not audio costs only itself on both backends.

    The adapter is ten LoRA steps on the two clips asked about: an untrained random model answers near logit ties
    (where two float32 kernels may part) or, for the tiny Granite models, its last prompt token (special, decoded
    as ""); trained, the answers are clear. Granite Speech ships its own audio LoRA, which vLLM applies per request
    and so cannot stack ours on, and vLLM's Qwen2-Audio takes no LoRA: `infer --backend vllm --adapter` then runs a
    merged copy of base and adapter (engines/vllm_env.py vllm_adapters), logged as such."""
    import soundfile

    from audiotune.models.families import family_by_name
    from audiotune.models.loading import offline_facts
    from audiotune.models.tiny import build_tiny
    from tests.test_families import _fixed_batch_manifest

    python = _vllm_python()
    family = offline_facts(family_by_name(name))  # the manifest's clips at the family's rate
    model = build_tiny(name, tmp_path / "model", seed=0)  # vLLM's CPU attention has no kernel for micro's heads
    manifest = _fixed_batch_manifest(tmp_path / "fixed", family)
    code, _, stderr = cli("train", "--model", model, "--dataset", manifest, "--output-dir", tmp_path / "run",
                          "--per-device-train-batch-size", 2, "--train-take", 2, "--eval-split", "none",
                          "--learning-rate", 1e-2, "--max-steps", 10, "--save-steps", 10, "--eval-generate-take", 0)
    assert code == 0, stderr[-2000:]
    adapter = ["--adapter", tmp_path / "run"]
    rate = family.sampling_rate
    files = [tmp_path / "a.wav", tmp_path / "bad.wav", tmp_path / "b.wav"]
    soundfile.write(files[0], tone(1.0, 440, rate), rate)
    files[1].write_bytes(b"RIFF not a wave file")
    soundfile.write(files[2], tone(3.5, 880, rate), rate)
    rows = {}
    for backend in ("transformers", "vllm"):
        out = tmp_path / f"{backend}.jsonl"
        code, _, stderr = cli("infer", *files, "--model", model, *adapter, "--backend", backend, "--vllm-python",
                              python, "--max-new-tokens", 8, "--jsonl", out)
        assert code == 1 and "bad.wav" in stderr and "Traceback" not in stderr, stderr[-2000:]
        rows[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in rows["vllm"]] == [r["file"] for r in rows["transformers"]] == [str(f) for f in files]
    assert "error" in rows["vllm"][1] and "error" in rows["transformers"][1]
    answers = {b: [rows[b][0]["answer"], rows[b][2]["answer"]] for b in rows}
    assert answers["vllm"] == answers["transformers"]
    assert any(answers["vllm"]), f"empty answers prove nothing: {answers}"


def test_the_models_page_claims_vllm_only_for_families_a_vllm_test_starts():
    """docs/models.md says "vLLM" (tested) only where a test in this module starts vLLM on the family's tiny
    checkpoint (the tests above run AF3); another family vLLM has model code for says "vLLM (untested)"."""
    from audiotune.models.catalog import family_row
    from audiotune.models.families import FAMILIES

    started_here = {"af3", *VLLM_FAMILIES}  # tiny_af3 in the engine and eval tests, the rest in the infer test
    assert {f.name for f in FAMILIES.values() if f.vllm_tested} == started_here
    for family in FAMILIES.values():
        serve = family_row(family, None)["serve"]
        assert ("vLLM (untested)" in serve) == (family.vllm_supported and family.name not in started_here)
